"""The HTTP surface of the `webhook` function (README, "HTTP surface"): routing, body limits, strict JSON.

Authentication runs on the raw body bytes before any parsing (STYLE 4); every failure is a
GatewayError rendered once, as RFC 9457 problem+json.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import flask

from gateway import logs
from gateway.app import App
from gateway.auth.operators import NotAnOperator, Operator
from gateway.auth.signatures import verify_request
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    problem_index,
    problem_types,
)
from gateway.intake import Inbound, idempotency_key, render
from gateway.workflows import Workflow

log = logging.getLogger("gateway.http")
_HOOK = re.compile(r"^/hooks/([a-z0-9][a-z0-9-]{0,62})(/validate)?/?$")
_PROBLEM = re.compile(r"^/problems(?:/([a-z0-9-]{1,64}))?/?$")
_JOB = re.compile(r"^/jobs/([A-Za-z0-9_.:\-]{1,200})/?$")
_DELIVERY = re.compile(r"^/deliveries/(.{1,1000})$", re.DOTALL)  # the key, percent-decoded: any character
_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]*\+)?json\s*(;.*)?$", re.IGNORECASE)
Response = tuple[Any, int, dict[str, str]]  # body: str, or an iterator of bytes when streamed (_unbuffered)
_BODY_READ = "gateway.body_read"
_DELIVERY_EVENT = "gateway.delivery_event"  # set by _webhook: accepted, duplicate or a handshake


def handle(app: App, request: flask.Request) -> Response:
    """Answer one request; never raises, never 500s on bad input."""
    token = logs.bind(route=request.path, trace=logs.trace_id(request.headers))
    code = None
    try:
        response = _route(app, request)
    except GatewayError as exc:
        response, code = exc.response(), exc.code
    except Exception:  # a bug, not bad input: an honest 500, logged by type only (values may hold secrets)
        log.exception("unhandled error", extra=logs.event("http.crashed"))
        error = GatewayError("internal error")
        response, code = error.response(), error.code
    log.info("answered %s %s with %s", request.method, request.path, response[1],
             extra=logs.event(_answer_event(request, code), status=response[1], code=code))
    logs.reset(token)
    return _unbuffered(request, response)


def _answer_event(request: flask.Request, code: str | None) -> str:
    """What the answer line of a request says happened: a delivery's answer class, or just an answer."""
    delivered = request.environ.get(_DELIVERY_EVENT)
    if delivered:
        return delivered
    if code is not None and request.method == "POST" and _is_delivery(request.path):
        return "delivery.refused"
    return "http.answered"


def _is_delivery(path: str) -> bool:
    hook = _HOOK.match(path)
    return hook is not None and not hook.group(2)


def _unbuffered(request: flask.Request, response: Response) -> Response:
    """Stream the answer when the body was left unread (413, 404, 405…): functions-framework's
    `read_request` hook otherwise reads all of it into memory before answering, however large."""
    unread = request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not unread or request.environ.get(_BODY_READ):
        return response
    body, status, headers = response
    return iter([body.encode()]), status, headers


def _route(app: App, request: flask.Request) -> Response:
    path = request.path
    if path in ("/healthz", "/"):  # that the instance is up, and nothing about what it serves
        return _only(request, "GET", lambda: _json({"status": "ok"}))
    if path == "/openapi.json":  # every workflow's schema and CALL: an operator's document
        return _only(request, "GET", lambda: _openapi_document(app, request))
    hook = _HOOK.match(path)
    if hook:
        workflow = _workflow(app, hook.group(1))
        logs.bind(workflow=workflow.name)  # a refusal's line names the workflow too
        if hook.group(2):
            return _only(request, "POST", lambda: _validate(app, workflow, request))
        return _only(request, "POST", lambda: _webhook(app, workflow, request))
    problem = _PROBLEM.match(path)
    if problem:
        return _only(request, "GET", lambda: _problem_page(problem.group(1)))
    job = _JOB.match(path)
    if job:
        if request.method in ("GET", "DELETE"):
            _operator(app, request)  # before the lookup: a stranger learns not even whether the job exists
        if request.method == "GET":
            return _job_status(app, job.group(1), request)
        if request.method == "DELETE":
            return _job_cancel(app, job.group(1), request)
        raise MethodNotAllowed(f"{request.method} is not allowed on {path}", headers={"Allow": "GET, DELETE"})
    delivery = _DELIVERY.match(path)
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
        raise NotFound(f"no workflow named {name}")
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


