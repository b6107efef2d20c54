"""Messages the gateway publishes: tracking messages and status-check tasks for `poll`, completion
CloudEvents (README, "Completion events").

Completion events use the CloudEvents Pub/Sub protocol binding in binary mode: context attributes
travel as `ce-` message attributes, the data is the JSON body
(https://github.com/googleapis/google-cloudevents/blob/main/docs/spec/pubsub.md). `ce-id` is
`{job_id}:{outcome}`, stable across redeliveries, so subscribers can de-duplicate; a delivery that
never got a job (superseded, cancelled or refused while queued, or unsubmitted at its deadline) has
`job_id: null` and the id `delivery-{sha256(key)[:32]}:{outcome}`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.carto import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT
from gateway.errors import PoisonMessage
from gateway.ledger import SUPERSEDED, Delivery

EVENT_TYPES = {
    SUCCEEDED: "com.carto.workflows.job.succeeded",
    FAILED: "com.carto.workflows.job.failed",
    TIMED_OUT: "com.carto.workflows.job.timed_out",
    CANCELLED: "com.carto.workflows.job.cancelled",
    SUPERSEDED: "com.carto.workflows.job.superseded",
}


@dataclass(frozen=True)
class Message:
    """A Pub/Sub message: bytes and string attributes."""

    data: bytes
    attributes: dict[str, str]


class Publisher(Protocol):
    """Publishes one message and waits until Pub/Sub has it; raises PublishUnavailable otherwise."""

    def publish(self, topic: str, message: Message) -> str: ...


@dataclass(frozen=True)
class Tracking:
    """The tracking message: what was submitted, for subscribers and operators. Never the token.

    `poll` reads only `key` and `job_id` from it: the job's endpoint, connection and deadline come
    from the ledger record, and a message whose job id is not the record's is refused."""

    key: str
    job_id: str
    workflow: str
    connection: str
    api_base_url: str
    submitted_at: float
    deadline_at: float
    delivery_id: str | None
    trace: str | None


def isoformat(timestamp: float) -> str:
    """RFC 3339 in UTC with milliseconds, as CloudEvents and the event schema expect."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tracking_message(delivery: Delivery) -> Message:
    """The message that starts (or re-drives) polling of a submitted job."""
    assert delivery.job_id is not None and delivery.submitted_at is not None and delivery.deadline_at is not None
    body = Tracking(key=delivery.key, job_id=delivery.job_id, workflow=delivery.workflow,
                    connection=delivery.connection, api_base_url=delivery.api_base_url,
                    submitted_at=delivery.submitted_at, deadline_at=delivery.deadline_at,
                    delivery_id=delivery.delivery_id, trace=delivery.trace)
    return Message(json.dumps(body.__dict__).encode(),
                   {"workflow": delivery.workflow, "job_id": delivery.job_id})


def parse_tracking(data: bytes) -> Tracking:
    """Read a tracking message; PoisonMessage when it is not one."""
    try:
        body = json.loads(data)
        tracking = Tracking(**{name: body[name] for name in Tracking.__dataclass_fields__})
        float(tracking.submitted_at), float(tracking.deadline_at)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"not a tracking message: {type(exc).__name__}") from None
    if not all(isinstance(v, str) and v for v in (tracking.key, tracking.job_id, tracking.workflow,
                                                   tracking.connection, tracking.api_base_url)):
        raise PoisonMessage("not a tracking message: missing fields")
    return tracking


CHECK_TYPE = "com.carto.workflows.job.check"


@dataclass(frozen=True)
class Check:
    """One scheduled status check of a job: the task body `poll` receives from Cloud Tasks.

    It names the delivery and its job (checked against the ledger record) and carries the progress
    so far, so a retried task resumes where it was: `checks` made, the `last_check_at` time, and
    `index`, the check's place on the geometric schedule, which names the task. `poll` bounds the
    progress by the record before using it (gateway/poller.py)."""

    key: str
    job_id: str
    checks: int
    last_check_at: float | None
    due_at: float
    index: int


def check_body(check: Check) -> bytes:
    """The task body: the delivery, its job, the progress and the due time."""
    return json.dumps(check.__dict__, separators=(",", ":")).encode()


def parse_check(data: bytes | Mapping[str, Any]) -> Check:
    """Read a check task's body (bytes, or the JSON functions-framework already parsed); PoisonMessage if not one.
    Other fields (the tracking fields earlier bodies carried) are ignored."""
    try:
        body = dict(data) if isinstance(data, Mapping) else json.loads(data)
        key, job_id = body["key"], body["job_id"]
        checks, index, due_at = _integer(body["checks"]), _integer(body["index"]), _number(body["due_at"])
        last = body.get("last_check_at")
        last_check_at = None if last is None else _number(last)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, AttributeError) as exc:
        raise PoisonMessage(f"not a check task: {type(exc).__name__}") from None
    if not (isinstance(key, str) and key and isinstance(job_id, str) and job_id):
        raise PoisonMessage("not a check task: missing fields")
    if checks < 0 or index < 0:
        raise PoisonMessage("not a check task: negative counts")
    return Check(key, job_id, checks, last_check_at, due_at, index)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError("not a finite number")
    return float(value)


def subject_of(delivery: Delivery) -> str:
    """The event's subject: the job id, or for a delivery without a job a stable id from its key."""
    if delivery.job_id:
        return delivery.job_id
    return f"delivery-{hashlib.sha256(delivery.key.encode()).hexdigest()[:32]}"


