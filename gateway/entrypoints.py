"""What each Cloud Function does with its trigger, given the instance's `App`.

Pub/Sub-triggered functions ack by returning and nack by raising: a poison message (one that can
never succeed) is logged and acked, never looped forever; anything that may succeed later raises.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from gateway import http, logs
from gateway.app import App
from gateway.bodies import parse_json
from gateway.errors import (
    CartoUnavailable,
    ConfigError,
    DeliveryInFlight,
    GatewayError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PoisonMessage,
    PublishUnavailable,
    Unavailable,
    UnsupportedMediaType,
    crash,
)
from gateway.events import (
    CHECK_TYPE,
    SUBMIT_TYPE,
    Check,
    Tracking,
    attributes_of,
    parse_check,
    parse_handoff,
    parse_tracking,
)
from gateway.idempotency import check_length, message_key
from gateway.intake import Inbound
from gateway.serving import Response

log = logging.getLogger("gateway.entrypoints")

# Each function of main.py, and whether its instance verifies senders (only `webhook` loads their secrets).
VERIFY_SENDERS = {"webhook": True, "poll": False, "submit": False, "sweep": False, "console": False}


def start(target: str, build: Callable[..., App]) -> None:
    """Build the instance of `target` (FUNCTION_TARGET) when its process starts, so a bad workflow file or a
    missing setting stops the worker, naming the problem, before it answers anything (Cloud Run keeps the
    previous revision serving). Another target (a test importing main.py) builds on first use."""
    if target not in VERIFY_SENDERS:
        return
    if target == "console":  # loaded at start like the rest: a broken console stops its worker, not a request
        from gateway.console import app  # noqa: F401
    try:
        build(verify_senders=VERIFY_SENDERS[target])
    except ConfigError as exc:
        line = {"severity": "CRITICAL", "event": "function.unconfigured", "message": f"{target} cannot start: {exc}"}
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
    except Unavailable as exc:  # a dependency busy at start (a shared SQLite file locked): built on first use
        log.warning("%s: instance not built at start, %s; building on first use", target, exc.detail,
                    extra=logs.event("function.failed", code=exc.code))


def install(flask_app: flask.Flask) -> None:
    """Answer what escapes a function, and what the framework refuses before calling one, with problem+json:
    never an HTML error page, never a request's bytes echoed back."""
    flask_app.register_error_handler(HTTPException, _framework_refusal)
    flask_app.register_error_handler(Exception, _escaped)


def _framework_refusal(exc: HTTPException) -> tuple[str, int, dict[str, str]]:
    """404 (robots.txt, favicon.ico), 405 (a GET to an event function), 400 (not a CloudEvent): the status
    stays, the description (which may quote the request) does not."""
    status = exc.code or 500
    if status >= 500:
        return _escaped(exc)
    refusal = {404: NotFound("no such route"), 405: MethodNotAllowed(f"{flask.request.method} is not allowed here"),
               400: MalformedRequest("not an event this function takes"),
               415: UnsupportedMediaType("not an event this function takes")}.get(status)
    if refusal is None:
        refusal = GatewayError(exc.name)
        refusal.status, refusal.code = status, "refused"
    log.info("answered %s %s with %s", flask.request.method, flask.request.path, status,
             extra=logs.event("http.answered", status=status, code=refusal.code))
    return refusal.response()


def _escaped(exc: BaseException) -> tuple[str, int, dict[str, str]]:
    """An exception out of a function: a 500 (the push or the task is retried) with an incident id that is
    also in the log line. A dependency that was down keeps its code; anything else is a bug."""
    error = crash()
    if isinstance(exc, GatewayError):
        error.code, error.title, error.detail = exc.code, exc.title, f"{exc.detail} (incident {error.incident})"
        log.warning("%s failed, to be retried: %s", flask.request.path, exc.code,
                    extra=logs.event("function.failed", code=exc.code, incident=error.incident))
    else:
        log.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__),
                  extra=logs.event("function.crashed", incident=error.incident))
    body, _, headers = error.response()
    return body, 500, {**headers, "X-Google-Status": "crash"}


def webhook(app: App, request: flask.Request) -> Response:
    with logs.invocation():
        return http.handle(app, request)


def console(app: App, request: flask.Request) -> Response:
    """The operators' console (README, "Console"): its pages and its two actions. Imported here, by the
    console function only: its templates and queries are no part of the other functions' cold start."""
    from gateway.console import app as console_app

    with logs.invocation():
        return console_app.handle(app, request)


def pubsub_message(cloud_event: Any) -> tuple[bytes, dict[str, str], str | None]:
    """(data, attributes, message id) of the Pub/Sub message inside a CloudEvent; PoisonMessage if none."""
    data = cloud_event.data if hasattr(cloud_event, "data") else cloud_event
    message = data.get("message") if isinstance(data, Mapping) else None
    if not isinstance(message, Mapping):
        raise PoisonMessage("the event carries no Pub/Sub message")
    try:
        payload = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise PoisonMessage("the message data is not base64") from None
    message_id = message.get("messageId") or message.get("message_id")
    return payload, attributes_of(message), str(message_id) if message_id else None


