"""The console's routes on the functions-framework request: pages rendered on the server, POST forms.

    GET  /                       recent deliveries, filtered, searched and paged by the URL
    GET  /deliveries/{key}       one delivery: timeline, CALL and parameters, CARTO's error, its event
    GET  /workflows              each workflow's last 24 hours, as inline SVG
    GET  /actions/{cancel|rerun}?key=K     the confirmation page (a POST form with its CSRF token)
    POST /actions/{cancel|rerun}           the action, then 303 to the delivery's page
    GET  /assets/console.css

Jinja2 with autoescape on renders every page, so every value from a sender or CARTO is text, never
markup. No page holds a token or secret: the ledger holds none, and settings are never rendered.

Every request must name a Host the console is served under (a loopback name, or one of
GATEWAY_CONSOLE_HOSTS), and every POST must come from the console's own pages (an Origin of its own,
or `Sec-Fetch-Site: same-origin`): a page on another site, or one that rebinds its own name to this
machine, can neither read the console nor act through it (docs/architecture.md, "The console").
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import flask
import jinja2

from gateway import logs
from gateway.app import App
from gateway.console import actions, charts, csrf, queries
from gateway.errors import ActionRefused, Forbidden, GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge
from gateway.events import completion_event, event_source, isoformat
from gateway.serving import Response, serve

log = logging.getLogger("gateway.console")
HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024
# A delivery's page or the list, with something still running, reloads itself after this many seconds (a meta
# refresh: no script); the list's is longer, to leave time to change its filters. /workflows never reloads.
REFRESH_S, LIST_REFRESH_S = 5, 10
# What the page after an action says (fixed texts: a link cannot make the console say anything else).
NOTICES = {"cancelled": "The job was cancelled; its completion event is below.",
           "rerun": "This is the re-run you asked for: a new delivery with its own job and event.",
           "rerun-queued": "This is the re-run you asked for: a new delivery, waiting for its job (why is below).",
           "rerun-again": "This re-run had already been made: here it is (no second job)."}
# The parts of what a re-run sends, as its confirmation page names them.
PLAN_PARTS = {"query": "CALL", "connection": "connection", "api_base_url": "CARTO base URL"}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_LOOPBACK_NAMES = {"127.0.0.1", "[::1]", "localhost"}  # as a Host header names them
# Nothing but this origin's stylesheet; no script at all; forms post only back here.
_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _when(timestamp: float | None) -> str:
    return isoformat(timestamp).replace("T", " ") if timestamp is not None else ""


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def _cell(value: object) -> str:
    """One value of a result row as text (autoescaped by the template): strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_ENV.filters.update(when=_when, seconds=_seconds, pretty=lambda v: json.dumps(v, indent=2, ensure_ascii=False),
                    delivery_url=lambda key: "/deliveries/" + quote(key, safe=""), cell=_cell)


def handle(app: App, request: flask.Request) -> Response:
    """Answer one console request; errors become an HTML page with their status, never a 500 for bad input."""
    return serve(request, lambda: _answer(app, request), _error_page, log, crashed="console.crashed")


def _answer(app: App, request: flask.Request) -> Response:
    check_host(app, request)
    return _route(app, request, caller(app, request))


def _error_page(exc: GatewayError) -> Response:
    response = _page("error.html", exc.status, error=exc, operator=None)
    response[2].update(exc.response_headers() | {"Content-Type": _HEADERS["Content-Type"]})
    return response


def _name(authority: str) -> str:
    """The host name of `host[:port]` (an IPv6 literal keeps its brackets)."""
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _served_under(app: App, authority: str) -> bool:
    """Whether the console is served under `host[:port]`: a loopback name on any port (a browser sends one
    only for this machine), or an entry of GATEWAY_CONSOLE_HOSTS (without a port: any port)."""
    authority = authority.lower()
    if _name(authority) in _LOOPBACK_NAMES:
        return True
    return any(authority == entry or (_name(entry) == entry and _name(authority) == entry)
               for entry in app.settings.console_hosts)


