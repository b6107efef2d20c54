"""Payload validation and its error shaping: a body checked against its workflow's schema (jsonschema-rs)
and mapped to typed parameters (`gateway.params`), every problem reported once, with a JSON Pointer,
in an answer of bounded size (`tests/test_adversarial.py`). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema_rs

from gateway import pointer as json_pointer
from gateway.errors import FieldError, Unprocessable
from gateway.params import map_parameters
from gateway.workflows import Workflow

# One hostile body must not turn into a 422 of megabytes.
MAX_SCHEMA_ERRORS = 50
MANY_VALUES = 2000
MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class Rendered:
    """What would be submitted for a payload: the CALL and its typed parameters."""

    query: str
    parameters: dict[str, Any]
    query_parameters: dict[str, Any] | list[Any] | None = None  # as sent: an array for positional warehouses

    @property
    def wire(self) -> dict[str, Any] | list[Any]:
        return self.parameters if self.query_parameters is None else self.query_parameters


def render(workflow: Workflow, payload: Any, headers: Mapping[str, str]) -> Rendered:
    """Validate the payload against the workflow's schema and map it; Unprocessable lists every problem.

    A value both checks refuse is reported once, by the mapper, whose message names the parameter
    and its SQL type: the schema's verdict on the same path (or, for a missing property, on its
    parent) is left out."""
    violations = _schema_errors(workflow.validator, payload)
    try:
        parameters = map_parameters(workflow.parameters, payload, headers)
        mapped: list[FieldError] = []
    except Unprocessable as exc:
        mapped, parameters = list(exc.errors), {}
    errors = [error for error, subject in violations if not _reported(subject, mapped)]
    errors.extend(error for error in mapped if error not in errors)
    if errors:
        raise Unprocessable(f"{len(errors)} problem(s) in the payload for workflow {workflow.name}", errors=errors)
    return Rendered(workflow.query, parameters, workflow.wire(parameters))


def _reported(subject: str, mapped: list[FieldError]) -> bool:
    """Whether the mapper already reported a problem at `subject` or inside it."""
    return any(error.path == subject or error.path.startswith(subject.rstrip("/") + "/") for error in mapped)


Violation = tuple[FieldError, str]  # the error, and the pointer of the value it is about


def _schema_errors(validator: Any, payload: Any) -> list[Violation]:
    """At most MAX_SCHEMA_ERRORS violations (see _violations)."""
    try:
        return _violations(validator, payload)
    except UnicodeEncodeError:  # jsonschema-rs cannot read a lone surrogate, which JSON allows ("\ud800")
        at = _surrogate_at(payload)
        return [(FieldError(at, "the text contains an unpaired surrogate, which is not valid Unicode"), at)]


def _surrogate_at(payload: Any) -> str:
    """The JSON Pointer of the first key or string that is not valid Unicode."""
    pending: list[tuple[Any, str]] = [(payload, "")]
    while pending:
        value, path = pending.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            pending.append((item, json_pointer.join([key], path)))
            if isinstance(key, str) and not _is_unicode(key):
                return path or "/"
        if isinstance(value, str) and not _is_unicode(value):
            return path or "/"
    return "/"


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _violations(validator: Any, payload: Any) -> list[Violation]:
    """jsonschema-rs builds every error before `iter_errors` yields one (8 s for a 1 MiB array of wrong
    items), so a large payload gets its first violation only."""
    if validator.is_valid(payload):
        return []
    if _more_values_than(payload, MANY_VALUES):
        try:
            validator.validate(payload)
        except jsonschema_rs.ValidationError as first:
            return [_violation(first),
                    (FieldError("/", f"the payload has over {MANY_VALUES} values: only its first violation is listed"), "")]
    found = [_violation(e) for e in validator.iter_errors(payload)]
    if len(found) > MAX_SCHEMA_ERRORS:
        found[MAX_SCHEMA_ERRORS:] = [(FieldError("/", "more schema violations not listed"), "")]
    return found


def _violation(error: Any) -> Violation:
    path = list(error.instance_path)
    missing = getattr(error.kind, "property", None) if type(error.kind).__name__ == "Required" else None
    subject = json_pointer.display(path + [missing]) if isinstance(missing, str) else json_pointer.display(path)
    return FieldError(json_pointer.display(path), _clip(error.message)), subject


def _more_values_than(payload: Any, limit: int) -> bool:
    """Whether the JSON document holds more than `limit` values; looks at no more than that many."""
    pending, seen = [payload], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def _clip(message: str) -> str:
    """A schema message quotes the offending value: keep its start and its end (the verdict), not megabytes."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    half = MAX_MESSAGE_CHARS // 2
    return f"{message[:half]} … {message[-half:]}"
