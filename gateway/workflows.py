"""The workflow registry: one checked, compiled definition per file in schemas/workflows/ (README, "Workflow files").

Every file is validated against schemas/workflow.schema.json, its CALL parsed, its `@names` matched
one-to-one with `parameters`, its constants and defaults bound to their types, its payload schema
compiled once. Any problem stops the instance with a message naming file, JSON path and problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs

from gateway.auth.config import build_schemes
from gateway.auth.signatures import Scheme
from gateway.errors import ConfigError
from gateway.params import ParamSpec, check_spec
from gateway.results import ResultSpec, UnsafeName, table_parts
from gateway.warehouses import BIGQUERY, POSITIONAL, Placeholders, binding_type, family_of, scan

# The product's own schemas/ folder: its meta-schema checks a schemas directory that brings none (the
# demos of examples/, a test's folder of workflow files).
PRODUCT_SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # used with fullmatch
DEFAULT_DEADLINE_S = 6 * 3600
_CALL = re.compile(r"^\s*CALL\s+(`(?P<quoted>[^`]+)`|(?P<bare>[A-Za-z0-9_.\-]+))\s*\(", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Workflow:
    """One workflow definition, checked and compiled."""

    name: str
    description: str
    connection: str
    query: str
    procedure: str
    parameters: dict[str, ParamSpec]
    payload_schema: dict[str, Any]
    auth: Any
    schemes: tuple[Scheme, ...] = field(repr=False)
    idempotency_header: str | None
    idempotency_pointer: str | None
    deadline_s: int
    api_base_url: str | None
    token_env: str | None
    paused: bool
    validator: Any = field(repr=False, compare=False)
    warehouse: str = BIGQUERY
    result: ResultSpec | None = None  # whose rows go into the SUCCEEDED event (gateway/results.py)
    max_concurrent_jobs: int | None = None  # `admission`: at most this many jobs at once (None: no cap)
    when_busy: str = "queue"  # `admission`: queue | replace | refuse

    @property
    def admitted(self) -> bool:
        """Whether deliveries go through the workflow's admission line (a cap, or paused)."""
        return self.max_concurrent_jobs is not None or self.paused

    @property
    def positional(self) -> bool:
        """Whether `queryParameters` go out as an array in placeholder order (Snowflake, PostgreSQL, Redshift)."""
        return self.warehouse in POSITIONAL

    def wire(self, parameters: Mapping[str, Any]) -> dict[str, Any] | list[Any]:
        """`queryParameters` as CARTO takes them for this warehouse: the named object, or the array whose
        item k is the value of placeholder k+1."""
        if not self.positional:
            return dict(parameters)
        ordered = sorted(self.parameters.values(), key=lambda spec: spec.position or 0)
        return [parameters.get(spec.name) for spec in ordered]


@dataclass(frozen=True)
class Registry:
    """All workflows of a schemas directory, by URL name."""

    workflows: dict[str, Workflow]
    schemas_dir: Path

    def get(self, name: str) -> Workflow | None:
        return self.workflows.get(name)


def load_registry(schemas_dir: Path | str, env: Mapping[str, str] | None = None, *,
                  id_token_verifier: Any = None, require_secrets: bool = True) -> Registry:
    """Load and check every workflow file; raise one ConfigError listing every bad file."""
    import os

    schemas_dir = Path(schemas_dir)
    env = os.environ if env is None else env
    meta = meta_validator(schemas_dir)
    files = sorted((schemas_dir / "workflows").glob("*.json"))
    workflows: dict[str, Workflow] = {}
    problems: list[str] = []
    for path in files:
        try:
            workflow = load_workflow(path, meta, env, id_token_verifier=id_token_verifier,
                                     require_secrets=require_secrets)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        workflows[workflow.name] = workflow
    if problems:
        raise ConfigError("invalid workflow definitions:\n" + "\n".join(problems))
    return Registry(workflows=workflows, schemas_dir=schemas_dir)


def meta_validator(schemas_dir: Path) -> Any:
    """The compiled meta-schema: the schemas directory's own `workflow.schema.json`, else the product's."""
    meta_path = schemas_dir / "workflow.schema.json"
    if not meta_path.exists():
        meta_path = PRODUCT_SCHEMAS_DIR / "workflow.schema.json"
    try:
        meta_schema = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{meta_path}: cannot read the meta-schema: {exc}") from None
    return jsonschema_rs.Draft202012Validator(meta_schema)