def check_host(app: App, request: flask.Request) -> None:
    """Refuse a request for a Host the console is not served under (DNS rebinding), and a POST that did not
    come from the console's own pages: its Origin must be the request's Host or a Host the console is
    served under (deployed, `gcloud run services proxy` sends the service's Host and the browser's
    loopback Origin), else `Sec-Fetch-Site: same-origin` without an Origin."""
    host = request.headers.get("Host", "")
    if not _served_under(app, host):
        _refuse("host", f"the console is not served under the host {host[:100]!r}")
    if request.method in ("GET", "HEAD"):
        return
    origin = request.headers.get("Origin")
    if origin is None:
        if request.headers.get("Sec-Fetch-Site") != "same-origin":
            _refuse("origin", "a console form must be posted from the console's own page (no Origin header)")
        return
    parts = urlsplit(origin) if origin.isascii() else None
    authority = parts.netloc.lower() if parts is not None and parts.scheme in ("http", "https") else ""
    if not authority or not (authority == host.lower() or _served_under(app, authority)):
        _refuse("origin", f"a console form must be posted from the console's own page, not {origin[:100]!r}")


def _refuse(what: str, detail: str) -> None:
    log.warning("console request refused: %s", detail, extra=logs.event("console.refused", reason=what))
    raise Forbidden(detail)


def caller(app: App, request: flask.Request) -> str:
    """Who is asking: the verified IAM caller in the cloud, a loopback caller locally.

    Deployed, the function is private (--no-allow-unauthenticated): Cloud Run verifies the caller's
    Google ID token and its invoker role before the request reaches this code, so the token's payload is
    only read here, not verified again, to name who acts. The token is in `X-Serverless-Authorization`
    when the caller's proxy sends it there (Cloud Run checks that header first), else in `Authorization`.
    Cloud Run sets K_SERVICE; without it (make dev, tests) there is no IAM in front, so only callers on
    this machine's loopback are served."""
    if app.settings.env.get("K_SERVICE"):
        email = (_token_email(request.headers.get("X-Serverless-Authorization", ""))
                 or _token_email(request.headers.get("Authorization", "")))
        if email is None:
            raise Forbidden("the request carries no verified caller identity")
        return email
    if request.remote_addr not in _LOOPBACK:
        raise Forbidden("the local console serves only loopback callers")
    return f"local operator ({request.remote_addr})"


def _token_email(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    parts = token.split(".")
    if scheme.lower() != "bearer" or len(parts) < 2:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    email = payload.get("email") if isinstance(payload, dict) else None
    return email if isinstance(email, str) and email else None


def _route(app: App, request: flask.Request, operator: str) -> Response:
    path = request.path
    if path == "/":
        return _get(request, lambda: _list(app, request, operator))
    if path.startswith("/deliveries/") and len(path) > len("/deliveries/"):
        done = NOTICES.get(request.args.get("done", ""))
        return _get(request, lambda: _delivery(app, path[len("/deliveries/"):], operator, done))
    if path == "/workflows":
        return _get(request, lambda: _workflows(app, operator))
    if path in ("/actions/cancel", "/actions/rerun"):
        action = path.rsplit("/", 1)[1]
        if request.method == "GET":
            return _confirm(app, action, request.args.get("key", ""), operator)
        if request.method == "POST":
            return _act(app, action, request, operator)
        raise MethodNotAllowed(f"{request.method} is not allowed on {path}", headers={"Allow": "GET, POST"})
    if path == "/assets/console.css":
        return _get(request, lambda: ((HERE / "static" / "console.css").read_text(), 200,
                                      {"Content-Type": "text/css; charset=utf-8", "Cache-Control": "max-age=300"}))
    raise NotFound(f"no page {path}")


def _get(request: flask.Request, answer: Any) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}", headers={"Allow": "GET"})
    return answer()


def _page(template: str, status: int = 200, **context: Any) -> Response:
    """A rendered page; `refresh` (seconds) makes it reload itself, for a page whose delivery still runs."""
    context.setdefault("refresh", None)
    return _ENV.get_template(template).render(**context), status, dict(_HEADERS)


def _list(app: App, request: flask.Request, operator: str) -> Response:
    filters = queries.parse_filters(request.args)
    page = queries.list_page(app.ledger, filters)
    now = app.clock.now()
    return _page("list.html", filters=filters, page=page, operator=operator, duration=queries.duration_s,
                 progress=lambda record: queries.progress(record, app.poller.schedule, app.poller.sweep_grace_s, now),
                 error=lambda record: queries.error_message(record, queries.ERROR_CLIP), now=now,
                 refresh=LIST_REFRESH_S if any(map(queries.running, page.rows)) else None,
                 workflows=sorted(app.registry.workflows), outcomes=queries.OUTCOMES, states=queries.STATES)


