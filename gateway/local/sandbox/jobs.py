"""A sandbox job: how it is planned at submit time, its state at any instant, its wire form (pure)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
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
from gateway.local.sandbox.procedures import Procedure

PENDING_SHARE = 0.2  # the first fifth of a job's run time is spent PENDING, the rest RUNNING


@dataclass(frozen=True)
class SandboxJob:
    """One submitted job as the sandbox stores it; times are epoch seconds, `done_at` inf = never."""

    external_id: str
    connection: str
    query: str
    query_parameters: Mapping[str, Any]
    procedure: str | None
    created_at: float
    run_at: float
    done_at: float
    error_result: ErrorResult | None = None
    metadata: Mapping[str, Any] | None = None
    cancelled: bool = field(default=False)

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


def plan_job(external_id: str, connection: str, query: str, parameters: Mapping[str, Any], *,
             procedures: Mapping[str, Procedure] | None, default_duration_s: float, now: float,
             metadata: Mapping[str, Any] | None = None, forced: Outcome | None = None) -> SandboxJob:
    """The job a submit creates: checked like BigQuery would, timed by its procedure or the default."""
    call = parse_call(query)
    procedure = _procedure(call.procedure if call else None, procedures)
    rejected = _rejection(query, call, parameters, procedures, procedure)
    base = {"external_id": external_id, "connection": connection, "query": query,
            "query_parameters": dict(parameters), "procedure": call.procedure if call else None,
            "created_at": now, "metadata": metadata}
    if rejected:  # BigQuery rejects a mistyped CALL while compiling it: the job ends at once
        return SandboxJob(**base, run_at=now, done_at=now, error_result=rejected)
    duration = _duration(procedure, default_duration_s, forced)
    pending = PENDING_SHARE * (duration if math.isfinite(duration) else default_duration_s)
    message = forced.error if forced and forced.error else (procedure.error if procedure else None)
    return SandboxJob(**base, run_at=now + pending, done_at=now + duration,
                      error_result=ErrorResult("invalidQuery", message) if message else None)


def _procedure(name: str | None, procedures: Mapping[str, Procedure] | None) -> Procedure | None:
    return procedures.get(name) if name is not None and procedures is not None else None


def _rejection(query: str, call: Any, parameters: Mapping[str, Any],
               procedures: Mapping[str, Procedure] | None, procedure: Procedure | None) -> ErrorResult | None:
    if call is None:
        return None  # not a CALL: the sandbox runs any other statement unchecked
    if procedures is not None and procedure is None:
        return not_found(call.procedure)
    return check_call(query, call, parameters, procedure.parameters if procedure else None)


def _duration(procedure: Procedure | None, default_s: float, forced: Outcome | None) -> float:
    if forced and forced.never_finish:
        return math.inf
    if procedure is not None and procedure.duration_s is not None:
        return procedure.duration_s
    return default_s


def cancel(job: SandboxJob, now: float) -> SandboxJob:
    """The job after a cancel request: a job not yet DONE ends now, stopped; a DONE job is unchanged."""
    if job.state(now) == "DONE":
        return job
    return dataclasses.replace(job, done_at=now, run_at=min(job.run_at, now), error_result=cancelled(),
                               cancelled=True)


def iso(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, as CARTO writes timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wire(job: SandboxJob, now: float | None, token: str | None = None) -> dict[str, Any]:
    """The job object of the HTTP API at `now` (None: as just submitted, PENDING); `token` is echoed like CARTO."""
    state = "PENDING" if now is None else job.state(now)
    status: dict[str, Any] = {"state": state}
    if state == "DONE" and job.error_result is not None:
        status["errorResult"] = job.error_result.as_dict()
    body: dict[str, Any] = {
        "externalId": job.external_id,
        "connectionName": job.connection,
        "query": job.query,
        "queryParameters": dict(job.query_parameters),
        "createdAt": iso(job.created_at),
        "status": status,
    }
    if job.metadata is not None:
        body["metadata"] = dict(job.metadata)
    if token is not None:
        body["token"] = token
    return body
