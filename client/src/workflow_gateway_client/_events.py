"""`parse_event`: a completion event from whatever a subscriber was handed.

The gateway publishes one CloudEvent per finished job on its events topic, in the Pub/Sub binding's
binary mode (https://github.com/googleapis/google-cloudevents/blob/main/docs/spec/pubsub.md): the
context travels as `ce-` attributes, beside plain `workflow`, `outcome` and `job_id` attributes for
subscription filters; the data is JSON, described by the gateway's `schemas/job-event.schema.json`.
`FIELDS` below restates that schema's properties (the gateway's suite checks they agree), so the
client needs no JSON Schema library. Fields the schema may gain later are ignored, not refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from workflow_gateway_client.errors import MalformedEvent

OUTCOMES = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", "SUPERSEDED")
WORKFLOW_PATTERN = "^[a-z0-9][a-z0-9-]{0,62}$"
# Each property of the event's data: the JSON types it may have, and whether it is required.
FIELDS: Mapping[str, tuple[frozenset[str], bool]] = MappingProxyType({
    "job_id": (frozenset({"string", "null"}), True),
    "workflow": (frozenset({"string"}), True),
    "outcome": (frozenset({"string"}), True),
    "state": (frozenset({"string", "null"}), True),
    "error": (frozenset({"object", "null"}), True),
    "delivery_id": (frozenset({"string", "null"}), True),
    "trace": (frozenset({"string", "null"}), False),
    "submitted_at": (frozenset({"string"}), True),
    "finished_at": (frozenset({"string"}), True),
    "duration_s": (frozenset({"number"}), True),
    "checks": (frozenset({"integer"}), True),
    "parameters": (frozenset({"object"}), True),
    "queued_s": (frozenset({"number"}), True),
    "superseded_by": (frozenset({"string", "null"}), False),
    "result": (frozenset({"object"}), False),
})
# The `result` object: the rows read, or why they were not (property -> (JSON types, required)).
RESULT_FIELDS: Mapping[str, tuple[frozenset[str], bool]] = MappingProxyType({
    "table": (frozenset({"string"}), True),
    "rows": (frozenset({"array"}), True),
    "schema": (frozenset({"array"}), True),
    "truncated": (frozenset({"boolean"}), True),
})
RESULT_ERROR_FIELDS: Mapping[str, tuple[frozenset[str], bool]] = MappingProxyType({
    "table": (frozenset({"string", "null"}), True),
    "error": (frozenset({"object"}), True),
})
# The `error` object: property -> (JSON types, required).
ERROR_FIELDS: Mapping[str, tuple[frozenset[str], bool]] = MappingProxyType({
    "reason": (frozenset({"string", "null"}), False),
    "location": (frozenset({"string", "null"}), False),
    "message": (frozenset({"string"}), True),
})


@dataclass(frozen=True)
class JobError:
    """Why CARTO says the job failed (its `errorResult`)."""

    message: str
    reason: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class Column:
    """One column of a result: its name and the warehouse's type name (None when CARTO gave none)."""

    name: str
    type: str | None


@dataclass(frozen=True)
class JobResult:
    """The workflow's answer: the first rows of the table its run wrote, or why they could not be read.

    `rows` are mappings of column name to value; `truncated` says the table has more than the event
    carries. When the read failed, `rows` is empty and `error` says why (`error.reason`, `error.message`)."""

    table: str | None
    rows: tuple[Mapping[str, Any], ...]
    schema: tuple[Column, ...]
    truncated: bool
    error: JobError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class JobEvent:
    """One completion event. `ce_id` (`{job_id}:{outcome}`) is the same on every redelivery: de-duplicate on it.
    `job_id` is None for a delivery that never got a job (then `ce_id` is built from the delivery's key)."""

    ce_id: str
    type: str
    source: str | None
    time: str | None
    job_id: str | None
    workflow: str
    outcome: str
    state: str | None
    error: JobError | None
    delivery_id: str | None
    trace: str | None
    submitted_at: datetime
    finished_at: datetime
    duration_s: float
    checks: int
    parameters: Mapping[str, Any]
    attributes: Mapping[str, str]
    message_id: str | None = None
    publish_time: str | None = None
    result: JobResult | None = None  # only for a workflow whose file asks for its rows, only on SUCCEEDED
    queued_s: float = 0.0  # acceptance to submission; 0 when submitted inline
    superseded_by: str | None = None  # outcome SUPERSEDED: the delivery that replaced this one

    @property
    def superseded(self) -> bool:
        return self.outcome == "SUPERSEDED"

    @property
    def succeeded(self) -> bool:
        return self.outcome == "SUCCEEDED"


