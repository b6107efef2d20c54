"""What each endpoint answers, independent of the HTTP server that carries it."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.local.sandbox.catalog import META, QueryRefused, answer
from gateway.local.sandbox.faults import Conditions, Fault, Faults, apply_conditions, fault_from_json
from gateway.local.sandbox.jobs import (
    WORKFLOWS,
    Outcome,
    SandboxJob,
    cancel,
    iso,
    peak_running,
    plan_job,
    wire,
    wire_parameters,
)
from gateway.local.sandbox.procedures import Procedure
from gateway.local.sandbox.store import JobStore
from gateway.local.sandbox.tables import Output, TableMissing, is_read, read


@dataclass(frozen=True)
class Response:
    """Status, JSON body and extra headers of one answer."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """CARTO's error body: `{"error": message, "status": status}`."""
    return Response(status, {"error": message, "status": status}, headers or {})


def fault_response(fault: Fault) -> Response:
    """The answer an error or rate_limit fault gives instead of the real one."""
    if fault.kind == "rate_limit":
        return error(429, "Too many requests", {"Retry-After": str(fault.retry_after)})
    if fault.status < 500:
        return error(fault.status, "Forbidden: the token may not read this table (sandbox fault)")
    return error(fault.status, "Service unavailable (sandbox fault)")


