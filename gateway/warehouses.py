"""Warehouse families: how a CALL's placeholders say which warehouse runs it, how its parameters go out,
and how each family's type names map onto the binding rules of `gateway.sqltypes` (pure: no I/O).

CARTO's own API client (CartoDB/carto-api-client, src/sources/types.ts) documents the SQL API's
parameters per warehouse: BigQuery (and the CARTO Data Warehouse, which is BigQuery) takes named
`@name` placeholders with `queryParameters` as an object; Snowflake takes positional `:1, :2, …` and
PostgreSQL and Redshift positional `$1, $2, …`, with `queryParameters` as an array in placeholder
order. No public source says how CARTO passes parameters to Databricks, so such workflows are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gateway.errors import ConfigError

BIGQUERY, SNOWFLAKE, POSTGRESQL, REDSHIFT, DATABRICKS = "bigquery", "snowflake", "postgresql", "redshift", "databricks"
FAMILIES: Final = (BIGQUERY, SNOWFLAKE, POSTGRESQL, REDSHIFT, DATABRICKS)
POSITIONAL: Final = frozenset({SNOWFLAKE, POSTGRESQL, REDSHIFT})
NAMED, COLON, DOLLAR, COLON_NAMED = "@name", ":1", "$1", ":name"
DATABRICKS_REFUSED: Final = (
    "Databricks is not supported: no public CARTO source says how CARTO's SQL API passes query parameters "
    "to Databricks (CARTO's API client documents BigQuery's @name, Snowflake's :1 and PostgreSQL/Redshift's $1 "
    "only), and the gateway will not guess how a value binds")
TITLES: Final = {BIGQUERY: "BigQuery", SNOWFLAKE: "Snowflake", POSTGRESQL: "PostgreSQL", REDSHIFT: "Redshift",
                 DATABRICKS: "Databricks"}


@dataclass(frozen=True)
class Placeholders:
    """The placeholders of a query in order of first appearance: one style, its names or numbers."""

    style: str | None
    names: tuple[str, ...] = ()
    positions: tuple[int, ...] = ()
    mixed: tuple[str, ...] = ()  # every style seen, when more than one


def scan(query: str) -> Placeholders:
    """The placeholders, skipping string literals, quoted identifiers, comments and `::` casts."""
    found: dict[str, list[str]] = {}
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch in "'\"`":
            i = _skip_quoted(query, i)
        elif query.startswith("--", i) or ch == "#":
            end = query.find("\n", i)
            i = n if end < 0 else end
        elif query.startswith("/*", i):
            end = query.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif query.startswith("::", i) or query.startswith("@@", i):
            i += 2
            while i < n and (query[i].isalnum() or query[i] == "_"):
                i += 1
        elif ch in "@:$":
            i = _placeholder(query, i, found)
        else:
            i += 1
    styles = tuple(found)
    if not styles:
        return Placeholders(None)
    if len(styles) > 1:
        return Placeholders(styles[0], mixed=styles)
    style = styles[0]
    tokens = tuple(dict.fromkeys(found[style]))
    if style in (COLON, DOLLAR):
        return Placeholders(style, positions=tuple(int(t) for t in tokens))
    return Placeholders(style, names=tokens)


_TOKEN = {"@": (re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)"), NAMED),
          "$": (re.compile(r"\$([1-9][0-9]{0,3})(?![0-9A-Za-z_])"), DOLLAR)}
_COLON_NUMBER = re.compile(r":([1-9][0-9]{0,3})(?![0-9A-Za-z_])")
_COLON_NAME = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")


def _placeholder(query: str, i: int, found: dict[str, list[str]]) -> int:
    ch = query[i]
    if ch == ":":
        if i > 0 and (query[i - 1].isalnum() or query[i - 1] == "_"):
            return i + 1  # inside a word (a time like 12:30 outside a literal, a label): not a placeholder
        for pattern, style in ((_COLON_NUMBER, COLON), (_COLON_NAME, COLON_NAMED)):
            match = pattern.match(query, i)
            if match:
                found.setdefault(style, []).append(match.group(1))
                return match.end()
        return i + 1
    pattern, style = _TOKEN[ch]
    match = pattern.match(query, i)
    if not match:
        return i + 1
    found.setdefault(style, []).append(match.group(1))
    return match.end()


def _skip_quoted(query: str, start: int) -> int:
    quote, i = query[start], start + 1
    while i < len(query):
        if query[i] == "\\":
            i += 2
            continue
        if query[i] == quote:
            return i + 1
        i += 1
    return i


def family_of(declared: str | None, placeholders: Placeholders) -> str:
    """The workflow's family from its optional `warehouse` and its placeholders; ConfigError saying why not."""
    if placeholders.mixed:
        raise ConfigError(f"the query mixes placeholder styles {', '.join(placeholders.mixed)}; "
                          "a warehouse takes one style")
    if declared == DATABRICKS or placeholders.style == COLON_NAMED:
        prefix = "" if declared == DATABRICKS else ":name placeholders are Databricks' parameter markers. "
        raise ConfigError(prefix + DATABRICKS_REFUSED)
    implied = {NAMED: (BIGQUERY,), COLON: (SNOWFLAKE,), DOLLAR: (POSTGRESQL, REDSHIFT)}.get(placeholders.style or "")
    if declared is None:
        return implied[0] if implied else BIGQUERY
    if implied is not None and declared not in implied:
        expected = {BIGQUERY: "@name", SNOWFLAKE: ":1, :2, …", POSTGRESQL: "$1, $2, …", REDSHIFT: "$1, $2, …"}
        raise ConfigError(f"warehouse {declared} takes {expected[declared]} placeholders, but the query uses "
                          f"{placeholders.style}")
    return declared


