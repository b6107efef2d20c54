"""Workflows whose answer is a table, and the sandbox procedures that write it: what the results suites share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.constants import SECRET

PROJECT_DS = "test-project.workflows_temp"
HOSTILE = "x`; DROP TABLE y; --"
SCHEMA = [{"name": "store_id", "type": "INT64"}, {"name": "name", "type": "STRING"},
          {"name": "score", "type": "FLOAT64"}]


def rows(count: int, width: int = 0) -> list[list[Any]]:
    """`count` rows in SCHEMA's order; `width` pads each name to make rows big."""
    return [[n, f"store {n}" + "x" * width, round(n / 7, 4)] for n in range(1, count + 1)]


def procedure(name: str, *, count: int = 0, table: str | None = None, named: bool = True, written: bool = True,
              width: int = 0, duration_s: float = 0.3) -> dict[str, Any]:
    """A GATEWAY_SANDBOX_PROCEDURES entry for `PROJECT_DS.<name>(@n)` that writes `count` rows of SCHEMA."""
    output: dict[str, Any] = {"named": named}
    if table is not None:
        output["table"] = table
    if written:
        output.update(schema=SCHEMA, rows=rows(count, width))
    return {f"{PROJECT_DS}.{name}": {"parameters": {"n": "INT64"}, "duration_s": duration_s, "output": output}}


def workflow(name: str, procedure_name: str, result: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """A workflow file calling `PROJECT_DS.<procedure_name>(@n)`, signed with the test secret."""
    definition = {
        "description": f"Test only: {name}.",
        "connection": "carto_dw",
        "query": f"CALL `{PROJECT_DS}.{procedure_name}`(@n)",
        "parameters": {"n": {"type": "INT64", "from": "/n"}},
        "payload": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
        "auth": [{"scheme": "standard-webhooks", "secrets": "env:RESULTS_SECRET"}],
        **extra,
    }
    if result is not None:
        definition["result"] = result
    return definition


def write_workflows(schemas: Path, workflows: dict[str, dict[str, Any]]) -> Path:
    for name, definition in workflows.items():
        (schemas / "workflows" / f"{name}.json").write_text(json.dumps(definition, indent=2))
    return schemas


def merged(*entries: dict[str, Any]) -> dict[str, Any]:
    return {name: entry for each in entries for name, entry in each.items()}


SECRETS = {"RESULTS_SECRET": SECRET}  # the variable the workflows above name
