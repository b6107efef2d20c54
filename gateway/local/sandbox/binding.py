"""BigQuery's parameter binding rules, and the errors a warehouse reports for a CALL (pure, no I/O).

CARTO sends each `queryParameters` value as its JSON type (integer, float, string, bool, array);
BigQuery then coerces it to the procedure's argument type or fails the job with
`Cannot coerce expression @name to type T at [line:column]`. The coercions allowed here follow
https://cloud.google.com/bigquery/docs/reference/standard-sql/conversion_rules ("Coercion"),
narrowed to what a JSON value can carry:

    JSON value      binds to
    integer         INT64 (within ±2^63), FLOAT64, NUMERIC, BIGNUMERIC
    float           FLOAT64 only (2.0 is a float: it does NOT bind to INT64)
    string          STRING; DATE (YYYY-MM-DD); TIMESTAMP (RFC 3339); NUMERIC / BIGNUMERIC (decimal
                    string within precision); GEOGRAPHY (a GeoJSON geometry string); JSON (JSON text)
    bool            BOOL only
    array           ARRAY<T> when every element binds to T (no null elements)
    null            any type (an untyped NULL)
    object          nothing
Types outside this table (DATETIME, TIME, STRUCT, ...) bind nothing: the sandbox does not model them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ALIASES = {"INTEGER": "INT64", "INT": "INT64", "BIGINT": "INT64", "FLOAT": "FLOAT64",
            "BOOLEAN": "BOOL", "DECIMAL": "NUMERIC", "BIGDECIMAL": "BIGNUMERIC"}
# NUMERIC is 38 digits with 9 after the point; BIGNUMERIC 76 with 38 after (BigQuery data types).
_DECIMAL_LIMITS = {"NUMERIC": (29, 9), "BIGNUMERIC": (38, 38)}
_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_GEOMETRIES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}
_CALL = re.compile(r"^\s*CALL\s+(?P<name>(`[^`]+`|[A-Za-z0-9_\-]+)(\s*\.\s*(`[^`]+`|[A-Za-z0-9_\-]+))*)\s*\(",
                   re.IGNORECASE)
_PARAM = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")
_POSITIONAL = re.compile(r"[:$]([1-9][0-9]*)")


@dataclass(frozen=True)
class ErrorResult:
    """A BigQuery ErrorProto as CARTO reports it in `status.errorResult`."""

    reason: str
    message: str
    location: str | None = "query"

    def as_dict(self) -> dict[str, str]:
        body = {"reason": self.reason, "location": self.location, "message": self.message}
        return {key: value for key, value in body.items() if value is not None}


@dataclass(frozen=True)
class Argument:
    """One argument of a CALL: a named parameter (`name`) or a literal (`name` None), and where it starts."""

    name: str | None
    offset: int
    index: int | None = None  # the k of a positional :k or $k


@dataclass(frozen=True)
class Call:
    """A parsed `CALL procedure(args)`: the unquoted fully qualified name and its arguments."""

    procedure: str
    arguments: tuple[Argument, ...]


def normalise_type(sql_type: str) -> str:
    """Canonical spelling of a SQL type: upper case, aliases resolved, `ARRAY<T>` without spaces."""
    compact = re.sub(r"\s+", "", sql_type).upper()
    if compact.startswith("ARRAY<") and compact.endswith(">"):
        return f"ARRAY<{normalise_type(compact[6:-1])}>"
    return _ALIASES.get(compact, compact)


def binds(value: Any, sql_type: str) -> bool:
    """True when BigQuery would bind this JSON value to a parameter of `sql_type`."""
    sql_type = normalise_type(sql_type)
    if value is None:
        return True
    if sql_type.startswith("ARRAY<"):
        element = sql_type[6:-1]
        return isinstance(value, list) and all(v is not None and binds(v, element) for v in value)
    if isinstance(value, bool):  # before int: bool is an int subclass in Python
        return sql_type == "BOOL"
    if isinstance(value, int):
        return (sql_type == "INT64" and INT64_MIN <= value <= INT64_MAX) or sql_type == "FLOAT64" \
            or (sql_type in _DECIMAL_LIMITS and _fits_decimal(Decimal(value), sql_type))
    if isinstance(value, float):
        return sql_type == "FLOAT64"
    if isinstance(value, str):
        return _string_binds(value, sql_type)
    return False


def _string_binds(text: str, sql_type: str) -> bool:
    if sql_type == "STRING":
        return True
    if sql_type == "DATE":
        return bool(_DATE_TEXT.match(text)) and _parses(date.fromisoformat, text)
    if sql_type == "TIMESTAMP":
        return bool(RFC3339.match(text)) and _parses(parse_timestamp, text)
    if sql_type in _DECIMAL_LIMITS:
        return bool(_DECIMAL_TEXT.match(text)) and _fits_decimal(Decimal(text), sql_type)
    if sql_type == "GEOGRAPHY":
        return is_geojson_geometry(text)
    if sql_type == "JSON":
        return _parses(json.loads, text)
    return False


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except (ValueError, TypeError, InvalidOperation):
        return False
    return True


def parse_timestamp(text: str) -> datetime:
    head, _, tail = text.replace("t", "T").replace("z", "Z").replace(" ", "T").partition(".")
    if tail:  # Python parses at most microseconds; BigQuery keeps microseconds too
        digits = re.match(r"\d+", tail).group(0)
        head = f"{head}.{digits[:6]}{tail[len(digits):]}"
    return datetime.fromisoformat(head)  # Python 3.11 reads "Z"


def _fits_decimal(number: Decimal, sql_type: str) -> bool:
    whole_max, scale_max = _DECIMAL_LIMITS[sql_type]
    if not number.is_finite():
        return False
    _, digits, exponent = number.normalize().as_tuple()
    scale = max(0, -exponent)
    whole = max(0, len(digits) + exponent)
    return scale <= scale_max and whole <= whole_max


def is_geojson_geometry(text: str) -> bool:
    try:
        geometry = json.loads(text)
    except ValueError:
        return False
    if not isinstance(geometry, dict):
        return False
    if geometry.get("type") == "GeometryCollection":
        return isinstance(geometry.get("geometries"), list)
    return geometry.get("type") in _GEOMETRIES and isinstance(geometry.get("coordinates"), list)


def parse_call(query: str) -> Call | None:
    """The procedure and arguments of a `CALL`, or None when the query is not a CALL statement."""
    match = _CALL.match(query)
    if not match:
        return None
    procedure = re.sub(r"[`\s]", "", match.group("name"))
    close = _closing_paren(query, match.end())
    if close is None:
        return None
    return Call(procedure, tuple(_arguments(query, match.end(), close)))


def _closing_paren(query: str, start: int) -> int | None:
    depth, quote = 1, None
    for i in range(start, len(query)):
        ch = query[i]
        if quote:
            quote = None if ch == quote and query[i - 1] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return None


def _arguments(query: str, start: int, end: int) -> list[Argument]:
    """Split the argument list at top-level commas; an argument that is exactly `@name` is a parameter."""
    if not query[start:end].strip():
        return []
    arguments, depth, quote, piece_start = [], 0, None, start
    for i in range(start, end + 1):
        ch = query[i] if i < end else ","
        if quote:
            quote = None if ch == quote and query[i - 1] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            arguments.append(_argument(query, piece_start, i))
            piece_start = i + 1
    return arguments


def _argument(query: str, start: int, end: int) -> Argument:
    piece = query[start:end]
    offset = start + len(piece) - len(piece.lstrip())
    match = _PARAM.fullmatch(piece.strip())
    positional = _POSITIONAL.fullmatch(piece.strip())
    return Argument(match.group(1) if match else None, offset, int(positional.group(1)) if positional else None)


def position(query: str, offset: int) -> str:
    """BigQuery's `[line:column]` (both 1-based) of a character offset in the query."""
    line = query.count("\n", 0, offset) + 1
    column = offset - (query.rfind("\n", 0, offset) + 1) + 1
    return f"[{line}:{column}]"