def poll(app: App, cloud_event: Any) -> None:
    """Check one job (the tracking message's push, or a check task from Cloud Tasks), or submit a queued
    delivery (a submit task). Returning is a 2xx, also while the job runs or the delivery waits (its next
    task is scheduled); raising (a dependency down) makes the subscription or the queue retry."""
    with logs.invocation():
        if _event_type(cloud_event) == SUBMIT_TYPE:
            _hand_off(app, cloud_event)
        else:
            _poll(app, cloud_event)


def _hand_off(app: App, cloud_event: Any) -> None:
    try:
        data = cloud_event.data if hasattr(cloud_event, "data") else None
        if not isinstance(data, Mapping | bytes | str):
            raise PoisonMessage("the submit task carries no JSON body")
        handoff = parse_handoff(data.encode() if isinstance(data, str) else data)
    except PoisonMessage as exc:
        log.error("poison submit task acked: %s", exc.detail)
        return
    with logs.bound(workflow=handoff.workflow, key=handoff.key):
        try:
            record = app.admission.handle(handoff)
            log.info("submit task done", extra={"state": record.state if record else None,
                                                "job_id": record.job_id if record else None})
        except Unavailable as exc:
            log.warning("submit task failed, to be retried: %s", exc.detail)
            raise


def poll_trigger(cloud_event: Any) -> Tracking | Check:
    """The tracking message or, for a check task (`ce-type` com.carto.workflows.job.check), the check;
    PoisonMessage if neither. Either only names the delivery: `poll` follows the ledger record's job."""
    if _event_type(cloud_event) == CHECK_TYPE:
        data = cloud_event.data if hasattr(cloud_event, "data") else None
        if not isinstance(data, Mapping | bytes | str):
            raise PoisonMessage("the check task carries no JSON body")
        return parse_check(data.encode() if isinstance(data, str) else data)
    data, _, _ = pubsub_message(cloud_event)
    return parse_tracking(data)


def _event_type(cloud_event: Any) -> str | None:
    try:
        return cloud_event["type"]
    except (KeyError, TypeError):
        return None


def _poll(app: App, cloud_event: Any) -> None:
    try:
        message = poll_trigger(cloud_event)
    except PoisonMessage as exc:
        log.error("poison tracking message acked: %s", exc.detail, extra=logs.event("tracking.poison"))
        return
    started = time.monotonic()
    with logs.bound(job_id=message.job_id):  # the record's job id too, or the message is refused
        try:
            record = app.poller.admit(message)  # None: an unknown delivery or a message that does not fit it (logged)
            if record is None:
                return
            logs.bind(workflow=record.workflow, delivery_id=record.delivery_id, trace=record.trace)
            finished = app.poller.follow(record, message)
        except Unavailable as exc:
            name, kind = _failure(exc)
            log.warning("check failed, to be retried: %s", exc.detail, extra=logs.event(
                name, kind=kind, code=exc.code, invocation_s=round(time.monotonic() - started, 3)))
            raise
        elapsed = round(time.monotonic() - started, 3)
        if finished is not None:
            log.info("job over", extra=logs.event("job.checked", outcome=finished.outcome, invocation_s=elapsed))
        else:
            log.info("job still running; next check scheduled", extra=logs.event("job.checked", invocation_s=elapsed))


def _failure(exc: Unavailable) -> tuple[str, str]:
    """The event and kind of a failed check: which dependency was down while following the job."""
    if isinstance(exc, CartoUnavailable):
        return "carto.failed", "status"
    if isinstance(exc, PublishUnavailable):
        return "publish.failed", "event"
    return "check.failed", exc.code


def submit(app: App, cloud_event: Any) -> None:
    """Run a workflow for another function: the webhook path minus the signature (IAM guards the topic)."""
    with logs.invocation():
        _submit(app, cloud_event)


def _submit(app: App, cloud_event: Any) -> None:
    try:
        data, attributes, message_id = pubsub_message(cloud_event)
        workflow = app.registry.get(attributes.get("workflow", ""))
        if workflow is None:
            raise PoisonMessage(f"unknown workflow {attributes.get('workflow')!r}")
        payload = parse_json(data)
        key = message_key(workflow, payload, attributes, message_id)
        check_length(key)
        with logs.bound(workflow=workflow.name, delivery_id=key):
            accepted = app.intake.accept(Inbound(workflow, data, payload, attributes, key, key))
            log.info("request accepted", extra=logs.event(
                "delivery.duplicate" if accepted.duplicate else "delivery.accepted", job_id=accepted.job_id))
    except (Unavailable, DeliveryInFlight):
        raise  # may succeed later: let Pub/Sub redeliver
    except GatewayError as exc:
        log.error("request message refused and acked: %s (%s)", exc.detail, exc.code,
                  extra=logs.event("delivery.refused", status=exc.status, code=exc.code))


def sweep(app: App, request: flask.Request) -> Response:
    with logs.invocation():
        report = app.sweeper.sweep()
        log.info("sweep done: %s", json.dumps(report.as_dict()), extra=logs.event("sweep.done"))
    return json.dumps(report.as_dict()), 200, {"Content-Type": "application/json"}
