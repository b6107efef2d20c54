"""`python -m gateway check`: what loading cannot tell — each `from` pointer must name a property the
payload schema declares, so a typo in a pointer is caught before the first webhook; and warnings that
do not fail the check (a fixed result table that concurrent runs may overwrite before it is read)."""

from __future__ import annotations

import json
from typing import Any

from gateway import pointer as json_pointer
from gateway.workflows import Registry, Workflow


def lint(registry: Registry) -> list[str]:
    """Problems of every workflow, each prefixed with `name:`; empty when all are clean."""
    return [f"{name}: {p}" for name, w in sorted(registry.workflows.items()) for p in lint_workflow(w)]


def lint_workflow(workflow: Workflow) -> list[str]:
    problems = []
    for spec in workflow.parameters.values():
        if spec.pointer is not None and not pointer_declared(workflow.payload_schema, spec.pointer):
            problems.append(f"parameters.{spec.name}: pointer {spec.pointer} is not declared in the payload schema")
    return problems


def warnings(registry: Registry) -> list[str]:
    """What may go wrong at run time without being an error, each prefixed with `name:`."""
    found = []
    for name, workflow in sorted(registry.workflows.items()):
        if workflow.result is not None and workflow.result.table and max_concurrent_jobs(registry, workflow) != 1:
            found.append(f"{name}: warning: result.table {workflow.result.table} is a fixed table: a run that starts "
                         "before another's rows are read may overwrite them, so its event could carry the other run's "
                         'rows; add "admission": {"max_concurrent_jobs": 1}, or end the workflow in an MCP Tool '
                         "Output (Async) and drop result.table to read the table each run names")
    return found


def max_concurrent_jobs(registry: Registry, workflow: Workflow) -> int | None:
    """The workflow's `admission.max_concurrent_jobs` (None: no cap), from the loaded workflow or its file."""
    admission = getattr(workflow, "admission", None)
    if admission is None:
        try:
            raw = json.loads((registry.schemas_dir / "workflows" / f"{workflow.name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        admission = raw.get("admission") if isinstance(raw, dict) else None
    cap = admission.get("max_concurrent_jobs") if isinstance(admission, dict) else getattr(admission, "max_concurrent_jobs", None)
    return cap if isinstance(cap, int) and not isinstance(cap, bool) else None


def pointer_declared(schema: Any, pointer: str) -> bool:
    """Whether every token of `pointer` is a declared property (or array item) in `schema`."""
    node = schema
    for token in json_pointer.tokens(pointer):
        node = _child(node, token)
        if node is None:
            return False
    return True


def _child(schema: Any, token: str) -> Any:
    if not isinstance(schema, dict):
        return None
    properties = schema.get("properties", {})
    if token in properties:
        return properties[token]
    if token.isdigit() and isinstance(schema.get("items"), dict):
        return schema["items"]
    for combinator in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(combinator, []):
            found = _child(branch, token)
            if found is not None:
                return found
    return None