def parse_event(cloud_event_or_message: Any) -> JobEvent:
    """The completion event inside what a subscriber received; MalformedEvent when it holds none.

    Accepts a functions-framework CloudEvent of a Pub/Sub push (Eventarc's `messagePublished`, or a
    push subscription's request converted by functions-framework), the JSON body of a push request,
    a pulled message (`google.cloud.pubsub_v1` streaming-pull `Message`, or `ReceivedMessage` /
    `PubsubMessage` from a synchronous pull), or a raw `(attributes, data)` pair.
    """
    attributes, data, message_id, publish_time = _unwrap(cloud_event_or_message)
    return _event(_attributes(attributes), _data(data), message_id, publish_time)


def _unwrap(received: Any) -> tuple[Any, Any, str | None, str | None]:
    """(attributes, data bytes, message id, publish time) of the Pub/Sub message in `received`."""
    if isinstance(received, tuple) and len(received) == 2:
        return received[0], received[1], None, None
    if isinstance(received, Mapping):
        return _push_message(received)
    message = getattr(received, "message", None)
    if message is not None and hasattr(message, "data") and hasattr(message, "attributes"):
        received = message  # a ReceivedMessage of a synchronous pull
    data = getattr(received, "data", None)
    if isinstance(data, (bytes, bytearray)) and hasattr(received, "attributes"):
        publish_time = getattr(received, "publish_time", None)
        message_id = getattr(received, "message_id", None)
        return (received.attributes, bytes(data), str(message_id) if message_id else None,
                _time_text(publish_time))
    if data is not None:  # a CloudEvent: its data is the push envelope
        if isinstance(data, (bytes, bytearray, str)):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise MalformedEvent("the CloudEvent's data is not JSON") from None
        if isinstance(data, Mapping):
            return _push_message(data)
    raise MalformedEvent(f"not a Pub/Sub message, push envelope or CloudEvent: {type(received).__name__}")


def _push_message(envelope: Mapping[str, Any]) -> tuple[Any, bytes, str | None, str | None]:
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        raise MalformedEvent("the push envelope has no message")
    encoded = message.get("data")
    if not isinstance(encoded, str):
        raise MalformedEvent("the pushed message has no data")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEvent("the pushed message's data is not base64") from None
    message_id = message.get("messageId") or message.get("message_id")
    publish_time = message.get("publishTime") or message.get("publish_time")
    return (message.get("attributes"), data, str(message_id) if message_id else None,
            str(publish_time) if publish_time else None)


def _time_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value) or None


def _attributes(attributes: Any) -> dict[str, str]:
    try:
        pairs = dict(attributes or {})
    except (TypeError, ValueError):
        raise MalformedEvent("the message's attributes are not a mapping") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
        raise MalformedEvent("the message's attributes are not strings")
    return pairs


def _data(data: Any) -> dict[str, Any]:
    if isinstance(data, Mapping):
        body: Any = dict(data)
    else:
        try:
            body = json.loads(data)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise MalformedEvent("the event's data is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedEvent("the event's data is not a JSON object")
    _check_fields(body, FIELDS, "")
    if body["outcome"] not in OUTCOMES:
        raise MalformedEvent(f"outcome {body['outcome']!r} is not one of {', '.join(OUTCOMES)}")
    if body["job_id"] is not None and not body["job_id"]:
        raise MalformedEvent("job_id is empty")
    if not re.fullmatch(WORKFLOW_PATTERN, body["workflow"]):
        raise MalformedEvent(f"workflow {body['workflow']!r} is not a workflow name")
    if body["duration_s"] < 0 or body["checks"] < 0 or body["queued_s"] < 0:
        raise MalformedEvent("duration_s, checks and queued_s must not be negative")
    if body["error"] is not None:
        _check_fields(body["error"], ERROR_FIELDS, "error.")
        if set(body["error"]) - set(ERROR_FIELDS):
            raise MalformedEvent(f"error has unknown fields {sorted(set(body['error']) - set(ERROR_FIELDS))}")
    if "result" in body:
        _check_result(body["result"])
    return body


def _check_result(result: dict[str, Any]) -> None:
    fields = RESULT_ERROR_FIELDS if "error" in result else RESULT_FIELDS
    _check_fields(result, fields, "result.")
    if set(result) - set(fields):
        raise MalformedEvent(f"result has unknown fields {sorted(set(result) - set(fields))}")
    if "error" in result:
        if not all(isinstance(result["error"].get(k), str) for k in ("reason", "message")):
            raise MalformedEvent("result.error must carry a reason and a message")
    elif not all(isinstance(row, dict) for row in result["rows"]) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in result["schema"]):
        raise MalformedEvent("result.rows must be objects and result.schema [{name, type}]")


