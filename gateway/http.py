"""The HTTP surface of the `webhook` function (README, "HTTP surface"): routing, body limits, strict JSON.

Authentication runs on the raw body bytes before any parsing; every failure is a
GatewayError rendered once, as RFC 9457 problem+json.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import flask

from gateway import logs
from gateway.app import App
from gateway.auth.operators import Operator
from gateway.auth.signatures import verify_request
from gateway.bodies import body_was_read, parse_json, read_body
from gateway.carto import CANCELLED
from gateway.errors import (
    ActionRefused,
    AuthenticationFailed,
    GatewayError,
    MethodNotAllowed,
    NotAnOperator,
    NotFound,
    UnsupportedMediaType,
    problem_index,
    problem_types,
)
from gateway.idempotency import check_length, request_key
from gateway.intake import Inbound
from gateway.serving import Response, serve
from gateway.validation import render
from gateway.workflows import Workflow

log = logging.getLogger("gateway.http")
_HOOK = re.compile(r"/hooks/([a-z0-9][a-z0-9-]{0,62})(/validate)?/?")
_PROBLEM = re.compile(r"/problems(?:/([a-z0-9-]{1,64}))?/?")
_JOB = re.compile(r"/jobs/([A-Za-z0-9_.:\-]{1,200})/?")
_DELIVERY = re.compile(r"/deliveries/(.{1,1000})", re.DOTALL)  # the key, percent-decoded: any character
_JSON_TYPE = re.compile(r"application/([a-z0-9.+-]*\+)?json\s*(;.*)?", re.IGNORECASE)
_DELIVERY_EVENT = "gateway.delivery_event"  # set by _webhook: accepted, duplicate or a handshake


def handle(app: App, request: flask.Request) -> Response:
    """Answer one request; never raises, never 500s on bad input."""
    response = serve(request, lambda: _route(app, request), GatewayError.response, log, crashed="http.crashed",
                     answered=lambda code: _answer_event(request, code), trace=logs.trace_id(request.headers))
    body, status, headers = _unbuffered(request, response)
    return body, status, {**headers, "X-Content-Type-Options": "nosniff"}  # a JSON answer is never rendered as HTML


def _answer_event(request: flask.Request, code: str | None) -> str:
    """What the answer line of a request says happened: a delivery's answer class, or just an answer."""
    delivered = request.environ.get(_DELIVERY_EVENT)
    if delivered:
        return delivered
    if code is not None and request.method == "POST" and _is_delivery(request.path):
        return "delivery.refused"
    return "http.answered"


def _is_delivery(path: str) -> bool:
    hook = _HOOK.fullmatch(path)
    return hook is not None and not hook.group(2)


def _unbuffered(request: flask.Request, response: Response) -> Response:
    """Stream the answer when the body was left unread (413, 404, 405…): functions-framework's
    `read_request` hook otherwise reads all of it into memory before answering, however large."""
    unread = request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not unread or body_was_read(request):
        return response
    body, status, headers = response
    return iter([body.encode()]), status, headers


def _route(app: App, request: flask.Request) -> Response:
    path = request.path
    if path in ("/healthz", "/"):  # that the instance is up, and nothing about what it serves
        return _only(request, "GET", lambda: _json({"status": "ok"}))
    if path == "/openapi.json":  # every workflow's schema and CALL: an operator's document
        return _only(request, "GET", lambda: _openapi_document(app, request))
    hook = _HOOK.fullmatch(path)
    if hook:
        workflow = _workflow(app, hook.group(1))
        logs.bind(workflow=workflow.name)  # a refusal's line names the workflow too
        if hook.group(2):
            return _only(request, "POST", lambda: _validate(app, workflow, request))
        return _only(request, "POST", lambda: _webhook(app, workflow, request))
    problem = _PROBLEM.fullmatch(path)
    if problem:
        return _only(request, "GET", lambda: _problem_page(problem.group(1)))
    job = _JOB.fullmatch(path)
    if job:
        if request.method in ("GET", "DELETE"):
            _operator(app, request)  # before the lookup: a stranger learns not even whether the job exists
        if request.method == "GET":
            return _job_status(app, job.group(1), request)
        if request.method == "DELETE":
            return _job_cancel(app, job.group(1), request)
        raise MethodNotAllowed(f"{request.method} is not allowed on {path}", headers={"Allow": "GET, DELETE"})
    delivery = _DELIVERY.fullmatch(path)
    if delivery:
        return _only(request, "GET", lambda: _delivery_status(app, delivery.group(1), request))
    raise NotFound(f"no route {path}")


