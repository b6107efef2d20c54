"""Output tables the sandbox's procedures write, and the `/query` reads of them (pure, no I/O).

A procedure of `GATEWAY_SANDBOX_PROCEDURES` may declare what its run writes:

    "output": {"table": "proj.ds.stores_out", "schema": [{"name": "id", "type": "INT64"}, ...],
               "rows": [[1, ...], ...] or [{"id": 1, ...}, ...], "named": true}

`table` is the table's full name (default `<procedure>_out_<first 16 hex digits of the MD5 of the
parameter values joined by commas>`, as CARTO's generated API/MCP output procedures name theirs);
`named` (default true) says whether the job's answers carry it at `jobMetadata.workflowOutputTableName`,
as a workflow with an Async API or MCP Tool Output does; false is a "Save as Table" workflow whose
file names the table. Without `schema` the table is announced but never written: reading it is a missing table.

`/query` answers `SELECT <* or quoted columns> FROM <quoted table> LIMIT n` from these tables, in
`{rows, schema, meta}`; a table that does not exist is the warehouse's own "not found" error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError

_SELECT = re.compile(r"^\s*SELECT\s+(?P<columns>.+?)\s+FROM\s+(?P<table>\S+)\s+LIMIT\s+(?P<limit>\d+)\s*;?\s*$",
                     re.IGNORECASE | re.DOTALL)
_IDENTIFIER = re.compile(r'`[^`]+`|"[^"]+"|[A-Za-z0-9_$-]+')
_KEYS = {"table", "schema", "rows", "named"}


class TableMissing(LookupError):
    """A read of a table that does not exist."""


@dataclass(frozen=True)
class Output:
    """What one procedure's run writes."""

    table: str | None = None
    schema: tuple[tuple[str, str], ...] | None = None  # None: announced, never written
    rows: tuple[dict[str, Any], ...] = ()
    named: bool = True

    def table_for(self, procedure: str, parameters: Any) -> str:
        """The table one run writes: the fixed name, else one per procedure and parameters."""
        if self.table:
            return self.table
        values = parameters.values() if isinstance(parameters, Mapping) else parameters or []
        joined = ",".join(v if isinstance(v, str) else json.dumps(v) for v in values)
        return f"{procedure}_out_{hashlib.md5(joined.encode()).hexdigest()[:16]}"  # noqa: S324 (a name, not a secret)


def parse_output(name: str, raw: Any) -> Output:
    """The `output` entry of a procedure; ConfigError names the procedure and the problem."""
    where = f"sandbox procedures: {name}.output"
    if not isinstance(raw, Mapping) or set(raw) - _KEYS:
        raise ConfigError(f"{where}: expected an object with keys {sorted(_KEYS)}")
    schema = raw.get("schema")
    if schema is not None and not (isinstance(schema, list) and all(
            isinstance(f, Mapping) and isinstance(f.get("name"), str) and isinstance(f.get("type"), str)
            for f in schema)):
        raise ConfigError(f"{where}.schema: expected [{{\"name\", \"type\"}}, ...]")
    columns = tuple((f["name"], f["type"]) for f in schema) if schema is not None else None
    rows = tuple(_row(where, columns, row) for row in raw.get("rows") or [])
    if rows and columns is None:
        raise ConfigError(f"{where}.rows: rows need a schema")
    table = raw.get("table")
    if table is not None and not isinstance(table, str):
        raise ConfigError(f"{where}.table: expected a table name")
    return Output(table=table, schema=columns, rows=rows, named=bool(raw.get("named", True)))


def _row(where: str, columns: tuple[tuple[str, str], ...] | None, row: Any) -> dict[str, Any]:
    names = [name for name, _ in columns or ()]
    if isinstance(row, list) and len(row) == len(names):
        return dict(zip(names, row, strict=True))
    if isinstance(row, Mapping) and set(row) <= set(names):
        return {name: row.get(name) for name in names}
    raise ConfigError(f"{where}.rows: each row is an array in schema order or an object of its columns")


def is_read(sql: str) -> bool:
    """Whether a `/query` statement is the bounded read of a table."""
    return bool(_SELECT.match(sql))


def read(sql: str, tables: Mapping[str, Output]) -> dict[str, Any]:
    """`{rows, schema}` of a bounded read; TableMissing for a table no run writes; ValueError for a column it has not."""
    match = _SELECT.match(sql)
    assert match is not None
    parts = _IDENTIFIER.findall(match["table"])
    if "".join(parts) != match["table"].replace(".", "") or not parts:
        raise ValueError(f"Syntax error: unexpected table name {match['table']}")
    quote = parts[0][0] if parts[0][0] in '`"' else ""
    name = ".".join(part.strip('`"') for part in parts)
    output = _find(name, tables)
    if output is None or output.schema is None:
        raise TableMissing(_missing(name, quote))
    columns = [name for name, _ in output.schema]
    wanted = columns if match["columns"].strip() == "*" else _columns(match["columns"], columns)
    types = dict(output.schema)
    rows = [{c: row[c] for c in wanted} for row in output.rows[: int(match["limit"])]]
    return {"rows": rows, "schema": [{"name": c, "type": types[c]} for c in wanted]}


def _find(name: str, tables: Mapping[str, Output]) -> Output | None:
    """The output whose table this is: warehouses fold unquoted names, so compare without case."""
    for table, output in tables.items():
        if table.lower() == name.lower():
            return output
    return None


def _columns(listed: str, columns: list[str]) -> list[str]:
    by_folded = {c.lower(): c for c in columns}
    wanted = []
    for item in (part.strip() for part in listed.split(",")):
        bare = item.strip('`"')
        found = by_folded.get(bare.lower())
        if found is None:
            raise ValueError(f"Unrecognized name: {bare}")
        wanted.append(found)
    return wanted


def _missing(name: str, quote: str) -> str:
    """The warehouse's words for a missing table: BigQuery's (backticks), else PostgreSQL's and Snowflake's."""
    if quote == "`":
        project, _, rest = name.partition(".")
        return f"Not found: Table {project}:{rest} was not found in location US"
    return f'relation "{name}" does not exist'