def _result(result: dict[str, Any] | None) -> JobResult | None:
    if result is None:
        return None
    if "error" in result:
        error = JobError(result["error"]["message"], result["error"]["reason"])
        return JobResult(result["table"], (), (), False, error)
    return JobResult(result["table"], tuple(MappingProxyType(row) for row in result["rows"]),
                     tuple(Column(c["name"], c.get("type")) for c in result["schema"]), result["truncated"])


def _check_fields(body: Mapping[str, Any], fields: Mapping[str, tuple[frozenset[str], bool]], prefix: str) -> None:
    for name, (types, required) in fields.items():
        if name not in body:
            if required:
                raise MalformedEvent(f"the event's data has no {prefix}{name}")
        elif not any(_is(kind, body[name]) for kind in types):
            raise MalformedEvent(f"{prefix}{name} must be {' or '.join(sorted(types))}, not {body[name]!r:.80}")


def _is(kind: str, value: Any) -> bool:
    """Whether a decoded JSON value is of JSON Schema type `kind` (2020-12: 2.0 is an integer, true is no number)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"null": value is None, "string": isinstance(value, str), "object": isinstance(value, dict),
            "array": isinstance(value, list), "boolean": isinstance(value, bool),
            "number": number, "integer": number and float(value).is_integer()}[kind]


def _timestamp(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedEvent(f"{name} is not an RFC 3339 date-time: {value!r}") from None
    if moment.tzinfo is None:
        raise MalformedEvent(f"{name} has no time zone: {value!r}")
    return moment


def _event(attributes: dict[str, str], body: dict[str, Any], message_id: str | None,
           publish_time: str | None) -> JobEvent:
    ce_id, ce_type = attributes.get("ce-id"), attributes.get("ce-type")
    if not ce_id or not ce_type:
        raise MalformedEvent("the message has no ce-id or ce-type attribute: not a CloudEvent in binary mode")
    subject = body["job_id"] if body["job_id"] is not None else attributes.get("ce-subject", "")
    if ce_id != f"{subject}:{body['outcome']}" or (body["job_id"] is None and not subject.startswith("delivery-")):
        raise MalformedEvent(f"ce-id {ce_id!r} does not name the job (or delivery) and outcome of the data")
    for name in ("job_id", "workflow", "outcome"):
        if name in attributes and attributes[name] != body[name]:
            raise MalformedEvent(f"attribute {name} {attributes[name]!r} disagrees with the data's {body[name]!r}")
    error = body["error"]
    return JobEvent(
        ce_id=ce_id, type=ce_type, source=attributes.get("ce-source"), time=attributes.get("ce-time"),
        job_id=body["job_id"], workflow=body["workflow"], outcome=body["outcome"], state=body["state"],
        error=JobError(error["message"], error.get("reason"), error.get("location")) if error is not None else None,
        delivery_id=body["delivery_id"], trace=body.get("trace"),
        submitted_at=_timestamp(body["submitted_at"], "submitted_at"),
        finished_at=_timestamp(body["finished_at"], "finished_at"),
        duration_s=float(body["duration_s"]), checks=int(body["checks"]), parameters=MappingProxyType(body["parameters"]),
        attributes=MappingProxyType(attributes), message_id=message_id, publish_time=publish_time,
        result=_result(body.get("result")), queued_s=float(body["queued_s"]), superseded_by=body.get("superseded_by"))