def _only(request: flask.Request, method: str, answer: Callable[[], Response]) -> Response:
    if request.method != method:
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}", headers={"Allow": method})
    return answer()


def _workflow(app: App, name: str) -> Workflow:
    workflow = app.registry.get(name)
    if workflow is None:
        raise NotFound(f"no workflow named {name}: workflow files are loaded when the function starts; "
                       "after adding one, restart it (make dev) or deploy again")
    return workflow


def _problem_page(code: str | None) -> Response:
    """Where a problem's relative `type` leads: what went wrong and what to do (public: it names no secret)."""
    if code is None:
        return problem_index(), 200, {"Content-Type": "text/plain; charset=utf-8"}
    cls = problem_types().get(code)
    if cls is None:
        raise NotFound(f"no problem type {code}; /problems lists them")
    return cls.page(), 200, {"Content-Type": "text/plain; charset=utf-8"}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return json.dumps(body), status, {"Content-Type": "application/json", **(headers or {})}


def _json_content(request: flask.Request) -> None:
    """A payload must say it is JSON: `application/json` or any `+json` type."""
    content_type = request.content_type
    if not content_type or not _JSON_TYPE.fullmatch(content_type):
        raise UnsupportedMediaType(f"expected Content-Type application/json, got {content_type or 'none'}")


def _authenticated(app: App, workflow: Workflow, request: flask.Request, body: bytes):
    try:
        return verify_request(workflow.schemes, request.headers, body, app.clock.now())
    except AuthenticationFailed as exc:
        # The caller learns nothing; the operator learns which header was wrong (never a value).
        log.info("authentication refused: %s", _reasons(exc), extra=logs.event("auth.refused", workflow=workflow.name))
        raise
    except GatewayError:
        raise
    except Exception:  # a verifier bug must not open the door nor crash: deny
        log.exception("signature verification failed unexpectedly", extra=logs.event("auth.refused"))
        raise AuthenticationFailed("authentication failed") from None


def _reasons(exc: BaseException) -> str:
    """Each refusing scheme's reason, from the cause `verify_request` chains (fixed texts, no values)."""
    cause = exc.__cause__
    causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else [cause or exc]
    return "; ".join(str(reason) for reason in causes)


def _webhook(app: App, workflow: Workflow, request: flask.Request) -> Response:
    body = read_body(request, app.settings.max_body_bytes)
    verified = _authenticated(app, workflow, request, body)
    _json_content(request)
    payload = parse_json(body)
    if _is_slack_handshake(verified.scheme, payload):
        request.environ[_DELIVERY_EVENT] = "delivery.handshake"
        return _json({"challenge": payload["challenge"]})
    key = request_key(workflow, payload, request.headers, verified.delivery_id)
    check_length(key, verified.delivery_id)  # before either is on a log line
    logs.bind(workflow=workflow.name, delivery_id=verified.delivery_id or key)
    inbound = Inbound(workflow, body, payload, request.headers, key, verified.delivery_id or key,
                      logs.trace_id(request.headers))
    accepted = app.intake.accept(inbound)
    logs.bind(job_id=accepted.job_id)
    request.environ[_DELIVERY_EVENT] = "delivery.duplicate" if accepted.duplicate else "delivery.accepted"
    status_url = f"/jobs/{accepted.job_id}" if accepted.job_id else f"/deliveries/{quote(accepted.key, safe='')}"
    status = 200 if accepted.duplicate else 202
    return _json(accepted.as_dict(status_url), status, {"Location": status_url})


def _is_slack_handshake(scheme: str, payload: Any) -> bool:
    """Slack's signed `url_verification`: echoing its challenge enables the Events API URL; not a delivery.

    https://api.slack.com/events/url_verification
    """
    return (scheme == "slack" and isinstance(payload, dict) and payload.get("type") == "url_verification"
            and isinstance(payload.get("challenge"), str))


