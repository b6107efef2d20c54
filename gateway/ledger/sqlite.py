"""The embedded ledger store: one SQLite file, the default for local runs and tests."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import gateway.ledger.moves as moves
from gateway.errors import LedgerUnavailable
from gateway.ledger.moves import Workspace
from gateway.ledger.records import CLAIMED, FINISHED, SUBMITTED, TRACKED, Admitted, Claim, Delivery, DeliveryQuery
from gateway.ledger.slots import Line, Rule

T = TypeVar("T")
_COLUMNS = tuple(Delivery.__dataclass_fields__)
_JSON_COLUMNS = {"parameters", "error", "actions", "result", "last_answer", "handed_to", "parameter_sources"}
_BOOL_COLUMNS = ("published", "unknown", "capped")
# Columns added after the first release: a ledger file made before them gains them on open.
_ADDED_COLUMNS = {"tracked_at": "REAL", "published_at": "REAL", "rerun_of": "TEXT", "actions": "TEXT",
                  "result": "TEXT", "queued_at": "REAL", "queue_reason": "TEXT", "hand_off_at": "REAL",
                  "attempts": "INTEGER NOT NULL DEFAULT 0", "last_answer": "TEXT", "unknown": "INTEGER NOT NULL DEFAULT 0",
                  "capped": "INTEGER NOT NULL DEFAULT 0", "superseded_by": "TEXT", "handed_to": "TEXT",
                  "parameter_sources": "TEXT"}


class SqliteLedger:
    """The embedded ledger: one SQLite file, WAL mode, a connection per thread."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._guard():
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
            self._db.executescript(_INDEXES)

    def _add_missing_columns(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE deliveries ADD COLUMN {column} {kind}")

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def _guard(self) -> _Guard:
        return _Guard()

    def claim(self, delivery: Delivery) -> Claim:
        stored = replace(delivery, updated_at=delivery.created_at)
        row = _to_row(stored)
        with self._guard():
            cursor = self._db.execute(
                f"INSERT INTO deliveries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                "ON CONFLICT(key) DO NOTHING", [row[c] for c in _COLUMNS])
            if cursor.rowcount == 1:
                return Claim(True, stored)
            existing = self._get(delivery.key)
        if existing is None:  # released between our insert and read: try once more
            return self.claim(delivery)
        return Claim(False, existing)

    def get(self, key: str) -> Delivery | None:
        with self._guard():
            return self._get(key)

    def _get(self, key: str) -> Delivery | None:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM deliveries WHERE key = ?", (key,)).fetchone()
        return _from_row(row) if row else None

    def find_job(self, job_id: str) -> Delivery | None:
        with self._guard():
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM deliveries WHERE job_id = ?", (job_id,)).fetchone()
        return _from_row(row) if row else None

    def release(self, key: str, claim_token: str) -> bool:
        with self._guard():
            cursor = self._db.execute("DELETE FROM deliveries WHERE key = ? AND claim_token = ? AND state = ? "
                                      "AND capped = 0", (key, claim_token, CLAIMED))
        if cursor.rowcount == 1:
            return True
        record = self.get(key)
        if record is None or not record.capped:
            return False
        return self._move(lambda ws: moves.release(ws, key, claim_token))

    def take_over(self, key: str, claim_token: str, new_token: str, now: float) -> bool:
        return self._update("claim_token = ?, updated_at = ?", (new_token, now),
                            "key = ? AND claim_token = ? AND state = ?", (key, claim_token, CLAIMED))

    def mark_submitted(self, key: str, claim_token: str, job_id: str, submitted_at: float,
                       deadline_at: float, now: float) -> bool:
        return self._update("state = ?, job_id = ?, submitted_at = ?, deadline_at = ?, updated_at = ?, "
                            "hand_off_at = NULL, unknown = 0", (SUBMITTED, job_id, submitted_at, deadline_at, now),
                            "key = ? AND claim_token = ? AND state = ?", (key, claim_token, CLAIMED))

    def mark_tracked(self, key: str, now: float) -> None:
        # Also refreshes a tracked record, so a re-drive by the sweeper is not repeated every sweep.
        self._update("state = ?, updated_at = ?, tracked_at = COALESCE(tracked_at, ?)", (TRACKED, now, now),
                     "key = ? AND state IN (?, ?)", (key, SUBMITTED, TRACKED))

    def finish(self, key: str, outcome: str, carto_state: str | None, error: dict[str, Any] | None,
               checks: int, finished_at: float, result: dict[str, Any] | None = None) -> Delivery:
        self._update("state = ?, outcome = ?, carto_state = ?, error = ?, checks = ?, finished_at = ?, updated_at = ?, "
                     "result = ?",
                     (FINISHED, outcome, carto_state, json.dumps(error), checks, finished_at, finished_at,
                      json.dumps(result)),
                     "key = ? AND outcome IS NULL AND capped = 0", (key,))
        record = self.get(key)
        if record is not None and record.capped and record.outcome is None:  # its slot is handed on with it
            record = self._move(lambda ws: moves.finish(ws, key, outcome, carto_state, error, checks, finished_at,
                                                         result))
        if record is None:
            raise LedgerUnavailable(f"ledger record {key} vanished")
        return record

    # Admission: each move reads and writes records and lines in one BEGIN IMMEDIATE transaction.

    def claim_admitted(self, delivery: Delivery, rule: Rule, now: float) -> Admitted:
        return self._move(lambda ws: moves.claim_admitted(ws, delivery, rule, now))

    def queue(self, key: str, claim_token: str, *, reason: str, hand_off_at: float, answer: dict[str, Any] | None,
              unknown: bool, now: float) -> bool:
        return self._move(lambda ws: moves.queue(ws, key, claim_token, reason=reason, hand_off_at=hand_off_at,
                                                 answer=answer, unknown=unknown, now=now))

    def dequeue(self, key: str, attempt: int, new_token: str, now: float) -> Delivery | None:
        return self._move(lambda ws: moves.dequeue(ws, key, attempt, new_token, now))

    def reschedule(self, key: str, attempt: int, hand_off_at: float, now: float) -> Delivery | None:
        return self._move(lambda ws: moves.reschedule(ws, key, attempt, hand_off_at, now))

    def end_queued(self, key: str, outcome: str, error: dict[str, Any] | None, now: float, *,
                   claim_token: str | None = None) -> Delivery | None:
        return self._move(lambda ws: moves.end_queued(ws, key, outcome, error, now, claim_token=claim_token))

    def refill(self, workflow: str, rule: Rule, now: float) -> list[str]:
        return self._move(lambda ws: moves.refill(ws, workflow, rule, now))

    def line(self, workflow: str) -> Line | None:
        with self._guard():
            return self._line(workflow)

    def _line(self, workflow: str) -> Line | None:
        row = self._db.execute("SELECT line FROM admission WHERE workflow = ?", (workflow,)).fetchone()
        return Line.from_dict(json.loads(row[0])) if row else None

    def _move(self, move: Callable[[Workspace], T]) -> T:
        """Run a move of gateway/ledger/moves.py in one write transaction (BEGIN IMMEDIATE takes the
        write lock first, so two processes' moves on one line run one after the other)."""
        with self._guard():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                workspace = Workspace(self._get, self._line)
                result = move(workspace)
                for key, record in workspace.records.items():
                    if record is None:
                        db.execute("DELETE FROM deliveries WHERE key = ?", (key,))
                    else:
                        row = _to_row(record)
                        db.execute(f"INSERT OR REPLACE INTO deliveries ({', '.join(_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' * len(_COLUMNS))})", [row[c] for c in _COLUMNS])
                for line in workspace.lines.values():
                    db.execute("INSERT OR REPLACE INTO admission (workflow, line) VALUES (?, ?)",
                               (line.workflow, json.dumps(line.as_dict())))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return result

    def note_checks(self, key: str, checks: int, last_check_at: float, next_check_at: float | None = None) -> None:
        updated_at = last_check_at if next_check_at is None else next_check_at
        self._update("checks = ?, last_check_at = ?, updated_at = ?", (checks, last_check_at, updated_at),
                     "key = ? AND outcome IS NULL AND checks <= ?", (key, checks))

    def mark_published(self, key: str, now: float) -> None:
        self._update("published = 1, updated_at = ?, published_at = COALESCE(published_at, ?)", (now, now),
                     "key = ?", (key,))

    def recent(self, query: DeliveryQuery) -> list[Delivery]:
        where, args = [], []
        for column in ("workflow", "outcome", "state"):
            if getattr(query, column) is not None:
                where.append(f"{column} = ?")
                args.append(getattr(query, column))
        if query.since is not None:
            where.append("created_at >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("created_at < ?")
            args.append(query.until)
        if query.after is not None:
            where.append("(created_at < ? OR (created_at = ? AND key < ?))")
            args.extend((query.after[0], query.after[0], query.after[1]))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._guard():
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM deliveries {clause}"
                                    "ORDER BY created_at DESC, key DESC LIMIT ?", (*args, query.limit)).fetchall()
        return [_from_row(r) for r in rows]

    def find_delivery(self, delivery_id: str, limit: int = 20) -> list[Delivery]:
        with self._guard():
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM deliveries WHERE delivery_id = ? "
                                    "ORDER BY created_at DESC, key DESC LIMIT ?", (delivery_id, limit)).fetchall()
        return [_from_row(r) for r in rows]

    def note_action(self, key: str, action: dict[str, Any]) -> bool:
        # json_insert appends in the one UPDATE statement: two operators' actions cannot overwrite each other.
        return self._update("actions = json_insert(COALESCE(actions, '[]'), '$[#]', json(?))", (json.dumps(action),),
                            "key = ?", (key,))

    def stale(self, updated_before: float, limit: int = 100) -> list[Delivery]:
        with self._guard():
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM deliveries WHERE updated_at < ? "
                "AND NOT (state = ? AND published = 1) ORDER BY updated_at LIMIT ?",
                (updated_before, FINISHED, limit)).fetchall()
        return [_from_row(r) for r in rows]

    def purge_expired(self, now: float) -> int:
        """Delete records past their retention (Firestore's TTL policy does this in the cloud)."""
        with self._guard():
            return self._db.execute("DELETE FROM deliveries WHERE expires_at < ?", (now,)).rowcount

    def _update(self, assignments: str, values: Iterable[Any], where: str, args: Iterable[Any]) -> bool:
        with self._guard():
            cursor = self._db.execute(f"UPDATE deliveries SET {assignments} WHERE {where}", (*values, *args))
        return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