class SandboxApi:
    """The job API over a JobStore: submit, status, cancel, list, plus the admin endpoints."""

    def __init__(self, store: JobStore, faults: Faults, *, token: str | None,
                 procedures: Mapping[str, Procedure] | None, default_duration_s: float,
                 clock: Callable[[], float], dialect: str = WORKFLOWS, connections: frozenset[str] | None = None,
                 conditions: Conditions | None = None):
        self.store, self.faults, self.clock = store, faults, clock
        self.conditions = conditions or Conditions()
        self._refusal_s: float | None = None  # a `refuse` outage asked over HTTP, started once answered
        self.dialect, self.connections = dialect, connections
        self._token = token
        self._procedures = procedures
        self._default_duration_s = default_duration_s
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self.queries: list[dict[str, Any]] = []  # every /query statement received, oldest first

    def authorized(self, presented: str | None) -> bool:
        """Any caller when no token is configured; otherwise exactly that bearer token."""
        if self._token is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), self._token.encode())

    def count(self, route: str) -> None:
        with self._lock:
            self._requests[route] += 1

    def submit(self, connection: str, payload: Any, token: str | None, fault: Fault | None) -> Response:
        """Create a job; a mistyped CALL is accepted here and fails when polled, like BigQuery."""
        problem = _payload_problem(payload)
        if problem:
            return error(400, problem)
        if not self.known(connection):
            return self.unknown_connection(connection)
        retry_after = self.conditions.admit_creation()
        if retry_after is not None:
            return error(429, "Too many requests: job creation rate limit exceeded",
                         {"Retry-After": str(retry_after)})
        job = plan_job(
            "job_" + secrets.token_urlsafe(21), connection, payload["query"], payload.get("queryParameters") or {},
            procedures=self._procedures, default_duration_s=self._default_duration_s, now=self.clock(),
            metadata=payload.get("metadata"), forced=_outcome(fault))
        self.store.add(job)
        # The create answer is the job as accepted; even a mistyped CALL only shows its error when polled.
        return Response(200, wire(job, None, token, self.dialect))

    def known(self, connection: str) -> bool:
        """Every connection is known unless the sandbox was given its list."""
        return self.connections is None or connection in self.connections

    def unknown_connection(self, connection: str) -> Response:
        return error(404, f"Connection {connection} not found")

    def status(self, connection: str, external_id: str, token: str | None, fault: Fault | None = None) -> Response:
        """The job with its current state."""
        job = self.store.get(connection, external_id)
        if job is None:
            return error(404, f"Job {external_id} not found")
        return Response(200, _without_metadata(wire(job, self.clock(), token, self.dialect), fault))

    def cancel(self, connection: str, external_id: str, token: str | None) -> Response:
        """Cancel a job: unless already DONE it ends DONE with errorResult reason `stopped`."""
        now = self.clock()
        job = self.store.update(connection, external_id, lambda j: cancel(j, now))
        if job is None:
            return error(404, f"Job {external_id} not found")
        return Response(200, wire(job, now, token, self.dialect))

    def list(self, query: Mapping[str, str], fault: Fault | None = None) -> Response:
        """Jobs newest first, optionally of one `connection` and at most `limit`: `{"jobs": [...]}` in the
        Workflows dialect; in the SQL API's, a bare array of the jobs not yet ended (its reference says
        "a list of running jobs" and publishes no shape)."""
        jobs = list(reversed(self.store.all(query.get("connection"))))
        now = self.clock()
        if self.dialect != WORKFLOWS:
            jobs = [job for job in jobs if job.state(now) != "DONE"]
        limit = query.get("limit", "")
        if limit.isdigit():
            jobs = jobs[: int(limit)]
        listed = [_without_metadata(wire(job, now, None, self.dialect), fault) for job in jobs]
        return Response(200, listed if self.dialect != WORKFLOWS else {"jobs": listed})

    def query(self, connection: str, payload: Any) -> Response:
        """The synchronous `/query`: `{rows, schema, meta}` for the catalogue queries the sandbox knows and
        the bounded reads of its procedures' output tables."""
        if not self.known(connection):
            return self.unknown_connection(connection)
        if not isinstance(payload, dict) or not isinstance(payload.get("q"), str) or not payload["q"].strip():
            return error(400, "Missing q")
        if is_read(payload["q"]):
            try:
                return Response(200, {**read(payload["q"], self.tables()), "meta": dict(META)})
            except TableMissing as exc:
                return error(404, str(exc))
            except ValueError as exc:
                return error(400, str(exc))
        try:
            return Response(200, answer(payload["q"], payload.get("queryParameters"), self._procedures))
        except QueryRefused as exc:
            return error(400, str(exc))

    def note_query(self, connection: str, payload: Any) -> None:
        """Keep every statement `/query` receives (faulted ones too), so tests see all SQL that reached CARTO."""
        sql = payload.get("q") if isinstance(payload, dict) else None
        with self._lock:
            self.queries.append({"connection": connection, "q": sql})

    def tables(self) -> dict[str, Output]:
        """Every output table written so far: the fixed ones, and one per run of the others."""
        written: dict[str, Output] = {}
        for procedure in (self._procedures or {}).values():
            if procedure.output is not None and procedure.output.table:
                written[procedure.output.table] = procedure.output
        for job in self.store.all():
            procedure = (self._procedures or {}).get(job.procedure or "")
            if procedure is not None and procedure.output is not None:
                written[procedure.output.table_for(procedure.name, job.query_parameters)] = procedure.output
        return written

    def stats(self) -> dict[str, Any]:
        """Jobs created (total, per procedure, each with its parameters), requests per route, faults."""
        jobs = self.store.all()
        now = self.clock()
        with self._lock:
            requests = dict(self._requests)
        return {
            "jobs_created": len(jobs),
            "per_procedure": dict(Counter(job.procedure or "" for job in jobs)),
            "jobs": [_summary(job, now) for job in jobs],
            "requests": requests,
            "queries": list(self.queries),
            "faults": self.faults.pending(),
            "conditions": self.conditions.state(),
            "peak_running": peak_running(jobs),
        }

    def reset(self) -> None:
        """Forget every job, fault and request count."""
        self.store.clear()
        self.faults.clear()
        self.conditions.clear()
        with self._lock:
            self._requests.clear()
            self.queries.clear()

    def admin(self, method: str, path: str, payload: Any) -> Response:
        """`POST|DELETE /_sandbox/faults`, `POST|DELETE /_sandbox/conditions`, `GET /_sandbox/stats`,
        `POST /_sandbox/reset`."""
        if (method, path) == ("GET", "/_sandbox/stats"):
            return Response(200, self.stats())
        if (method, path) == ("POST", "/_sandbox/reset"):
            self.reset()
            return Response(200, {"reset": True})
        if (method, path) == ("DELETE", "/_sandbox/faults"):
            self.faults.clear()
            return Response(200, {"faults": []})
        if (method, path) == ("POST", "/_sandbox/faults"):
            return self._add_faults(payload)
        if (method, path) == ("DELETE", "/_sandbox/conditions"):
            self.conditions.clear()
            return Response(200, {"conditions": self.conditions.state()})
        if (method, path) == ("POST", "/_sandbox/conditions"):
            return self._set_conditions(payload)
        return error(404, f"No sandbox admin route {method} {path}")

    def _add_faults(self, payload: Any) -> Response:
        try:
            parsed = [fault_from_json(raw) for raw in (payload if isinstance(payload, list) else [payload])]
            for fault, count in parsed:
                self.faults.add(fault, count)
        except (ValueError, TypeError) as exc:
            return error(400, f"Bad fault: {exc}")
        return Response(200, {"faults": self.faults.pending()})


    def take_refusal(self) -> float | None:
        """The seconds of a `refuse` outage asked over HTTP and not yet started (the server closes its port
        after answering the request that asked for it)."""
        with self._lock:
            seconds, self._refusal_s = self._refusal_s, None
        return seconds

    def _set_conditions(self, payload: Any) -> Response:
        try:
            refuse_s = apply_conditions(self.conditions, payload)
        except (ValueError, TypeError) as exc:
            return error(400, f"Bad conditions: {exc}")
        with self._lock:
            self._refusal_s = refuse_s
        return Response(200, {"conditions": self.conditions.state()})


def _payload_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return "Body must be a JSON object"
    if not isinstance(payload.get("query"), str) or not payload["query"].strip():
        return "Missing query"
    if not isinstance(payload.get("queryParameters", {}), (dict, list, type(None))):
        return "queryParameters must be an object (named parameters) or an array (positional)"
    if not isinstance(payload.get("metadata", {}), (dict, type(None))):
        return "metadata must be an object"
    return None


def _without_metadata(body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    """A `drop_metadata` fault: the answer forgets the job's metadata, as a CARTO that does not keep it would."""
    if fault is not None and fault.kind == "drop_metadata":
        body.pop("metadata", None)
    return body


def _outcome(fault: Fault | None) -> Outcome | None:
    if fault is None or fault.kind not in ("fail_job", "never_finish"):
        return None
    return Outcome(error=fault.message if fault.kind == "fail_job" else None,
                   never_finish=fault.kind == "never_finish")


def _summary(job: SandboxJob, now: float) -> dict[str, Any]:
    return {"externalId": job.external_id, "connectionName": job.connection, "procedure": job.procedure,
            "query": job.query, "queryParameters": wire_parameters(job), "metadata": job.metadata,
            "createdAt": iso(job.created_at), "state": job.state(now)}