def _validate(app: App, workflow: Workflow, request: flask.Request) -> Response:
    body = read_body(request, app.settings.max_body_bytes)
    _authenticated(app, workflow, request, body)
    _json_content(request)
    payload = parse_json(body)
    rendered = render(workflow, payload, request.headers)
    return _json({"query": rendered.query, "queryParameters": rendered.wire})


def _operator(app: App, request: flask.Request) -> Operator:
    """The operator sending `request` (gateway.auth.operators); a webhook signature is no credential here."""
    try:
        operator = app.operators.verify(request.headers, app.settings.operator_audiences, app.clock.now())
    except NotAnOperator as exc:
        log.info("operator authentication refused: %s", exc.reason, extra=logs.event("operator.refused"))
        raise
    logs.bind(operator=operator.subject)
    return operator


def _job_record(app: App, job_id: str, request: flask.Request):
    record = app.ledger.find_job(job_id)
    if record is None:
        raise NotFound(f"no job {job_id}")
    logs.bind(workflow=record.workflow, job_id=job_id, delivery_id=record.delivery_id)
    return record


def _job_status(app: App, job_id: str, request: flask.Request) -> Response:
    record = _job_record(app, job_id, request)
    live: dict[str, Any] | None = None
    if record.outcome is None:
        try:
            status = app.carto.status(record.api_base_url, record.connection, job_id, workflow=record.workflow)
            live = {"state": status.state, "outcome": status.outcome, "error": status.error}
        except GatewayError as exc:
            live = {"unavailable": exc.detail}
    return _json(_record_view(record, live))


def _job_cancel(app: App, job_id: str, request: flask.Request) -> Response:
    record = _job_record(app, job_id, request)
    if record.outcome is not None:
        raise ActionRefused(f"the job already ended ({record.outcome}); nothing was cancelled")
    record = app.poller.cancel(record)
    if record.outcome != CANCELLED:  # CARTO had finished it before the cancel reached it: recorded as it ended
        raise ActionRefused(f"the job had already ended at CARTO ({record.outcome}); nothing was cancelled")
    return _json(_record_view(record, None))


def _delivery_status(app: App, key: str, request: flask.Request) -> Response:
    """A delivery's record, queued or not: the `status_url` of a delivery accepted before it had a job."""
    _operator(app, request)  # before the lookup: a stranger learns not even whether the delivery exists
    record = app.ledger.get(key)
    if record is None:
        raise NotFound("no delivery with that key")
    logs.bind(workflow=record.workflow, job_id=record.job_id, delivery_id=record.delivery_id)
    return _json(delivery_view(record))


_NOT_SHOWN = ("fingerprint", "claim_token")  # the ledger's own bookkeeping, of no use to an operator


def delivery_view(record: Any) -> dict[str, Any]:
    """Every field of the record but the ledger's bookkeeping, times as RFC 3339, and where its job is."""
    from gateway.events import isoformat

    view = {name: isoformat(value) if name.endswith("_at") and isinstance(value, (int, float)) and value else value
            for name, value in record.as_dict().items() if name not in _NOT_SHOWN}
    view["job_url"] = f"/jobs/{record.job_id}" if record.job_id else None
    return view


def _record_view(record: Any, live: dict[str, Any] | None) -> dict[str, Any]:
    from gateway.events import isoformat

    view = {"job_id": record.job_id, "workflow": record.workflow, "state": record.state,
            "outcome": record.outcome, "carto_state": record.carto_state, "error": record.error,
            "delivery_id": record.delivery_id, "checks": record.checks, "parameters": record.parameters,
            "submitted_at": isoformat(record.submitted_at) if record.submitted_at else None,
            "finished_at": isoformat(record.finished_at) if record.finished_at else None,
            "event_published": record.published}
    if record.result is not None:
        view["result"] = record.result  # the rows the completion event carries, or why they could not be read
    if live is not None:
        view["live"] = live
    return view


def _openapi_document(app: App, request: flask.Request) -> Response:
    from gateway.openapi import cached_document

    _operator(app, request)
    return _json(cached_document(app.registry))
