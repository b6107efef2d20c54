"""The warehouse catalogue behind the sandbox's `/v3/sql/{connection}/query` (pure, no I/O).

It answers the INFORMATION_SCHEMA queries `python -m gateway check --live` sends, from the sandbox's
procedure signatures, in the synchronous endpoint's shape `{rows, schema: [{name, type}], meta}` and in
each warehouse's own words:

    BigQuery     `<project>.<dataset>.INFORMATION_SCHEMA.ROUTINES` joined with `.PARAMETERS`
                 (routine_name, parameter_name, data_type, ordinal_position)
    PostgreSQL,  information_schema.routines joined with information_schema.parameters
    Redshift     (specific_name, routine_name, parameter_name, data_type, udt_name, ordinal_position)
    Snowflake    <db>.INFORMATION_SCHEMA.PROCEDURES (PROCEDURE_NAME, ARGUMENT_SIGNATURE "(A NUMBER, B VARCHAR)")

`SELECT 1` answers one row; anything else is a 400 naming what the sandbox understands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.local.sandbox.procedures import Procedure

META = {"cacheHit": False, "location": "US", "totalBytesProcessed": "10485760"}  # BigQuery bills at least 10 MB
_BIGQUERY = re.compile(r"`(?P<dataset>[^`]+)\.INFORMATION_SCHEMA\.ROUTINES`", re.IGNORECASE)
_SNOWFLAKE = re.compile(r"FROM\s+(?P<db>[A-Za-z0-9_$\"]+)\.INFORMATION_SCHEMA\.PROCEDURES\b", re.IGNORECASE)
_POSTGRES = re.compile(r"information_schema\.routines\b", re.IGNORECASE)
_SELECT_ONE = re.compile(r"^\s*SELECT\s+1\s*(;\s*)?(/\*.*\*/\s*)?$", re.IGNORECASE | re.DOTALL)
_PG_NAMES = {"int": "integer", "int4": "integer", "integer": "integer", "int8": "bigint", "bigint": "bigint",
             "int2": "smallint", "smallint": "smallint", "float8": "double precision", "float": "double precision",
             "double precision": "double precision", "float4": "real", "real": "real", "bool": "boolean",
             "boolean": "boolean", "timestamptz": "timestamp with time zone", "varchar": "character varying",
             "char": "character", "decimal": "numeric"}
_PG_UDT = {"integer": "int4", "bigint": "int8", "smallint": "int2", "double precision": "float8", "real": "float4",
           "boolean": "bool", "text": "text", "character varying": "varchar", "numeric": "numeric", "date": "date",
           "timestamp with time zone": "timestamptz", "json": "json", "jsonb": "jsonb", "character": "bpchar",
           "super": "super"}
_USER_DEFINED = {"geometry", "geography"}


class QueryRefused(ValueError):
    """A query the sandbox's catalogue does not answer."""


def answer(sql: str, parameters: Any, procedures: Mapping[str, Procedure] | None) -> dict[str, Any]:
    """The `{rows, schema, meta}` answer to one query; QueryRefused when it is not one the sandbox knows."""
    if _SELECT_ONE.match(sql):
        return _result([{"f0_": 1}], [("f0_", "INT64")])
    known = procedures or {}
    if match := _BIGQUERY.search(sql):
        return _bigquery(match["dataset"], _named(parameters, "name"), known)
    if match := _SNOWFLAKE.search(sql):
        schema, name = _positional(parameters, 2)
        return _snowflake(match["db"].strip('"'), schema, name, known)
    if _POSTGRES.search(sql):
        schema, name = _positional(parameters, 2)
        return _postgres(schema, name, known)
    raise QueryRefused("the sandbox answers SELECT 1 and the INFORMATION_SCHEMA queries of `check --live` only")


def _named(parameters: Any, name: str) -> str:
    if not isinstance(parameters, Mapping) or not isinstance(parameters.get(name), str):
        raise QueryRefused(f"expected queryParameters {{\"{name}\": \"...\"}}")
    return parameters[name]


