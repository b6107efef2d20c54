"""The workflow's answer: reading a finished job's output rows into its completion event
(README, "Getting the answer back"; the why in docs/architecture.md, "Results").

A workflow run through CARTO's job API returns no rows: it writes a table. After a job ends
SUCCEEDED, `ResultReader.read` reads at most `rows` rows of that table (the file's `result.table`,
else the name CARTO's job answer gives at `jobMetadata.workflowOutputTableName`) through the
synchronous `/query` endpoint, with one bounded `SELECT … LIMIT rows+1`, the warehouse's own
identifier quoting, a time budget and a byte budget. Whatever happens, it returns a value for the
event: the rows, or the table and an error. It never raises for a failed read, so a result can
neither withhold nor delay the completion event past its budget.

Names are never pasted into SQL as given: each part of a dotted name must be a plain identifier,
and is then quoted the warehouse's way (BigQuery backticks; Snowflake, PostgreSQL and Redshift
double quotes, with the case those warehouses give an unquoted name, so the quoted name means the
same table). A name that is not a plain dotted identifier is refused before anything is sent.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import GatewayError, NotFound, QueryTimedOut, Unavailable

log = logging.getLogger("gateway.results")

DEFAULT_ROWS, MAX_ROWS = 100, 1000
DEFAULT_BUDGET_S = 20.0
DEFAULT_MAX_BYTES = 256 * 1024
_BIGQUERY_PROJECT = re.compile(r"[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*")  # project ids carry hyphens: carto-dw-ac-x
_BIGQUERY_PART = re.compile(r"[A-Za-z0-9_]{1,1024}")
_PLAIN_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,254}")
COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}")  # a column, in every warehouse (the meta-schema says the same)
_MESSAGE_CHARS = 300
# How BigQuery, Snowflake, PostgreSQL and Redshift say a table is missing.
_MISSING = re.compile(r"Not found: Table|does not exist|\(404\)", re.IGNORECASE)


class UnsafeName(ValueError):
    """A table or column name that is not a plain (dotted) identifier: never sent to CARTO."""


@dataclass(frozen=True)
class ResultSpec:
    """A workflow file's `result` block: which table (None: the one CARTO names), how many rows, which columns."""

    table: str | None = None
    rows: int = DEFAULT_ROWS
    columns: tuple[str, ...] | None = None

    @classmethod
    def from_definition(cls, block: Mapping[str, Any]) -> ResultSpec:
        columns = block.get("columns")
        return cls(table=block.get("table"), rows=int(block.get("rows", DEFAULT_ROWS)),
                   columns=tuple(columns) if columns is not None else None)


def table_parts(name: str, warehouse: str) -> list[str]:
    """The parts of a dotted table name, each a plain identifier; UnsafeName otherwise."""
    if not isinstance(name, str) or not name:
        raise UnsafeName("the table name is empty")
    parts = name.split(".")
    patterns = [_PLAIN_PART] * len(parts)
    if warehouse == "bigquery":
        patterns = [_BIGQUERY_PROJECT if len(parts) == 3 and i == 0 else _BIGQUERY_PART for i in range(len(parts))]
    if not 1 <= len(parts) <= 3 or not all(p.fullmatch(part) for p, part in zip(patterns, parts, strict=True)):
        raise UnsafeName(f"{_shown(name)} is not a plain dotted table name (letters, digits and underscores"
                         f"{', hyphens in a project id' if warehouse == 'bigquery' else ''}; at most three parts)")
    return parts


def quote_table(name: str, warehouse: str) -> str:
    """The table name quoted the warehouse's way; UnsafeName when it is not a plain dotted name."""
    return ".".join(quote_identifier(part, warehouse) for part in table_parts(name, warehouse))


def quote_identifier(part: str, warehouse: str) -> str:
    """One plain identifier quoted: `x` in BigQuery; "X" in Snowflake and "x" in PostgreSQL and Redshift, the
    case each gives the name unquoted, so quoting changes nothing but safety."""
    if warehouse == "bigquery":
        return f"`{part}`"
    return f'"{part.upper() if warehouse == "snowflake" else part.lower()}"'


def select_sql(table: str, warehouse: str, rows: int, columns: Sequence[str] | None) -> str:
    """The one statement a read sends: `SELECT <columns or *> FROM <table> LIMIT rows+1` (the extra row says
    whether the table has more). UnsafeName for a name that is not plain."""
    if columns:
        bad = [c for c in columns if not COLUMN.fullmatch(c)]
        if bad:
            raise UnsafeName(f"column {_shown(bad[0])} is not a plain identifier")
        selected = ", ".join(quote_identifier(c, warehouse) for c in columns)
    else:
        selected = "*"
    return f"SELECT {selected} FROM {quote_table(table, warehouse)} LIMIT {int(rows) + 1}"


