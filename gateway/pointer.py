"""JSON Pointer (RFC 6901, https://www.rfc-editor.org/rfc/rfc6901): escaping a token, writing a pointer
from its tokens, reading one back, and resolving it in a document. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

_BAD_ESCAPE = re.compile(r"~(?![01])")
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")


def escape(token: Any) -> str:
    """One reference token as it is written in a pointer: `~` as `~0`, `/` as `~1` (in that order)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def join(tokens: Iterable[Any], base: str = "") -> str:
    """The pointer to `tokens` below `base` (`""` is the whole document)."""
    return base + "".join("/" + escape(token) for token in tokens)


def display(tokens: Iterable[Any]) -> str:
    """The pointer to `tokens` as an error names it: `/` for the whole document."""
    return join(tokens) or "/"


@lru_cache(maxsize=1024)
def tokens(pointer: str) -> tuple[str, ...]:
    """The reference tokens of `pointer`, unescaped; ValueError when it is malformed."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"JSON Pointer {pointer!r} must be empty or start with '/'")
    parts = pointer[1:].split("/")
    if any(_BAD_ESCAPE.search(part) for part in parts):
        raise ValueError(f"JSON Pointer {pointer!r} has a '~' not followed by 0 or 1 (RFC 6901 §3)")
    # ~1 before ~0, so "~01" becomes "~1" and not "/" (RFC 6901 §4).
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in parts)


def resolve(document: Any, pointer: str, missing: Any = None) -> Any:
    """The value `pointer` selects in `document`, or `missing`; ValueError if the pointer is malformed."""
    current = document
    for token in tokens(pointer):
        if isinstance(current, Mapping):
            if token not in current:
                return missing
            current = current[token]
        elif isinstance(current, list) and _ARRAY_INDEX.fullmatch(token) and int(token) < len(current):
            current = current[int(token)]  # "-" and "01" select nothing (RFC 6901 §4)
        else:
            return missing
    return current