def _delivery(app: App, key: str, operator: str, done: str | None = None) -> Response:
    record = actions.delivery(app, key)
    event = None
    if record.outcome is not None and record.finished_at is not None:
        # Rebuilt by the function that published it, from the same record: the event as it went out.
        message = completion_event(record, source=event_source(app.settings.project))
        event = {"attributes": message.attributes, "data": json.loads(message.data)}
    now = app.clock.now()
    return _page("delivery.html", record=record, steps=queries.timeline(record), event=event, operator=operator, done=done,
                 duration=queries.duration_s(record), logs_url=_logs_url(app, record),
                 can_cancel=actions.can_cancel(record), can_rerun=actions.can_rerun(record),
                 waiting=queries.queued_detail(record), waited_s=now - record.created_at, now=now,
                 progress=queries.progress(record, app.poller.schedule, app.poller.sweep_grace_s, now),
                 error=queries.error_message(record), error_details=queries.error_details(record),
                 parameters=queries.parameters(record, app.registry.get(record.workflow)),
                 refresh=REFRESH_S if queries.running(record) else None)


def _logs_url(app: App, record: Any) -> str | None:
    """Cloud Logging's Logs Explorer filtered to this delivery's lines (deployed only)."""
    if not app.settings.env.get("K_SERVICE") or not record.delivery_id:
        return None
    query = f'jsonPayload.delivery_id="{record.delivery_id}"'
    return (f"https://console.cloud.google.com/logs/query;query={quote(query, safe='')}"
            f"?project={quote(app.settings.project, safe='')}")


def _workflows(app: App, operator: str) -> Response:
    now = app.clock.now()
    cards = []
    for name in sorted(app.registry.workflows):
        summary = queries.workflow_summary(app.ledger, name, now)
        cards.append({"summary": summary, "waiting": queries.waiting(app.ledger, name, now),
                      "outcomes": charts.outcome_bars(summary.by_outcome),
                      "durations": charts.duration_histogram(summary.durations, summary.p50, summary.p95)})
    # No reload: 24-hour aggregates do not need the list's freshness, and each render reads up to
    # SUMMARY_LIMIT records twice per workflow (on a busy gateway something always runs).
    return _page("workflows.html", cards=cards, operator=operator, since=now - queries.DAY_S)


def _purpose(action: str, key: str, attempt: int, plan: str) -> str:
    """What a form's CSRF token is for: the action on the delivery, its attempt, and (a re-run) the digest of
    what the confirmation page said it sends."""
    return "\n".join((action, key, str(attempt), plan))


def _confirm(app: App, action: str, key: str, operator: str) -> Response:
    record = actions.delivery(app, key)
    plan, refused = None, None
    if action == actions.CANCEL:
        allowed = actions.can_cancel(record)
    else:
        try:
            plan = actions.rerun_plan(app, record)
        except ActionRefused as exc:
            refused = exc.detail
        allowed = plan is not None
    attempt = actions.next_attempt(record) if action == actions.RERUN else 0
    digest = plan.digest if plan is not None else ""
    token = csrf.issue(operator, _purpose(action, key, attempt, digest), app.clock.now())
    workflow = app.registry.get(record.workflow)
    return _page("confirm.html", action=action, record=record, allowed=allowed, attempt=attempt, token=token,
                 operator=operator, plan=plan, digest=digest, refused=refused,
                 paused=plan is not None and workflow is not None and workflow.paused,
                 changes=plan.changes(record) if plan is not None else {}, parts=PLAN_PARTS)


def _act(app: App, action: str, request: flask.Request, operator: str) -> Response:
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"a console form is at most {MAX_FORM_BYTES} bytes")
    form = request.form
    key, attempt_text, plan = form.get("key", ""), form.get("attempt", "0"), form.get("plan", "")
    attempt = int(attempt_text) if attempt_text.isdigit() and len(attempt_text) < 6 else -1
    if not csrf.valid(form.get("csrf"), operator, _purpose(action, key, attempt, plan), app.clock.now()):
        log.warning("console action refused: no valid CSRF token",
                    extra=logs.event("console.refused", action=action, operator=operator))
        raise Forbidden("this form has expired or did not come from this console: open the confirmation page again")
    done = actions.cancel(app, key, operator) if action == actions.CANCEL else actions.rerun(
        app, key, attempt, operator, plan)
    # Post/redirect/get: reloading the page that follows does not post the form again.
    location = "/deliveries/" + quote(done.key, safe="") + "?" + urlencode({"done": done.notice})
    return "", 303, {"Location": location, "Cache-Control": "no-store"}