def check_call(query: str, call: Call, parameters: Mapping[str, Any],
               signature: Mapping[str, str] | None) -> ErrorResult | None:
    """The error BigQuery would end this CALL with, or None when every parameter binds."""
    if signature is not None and not _arity_matches(call, signature):
        return _no_matching_signature(query, call, parameters, signature)
    for argument in call.arguments:
        if argument.name is None:
            continue
        where = position(query, argument.offset)
        if argument.name not in parameters:
            return ErrorResult("invalidQuery", f"Query error: Query parameter '{argument.name}' not found at {where}")
        expected = (signature or {}).get(argument.name)
        if expected is not None and not binds(parameters[argument.name], expected):
            return ErrorResult("invalidQuery", f"Query error: Cannot coerce expression @{argument.name} "
                                               f"to type {normalise_type(expected)} at {where}")
    return _unused_parameter(call, parameters)


def _arity_matches(call: Call, signature: Mapping[str, str]) -> bool:
    named = [a.name for a in call.arguments if a.name is not None]
    return len(call.arguments) == len(signature) and all(n in signature for n in named)


def _no_matching_signature(query: str, call: Call, parameters: Mapping[str, Any],
                           signature: Mapping[str, str]) -> ErrorResult:
    given = ", ".join(_json_type(parameters.get(a.name)) if a.name else "LITERAL" for a in call.arguments)
    supported = ", ".join(f"{name} {normalise_type(t)}" for name, t in signature.items())
    where = position(query, len(query) - len(query.lstrip()))
    return ErrorResult("invalidQuery", f"Query error: No matching signature for procedure {call.procedure} "
                                       f"for argument types: {given}. Supported signature: "
                                       f"{call.procedure}({supported}) at {where}")


def _unused_parameter(call: Call, parameters: Mapping[str, Any]) -> ErrorResult | None:
    # BigQuery itself ignores an unused named parameter; the sandbox is stricter on purpose, so a
    # gateway mapping bug (a parameter sent under the wrong name) fails loudly in tests.
    used = {a.name for a in call.arguments}
    extra = sorted(name for name in parameters if name not in used)
    if extra:
        return ErrorResult("invalidQuery", f"Query error: Query parameter '{extra[0]}' is not used in the query "
                                           "(sandbox check)")
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    return {float: "FLOAT64", str: "STRING", list: "ARRAY"}.get(type(value), "NULL" if value is None else "STRUCT")


def not_found(procedure: str) -> ErrorResult:
    """BigQuery's answer to a CALL of a procedure that does not exist (project:dataset.procedure)."""
    project, _, rest = procedure.partition(".")
    return ErrorResult("notFound", f"Not found: Procedure {project}:{rest}" if rest else f"Not found: Procedure {project}")


def cancelled() -> ErrorResult:
    """BigQuery's errorResult of a job cancelled by the user."""
    return ErrorResult("stopped", "Job execution was cancelled: User requested cancellation", None)
