"""Which stored procedures the sandbox knows: their signatures, run times and outcomes.

By default they come from the workflow definitions (each workflow's CALL names a procedure and
its `parameters` give the argument types); `GATEWAY_SANDBOX_PROCEDURES` names a JSON file that
overrides them per procedure (the unquoted fully qualified name from the CALL):

    {"proj.ds.proc": {"parameters": {"a": "INT64"}, "duration_s": 2, "error": "message or null",
                      "warehouse": "bigquery"}}

`parameters` are in the procedure's order, typed in the warehouse's own words (`NUMBER(38,0)`, `integer`);
`warehouse` (bigquery, snowflake, postgresql or redshift; default bigquery) decides how a CALL binds.

`output` (gateway/local/sandbox/tables.py) says what a run writes: a table with a schema and rows, and
whether the job's answers name it at `jobMetadata.workflowOutputTableName`.

`duration_s` absent: the server's default; null or negative: the job never finishes.
`parameters` absent (and not known from a workflow): the arguments are not type-checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.local.sandbox.tables import Output, parse_output

NEVER = math.inf
_KEYS = {"parameters", "duration_s", "error", "warehouse", "output"}
_WAREHOUSES = ("bigquery", "snowflake", "postgresql", "redshift")


@dataclass(frozen=True)
class Procedure:
    """One procedure: its signature (None = unchecked), run time (None = default, inf = never), outcome."""

    name: str
    parameters: Mapping[str, str] | None = None
    duration_s: float | None = None
    error: str | None = None
    warehouse: str = "bigquery"
    output: Output | None = None  # the table a run writes, if any


def parse_procedures(raw: Mapping[str, Any]) -> dict[str, Procedure]:
    """Procedures from the override format; ConfigError names the procedure and the problem."""
    return apply_overrides({}, raw)


def apply_overrides(base: Mapping[str, Procedure], raw: Mapping[str, Any]) -> dict[str, Procedure]:
    """`base` with each procedure's fields replaced by those the override mapping gives."""
    if not isinstance(raw, Mapping):
        raise ConfigError("sandbox procedures: expected an object keyed by procedure name")
    merged = dict(base)
    for name, entry in raw.items():
        merged[name] = dataclasses.replace(merged.get(name, Procedure(name)), **_fields(name, entry))
    return merged


def _fields(name: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, Mapping) or set(entry) - _KEYS:
        raise ConfigError(f"sandbox procedures: {name}: expected an object with keys {sorted(_KEYS)}")
    fields: dict[str, Any] = {}
    if "parameters" in entry:
        fields["parameters"] = _signature(name, entry["parameters"])
    if "duration_s" in entry:
        fields["duration_s"] = _duration(name, entry["duration_s"])
    if "warehouse" in entry:
        if entry["warehouse"] not in _WAREHOUSES:
            raise ConfigError(f"sandbox procedures: {name}.warehouse: expected one of {', '.join(_WAREHOUSES)}")
        fields["warehouse"] = entry["warehouse"]
    if "output" in entry:
        fields["output"] = None if entry["output"] is None else parse_output(name, entry["output"])
    if "error" in entry:
        if entry["error"] is not None and not isinstance(entry["error"], str):
            raise ConfigError(f"sandbox procedures: {name}.error: expected a message or null")
        fields["error"] = entry["error"]
    return fields


def _signature(name: str, parameters: Any) -> dict[str, str] | None:
    if parameters is None:
        return None
    if not isinstance(parameters, Mapping) or not all(isinstance(t, str) for t in parameters.values()):
        raise ConfigError(f"sandbox procedures: {name}.parameters: expected an object of SQL type names")
    return dict(parameters)


def _duration(name: str, duration: Any) -> float:
    if duration is None:
        return NEVER
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ConfigError(f"sandbox procedures: {name}.duration_s: expected seconds or null")
    return NEVER if duration < 0 else float(duration)


def procedures_from_registry(registry: Any) -> dict[str, Procedure]:
    """Signatures derived from a workflow registry (`.workflows[name].procedure` / `.parameters[p].type`)."""
    procedures: dict[str, Procedure] = {}
    for workflow in registry.workflows.values():
        signature = {name: getattr(spec, "sql_type", spec.type) for name, spec in workflow.parameters.items()}
        procedures[workflow.procedure] = Procedure(workflow.procedure, signature,
                                                   warehouse=getattr(workflow, "warehouse", "bigquery"))
    return procedures


def load_registry_procedures(schemas_dir: Path | str) -> dict[str, Procedure]:
    """Signatures from the workflow definitions under `schemas_dir` (imported lazily: dev-only path)."""
    from gateway.workflows import load_registry

    try:
        registry = load_registry(schemas_dir, require_secrets=False)  # the sandbox verifies no webhooks
    except TypeError:
        registry = load_registry(schemas_dir)
    return procedures_from_registry(registry)


def read_procedures_file(path: Path | str) -> dict[str, Any]:
    """The raw override mapping from a JSON file; ConfigError when unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sandbox procedures file {path}: {exc}") from None


def as_procedures(procedures: Mapping[str, Any] | None) -> dict[str, Procedure] | None:
    """Accept either parsed Procedures or the plain override format; None means "no signatures"."""
    if procedures is None:
        return None
    if all(isinstance(p, Procedure) for p in procedures.values()):
        return dict(procedures)
    return parse_procedures(procedures)


def load_procedures(schemas_dir: Path | str | None = None,
                    overrides_path: Path | str | None = None) -> dict[str, Procedure] | None:
    """Registry signatures (when `schemas_dir`) with the override file applied; None when neither is given."""
    base = load_registry_procedures(schemas_dir) if schemas_dir is not None else None
    if overrides_path:
        return apply_overrides(base or {}, read_procedures_file(overrides_path))
    return base