def bounded(table: str, rows: list[Any], schema: list[dict[str, Any]], wanted: int, max_bytes: int) -> dict[str, Any]:
    """The event's `result`: at most `wanted` rows, cut where the JSON would pass `max_bytes`; `truncated` when
    the table had more rows than were kept."""
    result: dict[str, Any] = {"table": table, "rows": [], "schema": schema, "truncated": False}
    size = _size(result)
    for index, row in enumerate(rows):
        if index >= wanted:
            result["truncated"] = True
            break
        cost = _size(row) + (1 if index else 0)  # the comma between rows
        if size + cost > max_bytes:
            result["truncated"] = True
            break
        result["rows"].append(row)
        size += cost
    return result


def failed(table: str | None, reason: str, message: str) -> dict[str, Any]:
    """The event's `result` when the read did not happen or failed."""
    return {"table": table, "error": {"reason": reason, "message": message[:_MESSAGE_CHARS]}}


def schema_of(answer: Mapping[str, Any], rows: list[Any]) -> list[dict[str, Any]]:
    """`[{name, type}]` from the answer's `schema` (CARTO's `/query`), else the first row's names, type unknown."""
    schema = answer.get("schema")
    if isinstance(schema, list) and all(isinstance(f, Mapping) and isinstance(f.get("name"), str) for f in schema):
        return [{"name": f["name"], "type": None if f.get("type") is None else str(f["type"])} for f in schema]
    first = rows[0] if rows and isinstance(rows[0], Mapping) else {}
    return [{"name": str(name), "type": None} for name in first]


def _as_object(row: Any, schema: list[dict[str, Any]]) -> dict[str, Any]:
    """A row as an object of column name to value (an array row is read in schema order)."""
    if isinstance(row, Mapping):
        return dict(row)
    if isinstance(row, list):
        return {field["name"]: value for field, value in zip(schema, row, strict=False)}
    return {"value": row}


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def _shown(name: str) -> str:
    """A refused name as an error message may show it: JSON-quoted and cut short."""
    return json.dumps(name[:80])


class Query(Protocol):
    """CARTO's synchronous `/query` within a time budget (`CartoClient.query`)."""

    def query(self, base_url: str, connection: str, sql: str, parameters: Any = None, *,
              workflow: str | None = None, budget_s: float | None = None) -> dict[str, Any]: ...


class ResultReader:
    """Reads a finished job's output rows for its event; `specs` gives each workflow's (ResultSpec, warehouse)."""

    def __init__(self, carto: Query, specs: Callable[[str], tuple[ResultSpec, str] | None], *,
                 budget_s: float = DEFAULT_BUDGET_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 now: Callable[[], float] = time.monotonic):
        self.carto, self.specs = carto, specs
        self.budget_s, self.max_bytes, self.now = budget_s, max_bytes, now

    def read(self, workflow: str, base_url: str, connection: str, output_table: str | None) -> dict[str, Any] | None:
        """The event's `result` for a job of `workflow` that ended SUCCEEDED; None when the workflow asks for none."""
        found = self.specs(workflow)
        if found is None:
            return None
        spec, warehouse = found
        table = spec.table or output_table
        if not table:
            return failed(None, "noOutputTable", "the job's answer names no output table "
                          "(jobMetadata.workflowOutputTableName) and the workflow file sets no result.table")
        started = self.now()
        try:
            sql = select_sql(table, warehouse, spec.rows, spec.columns)
        except UnsafeName as exc:
            return self._failed(workflow, table, "unsafeName", f"not read: {exc}")
        try:
            answer = self.carto.query(base_url, connection, sql, workflow=workflow, budget_s=self.budget_s)
        except Unavailable as exc:
            timed_out = isinstance(exc, QueryTimedOut) or "Timeout" in exc.detail
            return self._failed(workflow, table, "timeout" if timed_out else "unavailable", exc.detail)
        except GatewayError as exc:
            missing = isinstance(exc, NotFound) or _MISSING.search(exc.detail)
            return self._failed(workflow, table, "notFound" if missing else "refused", exc.detail)
        rows = answer.get("rows")
        if not isinstance(rows, list):
            return self._failed(workflow, table, "malformed", "CARTO's /query answer carries no rows")
        schema = schema_of(answer, rows)
        result = bounded(table, [_as_object(row, schema) for row in rows], schema, spec.rows, self.max_bytes)
        size, ms = _size(result), round((self.now() - started) * 1000)
        log.info("result read: %d rows, %d bytes, %d ms", len(result["rows"]), size, ms,
                 extra={"event": "result.read", "workflow": workflow, "rows": len(result["rows"]), "bytes": size,
                        "ms": ms})
        return result

    def _failed(self, workflow: str, table: str, reason: str, message: str) -> dict[str, Any]:
        log.warning("result not read: %s", reason, extra={"event": "result.failed", "workflow": workflow,
                                                          "reason": reason})
        return failed(table, reason, message)
