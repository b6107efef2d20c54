"""`python -m gateway check --live`: each workflow's parameters against its procedure's real signature.

The signature is read through CARTO's synchronous `POST {base}/v3/sql/{connection}/query`
(`{"q", "queryParameters"}` → `{rows, schema, meta}`) from the warehouse's own catalogue:

    BigQuery            `<project>.<dataset>.INFORMATION_SCHEMA.ROUTINES` and `.PARAMETERS`
                        (billed at least 10 MB per query)
    PostgreSQL/Redshift information_schema.routines and information_schema.parameters
    Snowflake           <db>.INFORMATION_SCHEMA.PROCEDURES.ARGUMENT_SIGNATURE

Every difference from the file is one line naming the file, the parameter and the fix: a missing or
extra parameter, one in the wrong place, a type that will not bind as the procedure expects (a Workflows
"Number" variable is FLOAT64 in BigQuery: a file that says INT64 is wrong, and the reverse), a procedure
that no longer exists (API access disabled, or the workflow updated under another procedure name).
`read_signature` is the reusable part: `new --live` calls it too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.carto import CartoClient, ClientCredentials, StaticToken, TokenSource
from gateway.errors import ConfigError, GatewayError
from gateway.outbound import Http
from gateway.settings import Secret, Settings
from gateway.warehouses import BIGQUERY, SNOWFLAKE, TITLES, binding_type
from gateway.workflows import Registry, Workflow

GONE_FIX = ('in CARTO, open the workflow and Enable API access (again), then paste the CALL its "API access" '
            'dialog shows into "query" and run `python -m gateway check --live` again')


@dataclass(frozen=True)
class Argument:
    """One parameter of a procedure, as the warehouse's catalogue names and types it."""

    name: str
    type: str


def read_signature(client: CartoClient, base_url: str, connection: str, procedure: str,
                   warehouse: str = BIGQUERY, *, arity: int | None = None,
                   workflow: str | None = None) -> list[Argument] | None:
    """The parameters of `procedure` in their order, with their types in the warehouse's words, or None when
    no such procedure exists.

    client      a `gateway.carto.CartoClient` (its token is the deployment's, or the workflow's with `workflow`)
    base_url    the CARTO API base URL, e.g. https://gcp-us-east1.api.carto.com
    connection  the CARTO connection name the workflow runs on
    procedure   the unquoted fully qualified name from the CALL: `project.dataset.proc` (BigQuery),
                `DB.SCHEMA.PROC` (Snowflake), `[db.]schema.proc` (PostgreSQL, Redshift)
    warehouse   bigquery, snowflake, postgresql or redshift (`gateway.warehouses`)
    arity       with overloaded procedures (Snowflake, PostgreSQL), prefer the one with this many parameters

    Raises GatewayError when CARTO cannot be asked (unreachable, token refused, connection unknown) and
    ConfigError when the name cannot be a procedure of that warehouse."""
    sql, parameters = signature_query(procedure, warehouse)
    answer = client.query(base_url, connection, sql, parameters, workflow=workflow)
    rows = [row for row in answer.get("rows", []) if isinstance(row, Mapping)]
    overloads = _snowflake_overloads(rows) if warehouse == SNOWFLAKE else \
        _bigquery_overloads(rows) if warehouse == BIGQUERY else _postgres_overloads(rows)
    if not overloads:
        return None
    return next((found for found in overloads if len(found) == arity), overloads[0])


