"""Snowflake's, PostgreSQL's and Redshift's binding of positional parameters, and their error words (pure).

CARTO's API client documents positional `queryParameters` for these warehouses (`:1` Snowflake, `$1`
PostgreSQL and Redshift), as an array in placeholder order. What each warehouse then does with a value:

    Snowflake   casts the bound value to the argument's type: numbers bind to NUMBER and FLOAT (a float
                into NUMBER(p,0) is rounded), numeric text too; other text fails with
                `Numeric value 'x' is not recognized`; BOOLEAN takes booleans, numbers and its
                words (true/false/yes/no/on/off/1/0); DATE and TIMESTAMP_TZ take their text forms;
                VARCHAR takes any scalar; VARIANT, OBJECT and ARRAY take JSON text.
    PostgreSQL  receives each value as text and parses it as the argument's type:
    Redshift    `invalid input syntax for type integer: "2.5"` (Redshift: `... for integer: ...`).

Types are named in each warehouse's words and mapped by `gateway.warehouses.binding_type`; what binds
is decided here, independently of the gateway's own rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from gateway.errors import ConfigError
from gateway.local.sandbox.binding import RFC3339, Call, ErrorResult, is_geojson_geometry, parse_timestamp
from gateway.warehouses import BIGQUERY, POSTGRESQL, REDSHIFT, SNOWFLAKE, binding_type

_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_SNOWFLAKE_BOOL = {"true", "false", "yes", "no", "on", "off", "1", "0", "t", "f", "y", "n"}
_PG_BOOL = {"t", "true", "y", "yes", "on", "1", "f", "false", "n", "no", "off", "0"}
_PG_RANGES = {"smallint": 2**15, "int2": 2**15, "integer": 2**31, "int": 2**31, "int4": 2**31}


def family_of_call(query: str) -> str:
    """The family a CALL's placeholder style implies: `@name` BigQuery, `:1` Snowflake, `$1` PostgreSQL."""
    if re.search(r"(?<![:\w]):[1-9]", query):
        return SNOWFLAKE
    if re.search(r"\$[1-9]", query):
        return POSTGRESQL
    return BIGQUERY


def not_found(warehouse: str, procedure: str, arity: int) -> ErrorResult:
    """How each warehouse ends a CALL of a procedure that does not exist."""
    if warehouse == SNOWFLAKE:
        return ErrorResult("002140", f"SQL compilation error:\nUnknown function {procedure}", None)
    arguments = ", ".join(["unknown"] * arity)
    return ErrorResult("42883", f"procedure {procedure}({arguments}) does not exist", None)


def check_positional(warehouse: str, call: Call, parameters: Any, signature: Mapping[str, str] | None,
                     procedure: str) -> ErrorResult | None:
    """The error the warehouse would end this CALL with, or None when every value binds."""
    values: Sequence[Any] = parameters if isinstance(parameters, list) else []
    if not isinstance(parameters, list) and parameters:
        return ErrorResult("invalidParameters", f"{_title(warehouse)} takes positional parameters: "
                                                "queryParameters must be an array (sandbox check)", None)
    types = list((signature or {}).values())
    if signature is not None and len(call.arguments) != len(types):
        return not_found(warehouse, procedure, len(call.arguments))
    for place, argument in enumerate(call.arguments):
        if argument.index is None:
            continue
        if argument.index > len(values):
            return _unbound(warehouse, argument.index, len(values))
        if signature is not None:
            problem = _binds(warehouse, values[argument.index - 1], types[place])
            if problem:
                return problem
    if len(values) > max((a.index or 0 for a in call.arguments), default=0):
        return ErrorResult("invalidParameters", f"queryParameters has {len(values)} values but the CALL uses "
                                                "fewer placeholders (sandbox check)", None)
    return None


def _title(warehouse: str) -> str:
    return {SNOWFLAKE: "Snowflake", POSTGRESQL: "PostgreSQL", REDSHIFT: "Redshift"}.get(warehouse, warehouse)


def _unbound(warehouse: str, index: int, supplied: int) -> ErrorResult:
    if warehouse == SNOWFLAKE:
        return ErrorResult("002049", f"SQL compilation error: Bind variable :{index} not set.", None)
    return ErrorResult("08P01", f'bind message supplies {supplied} parameters, but prepared statement "" requires '
                                f"{index}", None)


