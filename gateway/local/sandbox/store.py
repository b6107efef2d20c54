"""The sandbox's jobs in SQLite: a file, or ":memory:" private to one server."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from gateway.local.sandbox.binding import ErrorResult
from gateway.local.sandbox.jobs import SandboxJob

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    external_id TEXT PRIMARY KEY,
    connection  TEXT NOT NULL,
    query       TEXT NOT NULL,
    parameters  TEXT NOT NULL,
    procedure   TEXT,
    created_at  REAL NOT NULL,
    run_at      REAL NOT NULL,
    done_at     REAL,              -- NULL: never finishes
    error       TEXT,              -- errorResult JSON
    metadata    TEXT,
    cancelled   INTEGER NOT NULL DEFAULT 0,
    warehouse   TEXT NOT NULL DEFAULT 'bigquery',
    output_table TEXT
)
"""
_COLUMNS = ("external_id, connection, query, parameters, procedure, created_at, run_at, done_at, error, metadata, "
            "cancelled, warehouse, output_table")


class JobStore:
    """Jobs keyed by externalId; one connection behind a lock, shared by the server's threads."""

    def __init__(self, path: str = ":memory:"):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute(_SCHEMA)
        if "output_table" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN output_table TEXT")  # a file made before it

    def add(self, job: SandboxJob) -> None:
        """Store a new job."""
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", _row(job))

    def get(self, connection: str, external_id: str) -> SandboxJob | None:
        """The job, when it exists on that connection."""
        with self._lock:
            return self._get(connection, external_id)

    def update(self, connection: str, external_id: str,
               change: Callable[[SandboxJob], SandboxJob]) -> SandboxJob | None:
        """Apply `change` to a job atomically; None when there is no such job."""
        with self._lock:
            job = self._get(connection, external_id)
            if job is None:
                return None
            changed = change(job)
            assignments = ", ".join(f"{column} = ?" for column in _COLUMNS.split(", "))
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE external_id = ?", (*_row(changed), external_id))
            return changed

    def all(self, connection: str | None = None) -> list[SandboxJob]:
        """Every job (of one connection, if given), oldest first."""
        sql, args = f"SELECT {_COLUMNS} FROM jobs", ()
        if connection is not None:
            sql, args = sql + " WHERE connection = ?", (connection,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at, rowid", args).fetchall()
        return [_job(row) for row in rows]

    def clear(self) -> None:
        """Forget every job."""
        with self._lock:
            self._db.execute("DELETE FROM jobs")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _get(self, connection: str, external_id: str) -> SandboxJob | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE external_id = ? AND connection = ?",
                               (external_id, connection)).fetchone()
        return _job(row) if row else None


def _row(job: SandboxJob) -> tuple:
    error = json.dumps(job.error_result.__dict__) if job.error_result else None
    return (job.external_id, job.connection, job.query, json.dumps(_parameters(job.query_parameters)), job.procedure,
            job.created_at, job.run_at, job.done_at if math.isfinite(job.done_at) else None, error,
            json.dumps(dict(job.metadata)) if job.metadata is not None else None, int(job.cancelled), job.warehouse,
            job.output_table)


def _job(row: tuple) -> SandboxJob:
    (external_id, connection, query, parameters, procedure, created_at, run_at, done_at, error, metadata,
     cancelled, warehouse, output_table) = row
    return SandboxJob(
        external_id=external_id, connection=connection, query=query, query_parameters=json.loads(parameters),
        procedure=procedure, created_at=created_at, run_at=run_at,
        done_at=math.inf if done_at is None else done_at,
        error_result=ErrorResult(**json.loads(error)) if error else None,
        metadata=json.loads(metadata) if metadata is not None else None, cancelled=bool(cancelled),
        warehouse=warehouse, output_table=output_table)


def _parameters(parameters: Any) -> Any:
    return list(parameters) if isinstance(parameters, list) else dict(parameters)