def signature_query(procedure: str, warehouse: str) -> tuple[str, Any]:
    """The catalogue query (and its parameters, in the warehouse's placeholder style) for a procedure."""
    parts = procedure.replace('"', "").split(".")
    if warehouse == BIGQUERY:
        if len(parts) != 3:
            raise ConfigError(f"{procedure}: a BigQuery procedure is named project.dataset.procedure")
        dataset = f"{parts[0]}.{parts[1]}"
        return (f"SELECT r.routine_name, p.parameter_name, p.data_type, p.ordinal_position\n"
                f"FROM `{dataset}.INFORMATION_SCHEMA.ROUTINES` AS r\n"
                f"LEFT JOIN `{dataset}.INFORMATION_SCHEMA.PARAMETERS` AS p\n"
                f"  ON p.specific_name = r.specific_name AND p.ordinal_position > 0\n"
                f"WHERE r.routine_name = @name AND r.routine_type = 'PROCEDURE'\n"
                f"ORDER BY p.ordinal_position", {"name": parts[2]})
    if warehouse == SNOWFLAKE:
        if len(parts) != 3:
            raise ConfigError(f"{procedure}: a Snowflake procedure is named DATABASE.SCHEMA.PROCEDURE")
        return (f"SELECT PROCEDURE_NAME, ARGUMENT_SIGNATURE FROM {parts[0]}.INFORMATION_SCHEMA.PROCEDURES\n"
                f"WHERE PROCEDURE_SCHEMA = :1 AND PROCEDURE_NAME = :2", [parts[1].upper(), parts[2].upper()])
    if len(parts) < 2:
        raise ConfigError(f"{procedure}: a {TITLES.get(warehouse, warehouse)} procedure is named schema.procedure")
    return ("SELECT r.specific_name, r.routine_name, p.parameter_name, p.data_type, p.udt_name, p.ordinal_position\n"
            "FROM information_schema.routines r\n"
            "LEFT JOIN information_schema.parameters p\n"
            "  ON p.specific_schema = r.specific_schema AND p.specific_name = r.specific_name\n"
            "WHERE r.routine_schema = $1 AND r.routine_name = $2 AND r.routine_type = 'PROCEDURE'\n"
            "ORDER BY r.specific_name, p.ordinal_position", [parts[-2], parts[-1]])


def _bigquery_overloads(rows: list[Mapping[str, Any]]) -> list[list[Argument]]:
    if not rows:
        return []
    ordered = sorted((r for r in rows if r.get("parameter_name")), key=lambda r: int(r.get("ordinal_position") or 0))
    return [[Argument(str(r["parameter_name"]), str(r.get("data_type") or "")) for r in ordered]]


def _postgres_overloads(rows: list[Mapping[str, Any]]) -> list[list[Argument]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get("specific_name") or row.get("routine_name")), []).append(row)
    found = []
    for group in groups.values():
        ordered = sorted((r for r in group if r.get("parameter_name")), key=lambda r: int(r.get("ordinal_position") or 0))
        found.append([Argument(str(r["parameter_name"]), _postgres_type(r)) for r in ordered])
    return found


def _postgres_type(row: Mapping[str, Any]) -> str:
    """information_schema's data_type, with arrays and extension types (PostGIS) read from udt_name."""
    data_type, udt = str(row.get("data_type") or ""), str(row.get("udt_name") or "")
    if data_type == "ARRAY" and udt.startswith("_"):
        return {"int4": "integer", "int8": "bigint", "float8": "double precision", "bool": "boolean",
                "varchar": "character varying"}.get(udt[1:], udt[1:]) + "[]"
    return udt if data_type == "USER-DEFINED" else data_type


def _snowflake_overloads(rows: list[Mapping[str, Any]]) -> list[list[Argument]]:
    found = []
    for row in rows:
        signature = str(row.get("ARGUMENT_SIGNATURE") or row.get("argument_signature") or "()").strip()
        inner = signature[1:-1].strip() if signature.startswith("(") else signature
        arguments = []
        for piece in _top_level_split(inner):
            name, _, kind = piece.strip().partition(" ")
            arguments.append(Argument(name, kind.strip()))
        found.append(arguments)
    return found


def _top_level_split(text: str) -> list[str]:
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    tail = text[start:]
    return [p for p in pieces + [tail] if p.strip()]


# --- comparing the file with the procedure ------------------------------------------------------

