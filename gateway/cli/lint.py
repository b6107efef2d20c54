"""`python -m gateway check`: what loading cannot tell — each `from` pointer must name a property the
payload schema declares, so a typo in a pointer is caught before the first webhook."""

from __future__ import annotations

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