def load_workflow(path: Path, meta: Any, env: Mapping[str, str], *, id_token_verifier: Any = None,
                  require_secrets: bool = True) -> Workflow:
    """Load one workflow file; ConfigError names the file, the JSON path and the problem."""
    name = path.stem
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{path}: file name must match {NAME_PATTERN.pattern} (it is the URL segment)")
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    errors = [f"{path}: {_json_path(e.instance_path)}: {e.message}" for e in meta.iter_errors(definition)]
    if errors:
        raise ConfigError("\n".join(errors))
    problems: list[str] = []
    procedure, placeholders = _parse_call(definition["query"], problems)
    try:
        family = family_of(definition.get("warehouse"), placeholders)
    except ConfigError as exc:
        problems.append(f"$.query: {exc}")
        family = BIGQUERY
    if family in POSITIONAL:
        parameters = _positional(definition["parameters"], placeholders, family, problems)
    else:
        parameters = _parameters(definition["parameters"], list(placeholders.names), problems, family)
    validator = _compile_payload(definition["payload"], problems)
    schemes = _schemes(definition["auth"], env, id_token_verifier, require_secrets, problems)
    _check_result(definition.get("result"), family, problems)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    idempotency = definition.get("idempotency", {})
    carto = definition.get("carto", {})
    admission = definition.get("admission", {})
    return Workflow(
        name=name,
        description=definition.get("description", ""),
        connection=definition["connection"],
        query=definition["query"],
        procedure=procedure,
        parameters=parameters,
        payload_schema=definition["payload"],
        auth=definition["auth"],
        schemes=schemes,
        idempotency_header=idempotency.get("header"),
        idempotency_pointer=idempotency.get("pointer"),
        deadline_s=definition.get("tracking", {}).get("deadline_s", DEFAULT_DEADLINE_S),
        api_base_url=(carto.get("api_base_url") or "").rstrip("/") or None,
        token_env=carto["token"][4:] if "token" in carto else None,
        paused=definition.get("paused", False),
        validator=validator,
        warehouse=family,
        result=ResultSpec.from_definition(definition["result"]) if "result" in definition else None,
        max_concurrent_jobs=int(admission["max_concurrent_jobs"]) if "max_concurrent_jobs" in admission else None,
        when_busy=admission.get("when_busy", "queue"),
    )


def _json_path(parts: list[Any]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def query_parameter_names(query: str) -> list[str]:
    """The `@name`s of a query in order of appearance, skipping string literals, identifiers and comments."""
    found = scan(query)
    return list(found.names) if found.style == "@name" and not found.mixed else []


def _parse_call(query: str, problems: list[str]) -> tuple[str, Placeholders]:
    match = _CALL.match(query)
    if not match:
        problems.append("$.query: expected CALL `project.dataset.procedure`(...) as pasted from CARTO")
        return "", Placeholders(None)
    procedure = match.group("quoted") or match.group("bare")
    return procedure, scan(query)


def _spec(name: str, definition: Any, family: str, problems: list[str]) -> ParamSpec | None:
    try:
        declared = definition.get("type") if isinstance(definition, Mapping) else None
        binds_as = binding_type(family, declared) if isinstance(declared, str) else None
    except ConfigError as exc:
        problems.append(f"$.parameters.{name}.type: {exc}")
        return None
    try:
        spec = ParamSpec.from_definition(name, definition, binds_as=binds_as)
        check_spec(spec)
    except ConfigError as exc:
        problems.append(f"$.parameters.{name}: {exc}")
        return None
    return spec


def _parameters(definitions: Mapping[str, Any], names: list[str], problems: list[str],
                family: str = BIGQUERY) -> dict[str, ParamSpec]:
    for missing in [n for n in names if n not in definitions]:
        problems.append(f"$.query: @{missing} has no entry in parameters")
    for extra in [n for n in definitions if n not in names]:
        problems.append(f"$.parameters.{extra}: not used as @{extra} in the query")
    for name in [n for n in names if n in definitions]:
        if isinstance(definitions[name], Mapping) and "position" in definitions[name]:
            problems.append(f"$.parameters.{name}.position: named @{name} placeholders take no position")
    specs = {name: _spec(name, definitions[name], family, problems) for name in names if name in definitions}
    return {name: spec for name, spec in specs.items() if spec is not None}


def _positional(definitions: Mapping[str, Any], placeholders: Placeholders, family: str,
                problems: list[str]) -> dict[str, ParamSpec]:
    """Each placeholder :k / $k has exactly one parameter with `"position": k`, and every parameter a placeholder."""
    sign = ":" if family == "snowflake" else "$"
    by_position: dict[int, str] = {}
    for name, definition in definitions.items():
        position = definition.get("position") if isinstance(definition, Mapping) else None
        if not isinstance(position, int) or isinstance(position, bool):
            problems.append(f"$.parameters.{name}.position: required for {family}: the number k of its {sign}k")
        elif position in by_position:
            problems.append(f"$.parameters.{name}.position: {position} is also {by_position[position]}'s")
        else:
            by_position[position] = name
    used = set(placeholders.positions)
    for position in sorted(used - set(by_position)):
        problems.append(f"$.query: {sign}{position} has no parameter with \"position\": {position}")
    for position in sorted(set(by_position) - used):
        problems.append(f"$.parameters.{by_position[position]}: position {position} is not used as "
                        f"{sign}{position} in the query")
    if used and sorted(used) != list(range(1, max(used) + 1)):
        problems.append(f"$.query: placeholders must be {sign}1 to {sign}{max(used)} without gaps")
    specs = {by_position[k]: _spec(by_position[k], definitions[by_position[k]], family, problems)
             for k in sorted(by_position)}
    return {name: spec for name, spec in specs.items() if spec is not None}


def _compile_payload(schema: Any, problems: list[str]) -> Any:
    try:
        return jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
        problems.append(f"$.payload: not a valid JSON Schema 2020-12: {str(exc).splitlines()[0]}")
        return None


def _schemes(auth: Any, env: Mapping[str, str], verifier: Any, require_secrets: bool,
             problems: list[str]) -> tuple[Scheme, ...]:
    try:
        return build_schemes(auth, env, id_token_verifier=verifier)
    except ConfigError as exc:
        if require_secrets:
            problems.append(f"$.auth: {exc}")
        return ()


def _check_result(block: Any, family: str, problems: list[str]) -> None:
    """A fixed `result.table` must be a plain dotted name of the warehouse (it is quoted, never pasted)."""
    if isinstance(block, Mapping) and isinstance(block.get("table"), str):
        try:
            table_parts(block["table"], family)
        except UnsafeName as exc:
            problems.append(f"$.result.table: {exc}")