def drift(workflow: Workflow, real: list[Argument] | None, label: str) -> list[str]:
    """Every difference between the workflow's parameters and the procedure's, one line each with its fix."""
    if real is None:
        return [f"{label}: procedure {workflow.procedure}: not found on connection {workflow.connection} — API "
                f"access to the workflow was disabled, or the workflow was updated and now runs under another "
                f"procedure name; fix: {GONE_FIX}"]
    mine = sorted(workflow.parameters.values(), key=lambda spec: spec.position or 0) if workflow.positional \
        else list(workflow.parameters.values())
    where = "position" if workflow.positional else "argument"
    order = ", ".join(f"{a.name} {a.type}" for a in real)
    lines = []
    for index in range(max(len(mine), len(real))):
        if index >= len(real):
            lines.append(f"{label}: parameter {mine[index].name}: the procedure takes {len(real)} parameter(s) "
                         f"({order}), this is {where} {index + 1}; fix: remove it from the CALL and from parameters")
            continue
        theirs = real[index]
        if index >= len(mine):
            lines.append(f"{label}: parameter {theirs.name}: the procedure's {where} {index + 1} ({theirs.type}) is "
                         f"missing; fix: add it to the CALL and to parameters with \"type\": \"{theirs.type}\"")
            continue
        spec = mine[index]
        if spec.name.lower() != theirs.name.lower():
            lines.append(f"{label}: parameter {spec.name}: the procedure's {where} {index + 1} is {theirs.name}; "
                         f"fix: pass the parameters in the procedure's order ({order})")
        problem = _type_problem(workflow.warehouse, spec.type, spec.sql_type, theirs.type)
        if problem:
            lines.append(f"{label}: parameter {spec.name}: {problem}")
    return lines


def _type_problem(warehouse: str, binds_as: str, declared: str, real: str) -> str | None:
    try:
        theirs = binding_type(warehouse, real)
    except ConfigError:
        return (f"the procedure takes {real}, which the gateway cannot bind; fix: give the procedure's parameter "
                "a type the gateway binds (README, Workflow files)")
    if warehouse == SNOWFLAKE and real.strip().upper() == "NUMBER" and binds_as in ("INT64", "NUMERIC"):
        return None  # ARGUMENT_SIGNATURE shows NUMBER without its scale
    if theirs != binds_as:
        return f'the file says {declared}, the procedure takes {real}; fix: set "type": "{real}"'
    return None


# --- the verb ----------------------------------------------------------------------------------

def client_from_env(env: Mapping[str, str], registry: Registry | None = None) -> tuple[CartoClient, Settings]:
    """A CARTO client with the deployment's token or client credentials (and each workflow's own token, when
    its `carto.token` names one), and the settings it came from."""
    settings = Settings.from_env(env)
    http = Http()
    workflow_tokens = {w.name: StaticToken(Secret(env[w.token_env])) for w in (registry.workflows.values() if registry
                                                                                else ()) if w.token_env and env.get(w.token_env)}
    return CartoClient(http, tokens_from(settings, http), timeout_s=settings.carto_timeout_s,
                       workflow_tokens=workflow_tokens), settings


def tokens_from(settings: Settings, http: Http) -> TokenSource:
    if settings.carto_api_token is not None:
        return StaticToken(settings.carto_api_token)
    if settings.carto_client_id and settings.carto_client_secret:
        return ClientCredentials(http, settings.carto_auth_url, settings.carto_client_id, settings.carto_client_secret,
                                 clock=time.time)
    raise ConfigError("set CARTO_API_TOKEN, or CARTO_CLIENT_ID and CARTO_CLIENT_SECRET")


def check_live(registry: Registry, env: Mapping[str, str], names: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(drift lines, names of the workflows checked clean) for every workflow of `registry` (or `names`)."""
    client, settings = client_from_env(env, registry)
    lines, clean = [], []
    for name in names or sorted(registry.workflows):
        workflow = registry.workflows[name]
        label = str(registry.schemas_dir / "workflows" / f"{name}.json")
        base = workflow.api_base_url or settings.carto_api_base_url
        if not base:
            lines.append(f"{label}: cannot read the signature: CARTO_API_BASE_URL is not set; fix: set it")
            continue
        try:
            real = read_signature(client, base, workflow.connection, workflow.procedure, workflow.warehouse,
                                  arity=len(workflow.parameters), workflow=name)
        except (GatewayError, ConfigError) as exc:
            lines.append(f"{label}: cannot read the signature of {workflow.procedure} on connection "
                         f"{workflow.connection}: {_reason(exc)}")
            continue
        found = drift(workflow, real, label)
        lines.extend(found)
        if not found:
            clean.append(name)
    return lines, clean


def _reason(exc: Exception) -> str:
    detail = getattr(exc, "detail", None) or str(exc)
    return re.sub(r"\s+", " ", str(detail))[:300]