class _Guard:
    """Turns SQLite's operational errors (locked, disk full, unreadable) into an honest 503."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> bool:
        # Locked, busy, disk full, unreadable: the ledger is unavailable. IntegrityError and
        # ProgrammingError are bugs and stay what they are.
        bug = isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError))
        if isinstance(exc, sqlite3.DatabaseError) and not bug:
            raise LedgerUnavailable(f"the ledger is unavailable ({type(exc).__name__})") from None
        return False


def _to_row(delivery: Delivery) -> dict[str, Any]:
    row = {column: getattr(delivery, column) for column in _COLUMNS}  # shallow: the JSON columns are dumped
    for column in _JSON_COLUMNS:
        row[column] = json.dumps(row[column])
    for column in _BOOL_COLUMNS:
        row[column] = int(row[column])
    return row


def _from_row(row: tuple[Any, ...]) -> Delivery:
    data = dict(zip(_COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        data[column] = json.loads(data[column]) if data[column] else _empty(column)
    for column in _BOOL_COLUMNS:
        data[column] = bool(data[column])
    return Delivery.from_dict(data)


def _empty(column: str) -> Any:
    return {} if column == "parameters" else [] if column in ("actions", "handed_to") else None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY, workflow TEXT NOT NULL, idempotency_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    claim_token TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL,
    updated_at REAL NOT NULL, delivery_id TEXT, trace TEXT, connection TEXT, api_base_url TEXT, query TEXT,
    parameters TEXT, job_id TEXT, submitted_at REAL, deadline_at REAL, outcome TEXT, carto_state TEXT,
    error TEXT, checks INTEGER NOT NULL DEFAULT 0, last_check_at REAL, finished_at REAL, published INTEGER NOT NULL DEFAULT 0
);
"""
_INDEXES = """
CREATE TABLE IF NOT EXISTS admission (workflow TEXT PRIMARY KEY, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id);
CREATE INDEX IF NOT EXISTS deliveries_updated ON deliveries (updated_at);
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries (created_at DESC, key DESC);
CREATE INDEX IF NOT EXISTS deliveries_delivery_id ON deliveries (delivery_id);
"""