def _positional(parameters: Any, count: int) -> list[str]:
    if not isinstance(parameters, list) or len(parameters) != count or not all(isinstance(p, str) for p in parameters):
        raise QueryRefused(f"expected queryParameters as an array of {count} strings")
    return parameters


def _result(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> dict[str, Any]:
    return {"rows": rows, "schema": [{"name": name, "type": kind} for name, kind in columns], "meta": dict(META)}


def _bigquery(dataset: str, name: str, procedures: Mapping[str, Procedure]) -> dict[str, Any]:
    columns = [("routine_name", "STRING"), ("parameter_name", "STRING"), ("data_type", "STRING"),
               ("ordinal_position", "INT64")]
    procedure = procedures.get(f"{dataset}.{name}")
    if procedure is None or procedure.warehouse != "bigquery":
        return _result([], columns)
    signature = list((procedure.parameters or {}).items())
    rows = [{"routine_name": name, "parameter_name": p, "data_type": re.sub(r"\s+", "", t).upper(),
             "ordinal_position": i} for i, (p, t) in enumerate(signature, 1)]
    return _result(rows or [{"routine_name": name, "parameter_name": None, "data_type": None,
                             "ordinal_position": None}], columns)


def _snowflake(db: str, schema: str, name: str, procedures: Mapping[str, Procedure]) -> dict[str, Any]:
    columns = [("PROCEDURE_NAME", "TEXT"), ("ARGUMENT_SIGNATURE", "TEXT")]
    wanted = f"{db}.{schema}.{name}".upper()
    rows = []
    for full, procedure in procedures.items():
        if full.replace('"', "").upper() == wanted and procedure.warehouse == "snowflake":
            arguments = ", ".join(f"{p.upper()} {re.sub(r'[(].*', '', t).strip().upper()}"
                                  for p, t in (procedure.parameters or {}).items())
            rows.append({"PROCEDURE_NAME": name.upper(), "ARGUMENT_SIGNATURE": f"({arguments})"})
    return _result(rows, columns)


def _postgres(schema: str, name: str, procedures: Mapping[str, Procedure]) -> dict[str, Any]:
    columns = [("specific_name", "text"), ("routine_name", "text"), ("parameter_name", "text"),
               ("data_type", "text"), ("udt_name", "text"), ("ordinal_position", "int4")]
    rows: list[dict[str, Any]] = []
    for number, (full, procedure) in enumerate(sorted(procedures.items()), 1):
        if procedure.warehouse not in ("postgresql", "redshift") or full.split(".")[-2:] != [schema, name]:
            continue
        specific = f"{name}_{number}"
        signature = list((procedure.parameters or {}).items())
        for i, (parameter, declared) in enumerate(signature, 1):
            data_type, udt = _pg_type(declared)
            rows.append({"specific_name": specific, "routine_name": name, "parameter_name": parameter,
                         "data_type": data_type, "udt_name": udt, "ordinal_position": i})
        if not signature:
            rows.append({"specific_name": specific, "routine_name": name, "parameter_name": None,
                         "data_type": None, "udt_name": None, "ordinal_position": None})
    return _result(rows, columns)


def _pg_type(declared: str) -> tuple[str, str]:
    """information_schema's data_type and udt_name of a declared PostgreSQL type."""
    text = re.sub(r"\s+", " ", declared.strip().lower())
    if text.endswith("[]"):
        item = _PG_NAMES.get(text[:-2].strip(), text[:-2].strip())
        return "ARRAY", "_" + _PG_UDT.get(item, item)
    base = re.sub(r"\s*\(.*\)$", "", text)
    if base in _USER_DEFINED:
        return "USER-DEFINED", base
    data_type = _PG_NAMES.get(base, base)
    return data_type, _PG_UDT.get(data_type, data_type)
