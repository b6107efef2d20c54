"""The request shell the two HTTP functions share (`webhook` through `gateway.http`, `console` through
`gateway.console.app`): a log context for the request, every GatewayError answered in the surface's own
form, a bug an honest problem+json 500 with an incident id (logged by type only), and the line saying how the
request was answered."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.errors import GatewayError, crash

if TYPE_CHECKING:
    import flask

Response = tuple[Any, int, dict[str, str]]  # body: str, or an iterator of bytes when streamed


def serve(request: flask.Request, route: Callable[[], Response], error: Callable[[GatewayError], Response],
          log: logging.Logger, *, crashed: str, answered: Callable[[str | None], str] | None = None,
          **context: Any) -> Response:
    """Answer `request` with `route()`; `error` renders a GatewayError. Never raises an Exception: bad input
    is a 4xx, a bug a problem+json 500 with an incident id, logged as event `crashed` with that id (by type
    only: values may hold secrets). `answered`,
    given the problem code (None on success), names the event of the "answered" line; without it, none."""
    with logs.bound(route=request.path, **context):
        code = None
        try:
            response = route()
        except GatewayError as exc:
            response, code = error(exc), exc.code
        except Exception:  # a bug: problem+json on either surface, its incident id in the answer and the line
            failure = crash()
            log.exception("unhandled error", extra=logs.event(crashed, incident=failure.incident))
            response, code = failure.response(), failure.code
        if answered is not None:
            log.info("answered %s %s with %s", request.method, request.path, response[1],
                     extra=logs.event(answered(code), status=response[1], code=code))
    return response
