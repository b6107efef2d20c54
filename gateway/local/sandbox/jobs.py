"""A sandbox job: how it is planned at submit time, its state at any instant, its wire form (pure)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.local.sandbox.binding import (
    ErrorResult,
    cancelled,
    check_call,
    not_found,
    parse_call,
)
from gateway.local.sandbox.families import check_positional, family_of_call
from gateway.local.sandbox.families import not_found as positional_not_found
from gateway.local.sandbox.procedures import Procedure

PENDING_SHARE = 0.2  # the first fifth of a job's run time is spent PENDING, the rest RUNNING


@dataclass(frozen=True)
class SandboxJob:
    """One submitted job as the sandbox stores it; times are epoch seconds, `done_at` inf = never."""

    external_id: str
    connection: str
    query: str
    query_parameters: Mapping[str, Any] | list[Any]
    procedure: str | None
    created_at: float
    run_at: float
    done_at: float
    error_result: ErrorResult | None = None
    metadata: Mapping[str, Any] | None = None
    cancelled: bool = field(default=False)
    warehouse: str = "bigquery"
    output_table: str | None = None  # announced at jobMetadata.workflowOutputTableName

    def state(self, now: float) -> str:
        """PENDING, RUNNING or DONE at `now`."""
        if now >= self.done_at:
            return "DONE"
        return "RUNNING" if now >= self.run_at else "PENDING"


@dataclass(frozen=True)
class Outcome:
    """A forced outcome from an injected fault: fail with `error`, or never finish."""

    error: str | None = None
    never_finish: bool = False


def plan_job(external_id: str, connection: str, query: str, parameters: Mapping[str, Any] | list[Any], *,
             procedures: Mapping[str, Procedure] | None, default_duration_s: float, now: float,
             metadata: Mapping[str, Any] | None = None, forced: Outcome | None = None) -> SandboxJob:
    """The job a submit creates: checked like BigQuery would, timed by its procedure or the default."""
    call = parse_call(query)
    procedure = _procedure(call.procedure if call else None, procedures)
    warehouse = procedure.warehouse if procedure is not None else family_of_call(query)
    rejected = _rejection(query, call, parameters, procedures, procedure, warehouse)
    output = procedure.output if procedure is not None else None
    announced = output.table_for(procedure.name, parameters) if output is not None and output.named else None
    base = {"external_id": external_id, "connection": connection, "query": query,
            "query_parameters": list(parameters) if isinstance(parameters, list) else dict(parameters),
            "procedure": call.procedure if call else None, "created_at": now, "metadata": metadata,
            "warehouse": warehouse, "output_table": announced}
    if rejected:  # BigQuery rejects a mistyped CALL while compiling it: the job ends at once
        return SandboxJob(**base, run_at=now, done_at=now, error_result=rejected)
    duration = _duration(procedure, default_duration_s, forced)
    pending = PENDING_SHARE * (duration if math.isfinite(duration) else default_duration_s)
    message = forced.error if forced and forced.error else (procedure.error if procedure else None)
    return SandboxJob(**base, run_at=now + pending, done_at=now + duration,
                      error_result=ErrorResult("invalidQuery", message) if message else None)


def _procedure(name: str | None, procedures: Mapping[str, Procedure] | None) -> Procedure | None:
    return procedures.get(name) if name is not None and procedures is not None else None


def _rejection(query: str, call: Any, parameters: Any, procedures: Mapping[str, Procedure] | None,
               procedure: Procedure | None, warehouse: str) -> ErrorResult | None:
    if call is None:
        return None  # not a CALL: the sandbox runs any other statement unchecked
    signature = procedure.parameters if procedure else None
    if warehouse != "bigquery":
        if procedures is not None and procedure is None:
            return positional_not_found(warehouse, call.procedure, len(call.arguments))
        return check_positional(warehouse, call, parameters, signature, call.procedure)
    if procedures is not None and procedure is None:
        return not_found(call.procedure)
    if isinstance(parameters, list):
        return ErrorResult("invalidQuery", "Query error: BigQuery takes named parameters: queryParameters must be "
                                           "an object (sandbox check)")
    return check_call(query, call, parameters, signature)


def _duration(procedure: Procedure | None, default_s: float, forced: Outcome | None) -> float:
    if forced and forced.never_finish:
        return math.inf
    if procedure is not None and procedure.duration_s is not None:
        return procedure.duration_s
    return default_s


def peak_running(jobs: Iterable[SandboxJob]) -> dict[str, int]:
    """Per procedure ("" for a statement that is not a CALL), the most jobs that were running at once:
    created and not yet DONE (a PENDING job is queued at the warehouse, so it counts)."""
    edges: dict[str, list[tuple[float, int]]] = {}
    for job in jobs:
        if job.done_at > job.created_at:  # a CALL rejected while compiling never ran
            edges.setdefault(job.procedure or "", []).extend(((job.created_at, 1), (job.done_at, -1)))
    peaks: dict[str, int] = {}
    for procedure, changes in edges.items():
        running = peak = 0
        for _, change in sorted(changes):  # at one instant an end (-1) sorts before a start (+1)
            running += change
            peak = max(peak, running)
        peaks[procedure] = peak
    return peaks


def cancel(job: SandboxJob, now: float) -> SandboxJob:
    """The job after a cancel request: a job not yet DONE ends now, stopped; a DONE job is unchanged."""
    if job.state(now) == "DONE":
        return job
    return dataclasses.replace(job, done_at=now, run_at=min(job.run_at, now), error_result=cancelled(),
                               cancelled=True)


def iso(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, as CARTO writes timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


WORKFLOWS, SQL_API = "workflows", "sql-api"
DIALECTS = (WORKFLOWS, SQL_API)
_FLAT = {"PENDING": "pending", "RUNNING": "running"}


def wire(job: SandboxJob, now: float | None, token: str | None = None, dialect: str = WORKFLOWS) -> dict[str, Any]:
    """The job object of the HTTP API at `now` (None: as just submitted, PENDING), in `dialect`; `token`
    is echoed like CARTO."""
    state = "PENDING" if now is None else job.state(now)
    body = _sql_api(job, state) if dialect == SQL_API else _workflows(job, state)
    if job.metadata is not None:
        body["metadata"] = dict(job.metadata)
    if job.output_table is not None:  # as a workflow with an Async "MCP Tool Output" answers, in both dialects
        body["jobMetadata"] = {"workflowOutputTableName": job.output_table}
    if token is not None:
        body["token"] = token
    return body


def _workflows(job: SandboxJob, state: str) -> dict[str, Any]:
    """The Workflows page's shape: `externalId`, `status: {state, errorResult}`."""
    status: dict[str, Any] = {"state": state}
    if state == "DONE" and job.error_result is not None:
        status["errorResult"] = job.error_result.as_dict()
    return {"externalId": job.external_id, "connectionName": job.connection, "query": job.query,
            "queryParameters": wire_parameters(job), "createdAt": iso(job.created_at), "status": status}


def _sql_api(job: SandboxJob, state: str) -> dict[str, Any]:
    """The CARTO 3 SQL API reference's shape: `jobId`, flat lower-case `status`, `error: {code, msg}`."""
    failed = state == "DONE" and job.error_result is not None
    flat = _FLAT.get(state) or ("failure" if failed else "success")
    changed = {"PENDING": job.created_at, "RUNNING": job.run_at}.get(state, job.done_at)
    body: dict[str, Any] = {"jobId": job.external_id, "connection": job.connection, "user": "sandbox-user",
                            "query": job.query, "queryParameters": wire_parameters(job), "status": flat,
                            "createdAt": iso(job.created_at),
                            "updatedAt": iso(changed if math.isfinite(changed) else job.created_at),
                            "provider": {"warehouse": job.warehouse}}
    if failed:
        assert job.error_result is not None
        body["error"] = {"code": job.error_result.reason, "msg": job.error_result.message}
    return body


def wire_parameters(job: SandboxJob) -> Any:
    parameters = job.query_parameters
    return list(parameters) if isinstance(parameters, list) else dict(parameters)