SUBMIT_TYPE = "com.carto.workflows.job.submit"


@dataclass(frozen=True)
class Handoff:
    """One submit hand-off of a queued delivery: the task body `poll` receives. Everything else is read
    from the ledger; `attempt` (the record's `attempts` when it was scheduled) names the task, so a task
    that finds the record moved on is recognised as stale."""

    key: str
    workflow: str
    attempt: int
    due_at: float


def handoff_body(handoff: Handoff) -> bytes:
    return json.dumps(handoff.__dict__, separators=(",", ":")).encode()


def parse_handoff(data: bytes | Mapping[str, Any]) -> Handoff:
    """Read a submit task's body (bytes, or JSON already parsed); PoisonMessage if it is not one."""
    try:
        body = dict(data) if isinstance(data, Mapping) else json.loads(data)
        handoff = Handoff(str(body["key"]), str(body["workflow"]), int(body["attempt"]), float(body["due_at"]))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, AttributeError) as exc:
        raise PoisonMessage(f"not a submit task: {type(exc).__name__}") from None
    if not handoff.key or handoff.attempt < 0:
        raise PoisonMessage("not a submit task: no key or a negative attempt")
    return handoff


def completion_event(delivery: Delivery, *, source: str) -> Message:
    """The one CloudEvent that says how a finished delivery ended (with its job, or without one)."""
    assert delivery.outcome in EVENT_TYPES and delivery.finished_at is not None
    data = event_data(delivery)
    subject = subject_of(delivery)
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": f"{subject}:{delivery.outcome}",
        "ce-source": source,
        "ce-type": EVENT_TYPES[delivery.outcome],
        "ce-time": isoformat(delivery.finished_at),
        "ce-subject": subject,
        "content-type": "application/json",
        "workflow": delivery.workflow,
        "outcome": delivery.outcome,
    }
    if delivery.job_id:
        attributes["job_id"] = delivery.job_id
    if delivery.trace:
        attributes["trace"] = delivery.trace
    return Message(json.dumps(data, separators=(",", ":")).encode(), attributes)


def queued_s(delivery: Delivery) -> float:
    """Acceptance to submission (to the end, for a delivery that never got a job); 0 when submitted inline."""
    if delivery.queued_at is None:
        return 0.0
    until = delivery.submitted_at if delivery.submitted_at is not None else delivery.finished_at
    return round(max(0.0, (until if until is not None else delivery.queued_at) - delivery.created_at), 3)


def event_data(delivery: Delivery) -> dict[str, Any]:
    """The event's data, valid against schemas/job-event.schema.json."""
    submitted = delivery.submitted_at if delivery.submitted_at is not None else delivery.created_at
    finished = delivery.finished_at if delivery.finished_at is not None else submitted
    return {
        "job_id": delivery.job_id,
        "workflow": delivery.workflow,
        "outcome": delivery.outcome,
        "state": delivery.carto_state,
        "error": delivery.error,
        "delivery_id": delivery.delivery_id,
        "trace": delivery.trace,
        "submitted_at": isoformat(submitted),
        "finished_at": isoformat(finished),
        "duration_s": round(max(0.0, finished - submitted), 3),
        "checks": delivery.checks,
        "parameters": delivery.parameters,
        **({"result": delivery.result} if delivery.result is not None else {}),
        "queued_s": queued_s(delivery),
        "superseded_by": delivery.superseded_by,
    }


def event_source(project: str) -> str:
    """The CloudEvents `source` of this deployment's events."""
    return f"//carto-workflows-gateway/projects/{project}"


def attributes_of(message: Mapping[str, Any]) -> dict[str, str]:
    """Attributes of a Pub/Sub message as delivered inside a CloudEvent's data."""
    attributes = message.get("attributes") or {}
    return {str(k): str(v) for k, v in attributes.items()} if isinstance(attributes, Mapping) else {}
