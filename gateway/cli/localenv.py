"""The local secrets file: `.env` beside the schemas directory (git-ignored, never deployed, never read by a
deployed function). `new` writes a workflow's fresh secret there; `make dev` and every CLI verb read it, so a
secret made once works in any shell without `export`. A variable already set in the environment wins."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

from dotenv import dotenv_values, set_key


def env_file(schemas_dir: Path | str) -> Path:
    """Where the local secrets of a schemas directory live: `.env` beside it."""
    return Path(schemas_dir).resolve().parent / ".env"


def load(path: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each variable of `path` that the environment does not already have; the file's values."""
    environ = os.environ if environ is None else environ
    values = {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
    for name, value in values.items():
        environ.setdefault(name, value)
    return values


def remember(path: Path, name: str, value: str, *, replace: bool = False) -> bool:
    """Write `name=value` to `path` (created owner-only); an existing `name` is kept unless `replace`.
    Whether the value was written."""
    if not replace and name in load(path, {}):
        return False
    if not path.exists():
        path.touch(mode=0o600)
    set_key(str(path), name, value, quote_mode="always")
    return True


@contextlib.contextmanager
def loaded(path: Path, extra: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The environment with `path`'s variables (and `extra`) added where unset, for the length of one verb."""
    added = [name for name in {**load(path, {}), **(extra or {})} if name not in os.environ]
    values = load(path)
    for name, value in (extra or {}).items():
        os.environ.setdefault(name, value)
    try:
        yield values
    finally:
        for name in added:
            os.environ.pop(name, None)