def _binds(warehouse: str, value: Any, declared: str) -> ErrorResult | None:
    try:
        kind = binding_type(warehouse, declared)
    except ConfigError:
        return ErrorResult("invalidType", f"type {declared} is not modelled by the sandbox", None)
    if value is None:
        return None
    if warehouse == SNOWFLAKE:
        return _snowflake(value, kind)
    return _postgres(warehouse, value, kind, declared)


# --- Snowflake -------------------------------------------------------------------------------

def _snowflake(value: Any, kind: str) -> ErrorResult | None:
    text = _text(value)
    if kind in ("INT64", "FLOAT64", "NUMERIC"):
        if isinstance(value, bool) or (not _is_number(value) and not _NUMBER.match(text)):
            return ErrorResult("100038", f"Numeric value '{text}' is not recognized", None)
    elif kind == "BOOL":
        if not (isinstance(value, bool) or _is_number(value) or text.strip().lower() in _SNOWFLAKE_BOOL):
            return ErrorResult("100037", f"Boolean value '{text}' is not recognized", None)
    elif kind == "DATE":
        if not (isinstance(value, str) and _is_date(value)):
            return ErrorResult("100040", f"Date '{text}' is not recognized", None)
    elif kind == "TIMESTAMP":
        if not (isinstance(value, str) and _is_timestamp(value)):
            return ErrorResult("100035", f"Timestamp '{text}' is not recognized", None)
    elif kind == "GEOGRAPHY":
        if not (isinstance(value, str) and is_geojson_geometry(value)):
            return ErrorResult("100205", f"Error parsing Geo input: {text[:80]}", None)
    elif kind == "JSON":
        if not (isinstance(value, str) and _is_json(value)):
            return ErrorResult("100069", f"Error parsing JSON: {text[:80]}", None)
    elif kind == "STRING" and isinstance(value, (list, dict)):
        return ErrorResult("002023", "SQL compilation error: Expression type does not match column data type", None)
    return None


# --- PostgreSQL and Redshift -----------------------------------------------------------------

def _postgres(warehouse: str, value: Any, kind: str, declared: str) -> ErrorResult | None:
    if kind.startswith("ARRAY<"):
        if not isinstance(value, list):
            return _invalid(warehouse, declared, _text(value), array=True)
        item = kind[6:-1]
        for element in value:
            if element is None or _postgres(warehouse, element, item, declared.rstrip("[] ")) is not None:
                return _invalid(warehouse, declared, _pg_array(value), array=True)
        return None
    text = _text(value)
    ok = {
        "INT64": lambda: _INTEGER.match(text) is not None and _in_range(text, declared),
        "FLOAT64": lambda: _NUMBER.match(text) is not None,
        "NUMERIC": lambda: _NUMBER.match(text) is not None,
        "BOOL": lambda: text.strip().lower() in _PG_BOOL,
        "DATE": lambda: _is_date(text.strip()),
        "TIMESTAMP": lambda: _is_timestamp(text.strip()),
        "GEOGRAPHY": lambda: is_geojson_geometry(text),
        "JSON": lambda: _is_json(text),
        "STRING": lambda: True,
    }[kind]()
    if ok:
        return None
    if kind == "GEOGRAPHY":
        return ErrorResult("XX000", "parse error - invalid geometry", None)
    return _invalid(warehouse, declared, text)


def _invalid(warehouse: str, declared: str, text: str, *, array: bool = False) -> ErrorResult:
    name = "array" if array else declared.lower()
    if warehouse == REDSHIFT:
        return ErrorResult("22P02", f'invalid input syntax for {name}: "{text[:80]}"', None)
    if array:
        return ErrorResult("22P02", f'malformed array literal: "{text[:80]}"', None)
    return ErrorResult("22P02", f'invalid input syntax for type {name}: "{text[:80]}"', None)


def _in_range(text: str, declared: str) -> bool:
    limit = _PG_RANGES.get(declared.strip().lower(), 2**63)
    return -limit <= int(text) < limit


def _pg_array(value: list[Any]) -> str:
    return "{" + ",".join(_text(v) for v in value) + "}"


# --- shared ----------------------------------------------------------------------------------

def _text(value: Any) -> str:
    """A JSON value as a driver sends it as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _pg_array(value)
    return json.dumps(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", text))


def _is_timestamp(text: str) -> bool:
    if not RFC3339.match(text):
        return False
    try:
        parse_timestamp(text)
    except ValueError:
        return False
    return True


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