def read_body(request: flask.Request, limit: int) -> bytes:
    """The raw body, refused with 413 before buffering when it is (or turns out) over `limit` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit} bytes")
    stream = request.stream
    chunks, size = [], 0
    if length:  # the common case: one read of what was announced (the stream ends there)
        chunks.append(_read(stream, length))
        size = len(chunks[0])
        if size == length:  # the server ends the stream at Content-Length: nothing can follow
            request.environ[_BODY_READ] = True
            return chunks[0]
    while True:
        chunk = _read(stream, min(65536, limit + 1 - size))
        if not chunk:
            request.environ[_BODY_READ] = True
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    return b"".join(chunks)


def _read(stream: Any, size: int) -> bytes:
    try:
        return stream.read(size)
    except Exception as exc:  # the server could not frame the body (bad chunk size, early end): bad input
        raise MalformedRequest(f"the body could not be read ({type(exc).__name__})") from None


def parse_json(body: bytes, content_type: str | None) -> Any:
    """Strict JSON (RFC 8259): UTF-8, no BOM, no NaN/Infinity, no duplicate keys, bounded depth."""
    if not content_type or not _JSON_TYPE.match(content_type):
        raise UnsupportedMediaType(f"expected Content-Type application/json, got {content_type or 'none'}")
    if body.startswith(b"\xef\xbb\xbf"):
        raise MalformedRequest("body starts with a byte order mark; send plain UTF-8 JSON")
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                          parse_float=_number)
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"body is not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise MalformedRequest("body is nested too deeply") from None
    except ValueError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {duplicate!r}")
    return result


# From 2^53 on, not every integer is a float: 9007199254740993.0 would read as ...992.0. An integer
# written with a fraction or an exponent in that range is read exactly instead (it is an integer
# either way, for JSON Schema and for the binder); from 2^64 on no INT64 can hold it, a float is fine.
_EXACT_FLOATS_BELOW = 2.0**53
_NO_INT64_FROM = 2.0**64


def _number(text: str) -> float | int:
    """A JSON number with a fraction or an exponent: a float, or the exact integer (see above)."""
    value = float(text)
    if _EXACT_FLOATS_BELOW <= abs(value) < _NO_INT64_FROM and value.is_integer():
        exact = Decimal(text)
        if exact == exact.to_integral_value():
            return int(exact)
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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
    payload = parse_json(body, request.content_type)
    if _is_slack_handshake(verified.scheme, payload):
        request.environ[_DELIVERY_EVENT] = "delivery.handshake"
        return _json({"challenge": payload["challenge"]})
    key = idempotency_key(workflow, payload, request.headers, verified.delivery_id)
    logs.bind(workflow=workflow.name, delivery_id=verified.delivery_id or key)
    inbound = Inbound(workflow, body, payload, request.headers, key, verified.delivery_id or key,
                      logs.trace_id(request.headers))
    accepted = app.intake.accept(inbound)
    logs.bind(job_id=accepted.job_id)
    request.environ[_DELIVERY_EVENT] = "delivery.duplicate" if accepted.duplicate else "delivery.accepted"
    status_url = f"/jobs/{accepted.job_id}"
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
    payload = parse_json(body, request.content_type)
    rendered = render(workflow, payload, request.headers)
    return _json({"query": rendered.query, "queryParameters": rendered.wire})


def _operator(app: App, request: flask.Request) -> Operator:
    """The operator sending `request` (gateway.auth.operators); a webhook signature is no credential here."""
    try:
        operator = app.operators.verify(request.headers, _own_url(request), app.clock.now())
    except NotAnOperator as exc:
        log.info("operator authentication refused: %s", exc.reason, extra=logs.event("operator.refused"))
        raise
    logs.bind(operator=operator.subject)
    return operator


def _own_url(request: flask.Request) -> str:
    """This function's URL as its callers name it, the audience of their ID tokens: Cloud Run ends TLS
    in front of the instance and says so in X-Forwarded-Proto."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    scheme = forwarded if forwarded in ("http", "https") else request.scheme
    return f"{scheme}://{request.host}"


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
    if record.outcome is None:
        record = app.poller.cancel(record)
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
    if live is not None:
        view["live"] = live
    return view


def _openapi_document(app: App, request: flask.Request) -> Response:
    from gateway.openapi import cached_document

    _operator(app, request)
    return _json(cached_document(app.registry))
