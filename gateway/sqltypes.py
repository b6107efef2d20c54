"""SQL types: the one wire form of each, and binding a JSON value to it.

CARTO infers each query parameter's type from its JSON value and BigQuery then coerces it to the
procedure's argument type, so each type has exactly one wire form:

    type        sent as                                  accepted                     with coerce, also
    STRING      JSON string                              string                       numbers, booleans (as JSON text)
    INT64       JSON integer in [-2^63, 2^63-1]          integer-valued number (2.0)  "42"
    FLOAT64     JSON number, always a float              finite number                "2.5", "1e3"
    NUMERIC     decimal string without exponent          number or decimal string     -
    BOOL        true / false                             boolean                      "true"/"false" (any case), "1"/"0"
    DATE        "YYYY-MM-DD"                             a real calendar date         -
    TIMESTAMP   "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (UTC)    RFC 3339 with an offset      -
    GEOGRAPHY   GeoJSON geometry as compact text         geometry object              GeoJSON text
    JSON        compact JSON text                        any value                    -
    ARRAY<T>    JSON array of T's wire form              array without nulls          (coerce applies to items)

Strings parsed as another type may carry surrounding whitespace; what is sent never does.
`bind` is a pure function of its inputs; `gateway.params` decides where each value comes from.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Context, Decimal
from typing import Any, Final

from gateway.errors import ConfigError

ARRAY_ITEM_TYPES: Final = ("STRING", "INT64", "FLOAT64", "BOOL")
SQL_TYPES: Final = frozenset(
    ("STRING", "INT64", "FLOAT64", "NUMERIC", "BOOL", "DATE", "TIMESTAMP", "GEOGRAPHY", "JSON")
    + tuple(f"ARRAY<{item}>" for item in ARRAY_ITEM_TYPES)
)

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
# NUMERIC is precision 38, scale 9: 29 digits before the point, 9 after.
# https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types#decimal_types
NUMERIC_INTEGER_DIGITS: Final = 29
NUMERIC_SCALE: Final = 9
# Per array parameter: one bad 100k-item array must not turn into a megabyte of 422.
MAX_ITEM_ERRORS: Final = 10

Location = tuple[str, ...]


class BindError(ValueError):
    """A value that cannot be bound to its SQL type; `problems` are (location inside the value, message)."""

    def __init__(self, message: str, *, problems: Sequence[tuple[Location, str]] = ()):
        super().__init__(message)
        self.message = message
        self.problems: tuple[tuple[Location, str], ...] = tuple(problems) or (((), message),)


def normalise_type(sql_type: str) -> str:
    """The canonical spelling of a SQL type ("array< int64 >" -> "ARRAY<INT64>"); ConfigError if unknown."""
    if not isinstance(sql_type, str):
        raise ConfigError(f"a SQL type must be a string, got {describe(sql_type)}")
    if sql_type in SQL_TYPES:
        return sql_type
    canonical = re.sub(r"\s+", "", sql_type).upper()
    if canonical not in SQL_TYPES:
        raise ConfigError(f"unknown SQL type {sql_type!r}; expected one of {', '.join(sorted(SQL_TYPES))}")
    return canonical


# --- binding one value -----------------------------------------------------------------------

def bind(sql_type: str, value: Any, *, coerce: bool = False) -> Any:
    """The JSON value to send in `queryParameters` for `value` as `sql_type`; BindError if it cannot bind."""
    sql_type = normalise_type(sql_type)
    if sql_type.startswith("ARRAY<"):
        return _bind_array(sql_type[len("ARRAY<"):-1], value, coerce)
    return _BINDERS[sql_type](value, coerce)


def _bind_array(item_type: str, value: Any, coerce: bool) -> list[Any]:
    if not isinstance(value, list):
        raise BindError(f"expected an array, got {describe(value)}")
    bound: list[Any] = []
    problems: list[tuple[Location, str]] = []
    for index, item in enumerate(value):
        try:
            if item is None:  # BigQuery arrays cannot hold NULL
                raise BindError("null is not allowed in an array")
            bound.append(_BINDERS[item_type](item, coerce))
        except BindError as exc:
            problems.append(((str(index),), f"item {index}: {exc.message}"))
    if not problems:
        return bound
    shown = problems[:MAX_ITEM_ERRORS]
    if len(problems) > MAX_ITEM_ERRORS:
        shown.append(((), f"{len(problems) - MAX_ITEM_ERRORS} more items cannot be bound"))
    message = problems[0][1] if len(problems) == 1 else f"{len(problems)} items cannot be bound; {problems[0][1]}"
    raise BindError(message, problems=shown)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # bool is an int subclass


def _bind_string(value: Any, coerce: bool) -> str:
    if isinstance(value, str):
        return _unicode(value)
    if coerce and (isinstance(value, bool) or _is_number(value)):
        return _json_text(value)  # true -> "true", 2 -> "2", 2.5 -> "2.5"
    raise BindError(f"expected a string, got {describe(value)}")


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def _bind_int64(value: Any, coerce: bool) -> int:
    # JSON has one number type (RFC 8259) and JSON Schema's "integer" accepts 2.0: a number whose value
    # is an integer (2.0, 2e0, 20E-1) is one, and it is sent as 2 because BigQuery binds a float only
    # to FLOAT64. 1e400 reads as infinity, which is no integer.
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, float) and math.isinf(value):
        raise BindError("the number is outside the INT64 range [-2^63, 2^63-1]")
    elif coerce and isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        digits = value.strip().lstrip("+-").lstrip("0")
        number = int(value.strip()) if len(digits) <= 20 else INT64_MAX + 1  # int() refuses > 4300 digits
    else:
        raise BindError(f"expected an integer, got {describe(value)}")
    if not INT64_MIN <= number <= INT64_MAX:
        raise BindError(f"{describe(value)} is outside the INT64 range [-2^63, 2^63-1]")
    return number


_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _bind_float64(value: Any, coerce: bool) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise BindError(f"expected a finite number, got {describe(value)}")
    if _is_number(value):
        number: Any = value
    elif coerce and isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()):
        number = value.strip()
    else:
        raise BindError(f"expected a number, got {describe(value)}")
    try:
        result = float(number)  # always a float, so CARTO infers FLOAT64 (items of an array agree)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise BindError(f"{describe(value)} is outside the FLOAT64 range")
    return result


_NUMERIC_CONTEXT = Context(prec=NUMERIC_INTEGER_DIGITS + NUMERIC_SCALE)


def _bind_numeric(value: Any, coerce: bool) -> str:
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()):
        try:
            number = Decimal(value.strip())
        except ArithmeticError:  # an exponent beyond what decimal can hold at all
            raise BindError(f"{describe(value)} is outside the NUMERIC range") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        # repr is the shortest text that reads back as this float, i.e. what the JSON said (0.1, not 0.1000000000000000055...)
        number = Decimal(repr(value))
    else:
        raise BindError(f"expected a decimal number, got {describe(value)}")
    return _numeric_text(number, value)


def _numeric_text(number: Decimal, value: Any) -> str:
    if number.is_zero():
        return "0"
    if number.adjusted() >= NUMERIC_INTEGER_DIGITS:  # checked before any arithmetic: "1e999999" stays cheap
        raise BindError(f"{describe(value)} is outside the NUMERIC range (at most 29 digits before the point)")
    _, digits, exponent = number.as_tuple()
    coefficient = "".join(map(str, digits))
    significant_exponent = int(exponent) + len(coefficient) - len(coefficient.rstrip("0"))
    if significant_exponent < -NUMERIC_SCALE:  # refused rather than silently rounded
        raise BindError(f"{describe(value)} has more than 9 digits after the point, the NUMERIC scale")
    return format(number.normalize(_NUMERIC_CONTEXT), "f")


_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}


def _bind_bool(value: Any, coerce: bool) -> bool:
    if isinstance(value, bool):
        return value
    if coerce and isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    raise BindError(f"expected true or false, got {describe(value)}")


_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _bind_date(value: Any, coerce: bool) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not _DATE_TEXT.fullmatch(text):
        raise BindError(f"expected a date as YYYY-MM-DD, got {describe(value)}")
    try:
        date.fromisoformat(text)
    except ValueError:
        raise BindError(f"{describe(value)} is not a calendar date") from None
    return text


_TIMESTAMP_TEXT = re.compile(  # RFC 3339 §5.6 date-time; the space separator is allowed by its note
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def _bind_timestamp(value: Any, coerce: bool) -> str:
    match = _TIMESTAMP_TEXT.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise BindError(f"expected an RFC 3339 timestamp such as 2024-05-01T12:00:00Z, got {describe(value)}")
    if not match["offset"]:
        raise BindError(f"{describe(value)} has no UTC offset; add Z or +HH:MM so the instant is unambiguous")
    fraction = (match["fraction"] or "").rstrip("0")
    if len(fraction) > 6:
        raise BindError(f"{describe(value)} is more precise than a microsecond, the TIMESTAMP precision")
    offset = "+00:00" if match["offset"] in "Zz" else match["offset"]
    try:
        local = datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction.ljust(6, '0')}{offset}")
    except ValueError:
        raise BindError(f"{describe(value)} is not a valid date and time") from None
    try:
        utc = local.astimezone(UTC)
    except OverflowError:
        raise BindError(f"{describe(value)} is outside the TIMESTAMP range") from None
    return utc.replace(tzinfo=None).isoformat() + "Z"


def _bind_geography(value: Any, coerce: bool) -> str:
    if coerce and isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise BindError(f"expected GeoJSON geometry text, got {describe(value)}") from None
    return _json_text(_geometry(value))


def _bind_json(value: Any, coerce: bool) -> str:
    if value is None:
        raise BindError("expected a JSON value, got null")
    return _json_text(value)


_BINDERS: dict[str, Callable[[Any, bool], Any]] = {
    "STRING": _bind_string, "INT64": _bind_int64, "FLOAT64": _bind_float64, "NUMERIC": _bind_numeric,
    "BOOL": _bind_bool, "DATE": _bind_date, "TIMESTAMP": _bind_timestamp, "GEOGRAPHY": _bind_geography,
    "JSON": _bind_json,
}


def _json_text(value: Any) -> str:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise BindError(f"{describe(value)} is not representable as JSON") from None
    return _unicode(text)


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" is legal JSON) is not a BigQuery STRING
        raise BindError("the text contains an unpaired surrogate, which is not valid Unicode") from None
    return text


# --- GeoJSON geometry (RFC 7946 §3.1) ---------------------------------------------------------

Check = Callable[[Any, str], None]


def _position(value: Any, where: str) -> None:
    if not isinstance(value, list) or not 2 <= len(value) <= 3 or not all(map(_is_finite_number, value)):
        raise BindError(f"{where}: expected a position [longitude, latitude(, altitude)] of finite numbers, "
                        f"got {describe(value)}")
    if not -180 <= value[0] <= 180:
        raise BindError(f"{where}: longitude {describe(value[0])} is outside [-180, 180]")
    if not -90 <= value[1] <= 90:
        raise BindError(f"{where}: latitude {describe(value[1])} is outside [-90, 90]")


def _is_finite_number(value: Any) -> bool:
    return _is_number(value) and (not isinstance(value, float) or math.isfinite(value))


def _array_of(check: Check, minimum: int, items: str) -> Check:
    def check_array(value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) < minimum:
            raise BindError(f"{where}: expected an array of at least {minimum} {items}, got {describe(value)}")
        for index, item in enumerate(value):
            check(item, f"{where}/{index}")
    return check_array


def _ring(value: Any, where: str) -> None:
    _array_of(_position, 4, "positions")(value, where)
    if value[0] != value[-1]:
        raise BindError(f"{where}: a linear ring must be closed (its first and last positions differ)")


_line = _array_of(_position, 2, "positions")
_polygon = _array_of(_ring, 1, "linear rings")
_COORDINATES: dict[str, Check] = {
    "Point": _position,
    "MultiPoint": _array_of(_position, 1, "positions"),
    "LineString": _line,
    "MultiLineString": _array_of(_line, 1, "line strings"),
    "Polygon": _polygon,
    "MultiPolygon": _array_of(_polygon, 1, "polygons"),
}
GEOMETRY_TYPES: Final = frozenset(_COORDINATES) | {"GeometryCollection"}


def _geometry(value: Any, where: str = "") -> dict[str, Any]:
    """The checked geometry with only its `type` and `coordinates`/`geometries` (bbox, foreign members dropped)."""
    if not isinstance(value, Mapping):
        raise BindError(f"{where}expected a GeoJSON geometry object, got {describe(value)}")
    kind = value.get("type")
    if kind in ("Feature", "FeatureCollection"):
        raise BindError(f"{where}expected a geometry, got a {kind}")
    if kind == "GeometryCollection" and not where:
        return {"type": kind, "geometries": _members(value.get("geometries"))}
    if kind == "GeometryCollection":  # RFC 7946 §3.1.8: nested collections SHOULD be avoided
        raise BindError(f"{where}a GeometryCollection inside a GeometryCollection is not supported")
    if not isinstance(kind, str) or kind not in _COORDINATES:
        raise BindError(f"{where}expected a geometry type ({', '.join(sorted(GEOMETRY_TYPES))}), "
                        f"got {describe(kind)}")
    _COORDINATES[kind](value.get("coordinates"), f"{where}coordinates")
    return {"type": kind, "coordinates": value["coordinates"]}


def _members(geometries: Any) -> list[dict[str, Any]]:
    if not isinstance(geometries, list) or not geometries:
        raise BindError(f"geometries: expected an array of at least 1 geometry, got {describe(geometries)}")
    return [_geometry(member, f"geometries/{index}: ") for index, member in enumerate(geometries)]


# --- messages --------------------------------------------------------------------------------

_FLOAT_WORDS = {math.inf: "Infinity", -math.inf: "-Infinity"}


def describe(value: Any) -> str:
    """A short JSON-flavoured rendering of a value for messages: never a long echo of the input."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 128 else "a very large integer"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else _FLOAT_WORDS.get(value, repr(value))
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return json.dumps(shown.encode("utf-8", "replace").decode("utf-8"), ensure_ascii=False)
    if isinstance(value, list):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