# --- type names --------------------------------------------------------------------------------

_BIGQUERY_NAMES = {"STRING", "INT64", "FLOAT64", "NUMERIC", "BOOL", "DATE", "TIMESTAMP", "GEOGRAPHY", "JSON"}
_SNOWFLAKE = {
    "INT": "INT64", "INTEGER": "INT64", "BIGINT": "INT64", "SMALLINT": "INT64", "TINYINT": "INT64", "BYTEINT": "INT64",
    "FLOAT": "FLOAT64", "FLOAT4": "FLOAT64", "FLOAT8": "FLOAT64", "DOUBLE": "FLOAT64", "DOUBLE PRECISION": "FLOAT64",
    "REAL": "FLOAT64", "VARCHAR": "STRING", "STRING": "STRING", "TEXT": "STRING", "CHAR": "STRING",
    "CHARACTER": "STRING", "BOOLEAN": "BOOL", "DATE": "DATE", "TIMESTAMP_TZ": "TIMESTAMP",
    "TIMESTAMP_LTZ": "TIMESTAMP", "GEOGRAPHY": "GEOGRAPHY", "VARIANT": "JSON", "OBJECT": "JSON", "ARRAY": "JSON",
}
_POSTGRESQL = {
    "INTEGER": "INT64", "INT": "INT64", "INT4": "INT64", "SMALLINT": "INT64", "INT2": "INT64", "BIGINT": "INT64",
    "INT8": "INT64", "DOUBLE PRECISION": "FLOAT64", "FLOAT8": "FLOAT64", "FLOAT": "FLOAT64", "REAL": "FLOAT64",
    "FLOAT4": "FLOAT64", "NUMERIC": "NUMERIC", "DECIMAL": "NUMERIC", "TEXT": "STRING", "VARCHAR": "STRING",
    "CHARACTER VARYING": "STRING", "CHAR": "STRING", "CHARACTER": "STRING", "BOOLEAN": "BOOL", "BOOL": "BOOL",
    "DATE": "DATE", "TIMESTAMPTZ": "TIMESTAMP", "TIMESTAMP WITH TIME ZONE": "TIMESTAMP", "GEOMETRY": "GEOGRAPHY",
    "GEOGRAPHY": "GEOGRAPHY", "JSON": "JSON", "JSONB": "JSON",
}
_REDSHIFT = {**{k: v for k, v in _POSTGRESQL.items() if k not in ("JSON", "JSONB")}, "SUPER": "JSON"}
_ARRAY_ITEMS = {"TEXT": "STRING", "VARCHAR": "STRING", "CHARACTER VARYING": "STRING", "INTEGER": "INT64",
                "INT": "INT64", "INT4": "INT64", "BIGINT": "INT64", "INT8": "INT64", "DOUBLE PRECISION": "FLOAT64",
                "FLOAT8": "FLOAT64", "BOOLEAN": "BOOL", "BOOL": "BOOL"}
