"""The monitoring configs of deploy/ with one deployment's names, for deploy.sh and teardown.sh.

    python3 deploy/monitoring.py render OUT_DIR NAME=VALUE ...
    python3 deploy/monitoring.py names NAME_PREFIX=VALUE

Configs: deploy/metrics/*.yaml (log-based metrics), deploy/dashboard.json, deploy/alerts/*.json.
`render` replaces each `${NAME}` with its value and writes the result under OUT_DIR with the same
relative paths; a placeholder with no value is an error, so a config never reaches gcloud half-filled.
`names` prints what deploy creates, one `KIND<TAB>NAME` a line: `metric` and the log-based metric's
id (NAME_PREFIX/file name), `dashboard` and `policy` and their display names (how they are found
again: their ids are generated). Standard library only (deploy runs it with the system python3).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def sources(root: Path = DEPLOY) -> list[Path]:
    """Every monitoring config, relative to `root`, in the order deploy applies them."""
    found = sorted((root / "metrics").glob("*.yaml")) + [root / "dashboard.json"]
    found += sorted((root / "alerts").glob("*.json"))
    return [path.relative_to(root) for path in found]


def placeholders(text: str) -> set[str]:
    """The names of the `${NAME}` placeholders in text."""
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str]) -> str:
    """text with each `${NAME}` replaced; KeyError naming the first placeholder without a value."""
    missing = sorted(placeholders(text) - values.keys())
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def names(prefix: str, root: Path = DEPLOY) -> list[tuple[str, str]]:
    """(kind, name) of everything deploy creates from the configs, for a deployment prefixed `prefix`."""
    found = []
    for relative in sources(root):
        text = (root / relative).read_text()
        if relative.parts[0] == "metrics":
            found.append(("metric", f"{prefix}/{relative.stem}"))
            continue
        # Only the display name is read: every other placeholder stands in as a JSON null.
        filled = render(text, {name: "null" for name in placeholders(text)} | {"NAME_PREFIX": prefix})
        kind = "dashboard" if relative.name == "dashboard.json" else "policy"
        found.append((kind, json.loads(filled)["displayName"]))
    return found


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "names" and argv[1].startswith("NAME_PREFIX="):
        for kind, name in names(argv[1].split("=", 1)[1]):
            print(f"{kind}\t{name}")
        return 0
    if len(argv) < 2 or argv[0] != "render":
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    values = dict(pair.split("=", 1) for pair in argv[2:])
    for relative in sources():
        try:
            text = render((DEPLOY / relative).read_text(), values)
        except KeyError as exc:
            print(f"{relative}: {exc.args[0]}", file=sys.stderr)
            return 1
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(relative)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