_PRECISION = re.compile(r"^(?P<base>[A-Z_ ]+?)\s*\(\s*(?P<p>[0-9]+)\s*(,\s*(?P<s>[0-9]+)\s*)?\)$")


def binding_type(family: str, declared: str) -> str:
    """The `gateway.sqltypes` type a family's type name binds as ("NUMBER(38,0)" -> INT64); ConfigError if unknown."""
    if not isinstance(declared, str) or not declared.strip():
        raise ConfigError("a type must be a non-empty string")
    text = re.sub(r"\s+", " ", declared.strip()).upper()
    found = _bigquery_type(text) if family == BIGQUERY else _snowflake_type(text) if family == SNOWFLAKE \
        else _postgres_type(text, _REDSHIFT if family == REDSHIFT else _POSTGRESQL, family)
    if found is None:
        raise ConfigError(f"{declared!r} is not a {TITLES[family]} type the gateway can bind; "
                          f"use one of {', '.join(type_names(family))}")
    return found


def _bigquery_type(text: str) -> str | None:
    compact = text.replace(" ", "")
    if compact in _BIGQUERY_NAMES:
        return compact
    match = re.fullmatch(r"ARRAY<(STRING|INT64|FLOAT64|BOOL)>", compact)
    return compact if match else None


def _snowflake_type(text: str) -> str | None:
    precision = _PRECISION.match(text)
    if precision and precision["base"].strip() in ("NUMBER", "DECIMAL", "NUMERIC"):
        return "INT64" if int(precision["s"] or 0) == 0 else "NUMERIC"
    if precision and precision["base"].strip() in ("VARCHAR", "CHAR", "STRING", "TEXT", "CHARACTER"):
        return "STRING"
    if text in ("NUMBER", "DECIMAL", "NUMERIC"):
        return "INT64"  # Snowflake's default scale is 0
    return _SNOWFLAKE.get(text)


def _postgres_type(text: str, names: dict[str, str], family: str) -> str | None:
    if text.endswith("[]") and family == POSTGRESQL:
        item = _ARRAY_ITEMS.get(text[:-2].strip())
        return f"ARRAY<{item}>" if item else None
    precision = _PRECISION.match(text)
    if precision:
        base = precision["base"].strip()
        if base in ("NUMERIC", "DECIMAL"):
            return "INT64" if precision["s"] is not None and int(precision["s"]) == 0 else "NUMERIC"
        if base in ("VARCHAR", "CHARACTER VARYING", "CHAR", "CHARACTER"):
            return "STRING"
    return names.get(text)


def type_names(family: str) -> list[str]:
    """The type names a family's workflow files may use, for messages."""
    if family == BIGQUERY:
        return sorted(_BIGQUERY_NAMES) + [f"ARRAY<{t}>" for t in ("STRING", "INT64", "FLOAT64", "BOOL")]
    if family == SNOWFLAKE:
        return ["NUMBER(p,0)", "NUMBER(p,s)", *sorted(_SNOWFLAKE)]
    names = sorted(_REDSHIFT if family == REDSHIFT else _POSTGRESQL)
    return names + (["numeric(p,s)", "text[]", "integer[]", "bigint[]", "double precision[]", "boolean[]"]
                    if family == POSTGRESQL else ["numeric(p,s)"])
