"""The client's errors: `GatewayError` for anything the gateway (or the way to it) refused, and
`MalformedEvent` for a message that is not a completion event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Statuses after which the same request, with the same idempotency key, may succeed: 409 the key is
# still in flight, 429 and 503 the gateway (or CARTO, or Pub/Sub behind it) asks to come back later,
# 504 a front end gave up waiting (the gateway may have taken it: the key makes the retry safe).
RETRYABLE_STATUSES = frozenset({409, 429, 503, 504})


@dataclass(frozen=True)
class FieldError:
    """One violation the gateway named: a JSON Pointer into the payload (or a parameter) and what is wrong."""

    path: str
    message: str


class GatewayError(Exception):
    """The gateway did not take the request: its RFC 9457 problem, or why no answer came.

    `status` is the HTTP status (None when no answer came: connection refused, timeout, no
    credentials, Pub/Sub unreachable); `code` the problem's stable code; `errors` the fields it
    named (validation); `retryable` whether the same request with the same key may succeed later.
    """

    def __init__(self, message: str, *, status: int | None, code: str, errors: tuple[FieldError, ...] = (),
                 retryable: bool | None = None, problem: Mapping[str, Any] | None = None,
                 retry_after: float | None = None, idempotency_key: str | None = None):
        super().__init__(message)
        self.status, self.code, self.errors = status, code, tuple(errors)
        self.retryable = (status in RETRYABLE_STATUSES) if retryable is None else retryable
        self.problem: dict[str, Any] = dict(problem or {})
        self.retry_after = retry_after
        self.idempotency_key = idempotency_key

    @classmethod
    def from_problem(cls, workflow: str, status: int, problem: Mapping[str, Any], *,
                     retry_after: float | None = None, idempotency_key: str | None = None) -> GatewayError:
        """The error for a 4xx/5xx answer whose body is (or stands in for) a problem+json."""
        title = problem.get("title") if isinstance(problem.get("title"), str) else f"HTTP {status}"
        detail = problem.get("detail") if isinstance(problem.get("detail"), str) else ""
        code = problem.get("code") if isinstance(problem.get("code"), str) else f"http-{status}"
        errors = tuple(FieldError(str(e.get("path", "")), str(e.get("message", "")))
                       for e in problem.get("errors") or () if isinstance(e, Mapping))
        message = f"workflow {workflow}: HTTP {status} {title}" + (f": {detail}" if detail else "")
        return cls(message, status=status, code=code, errors=errors, problem=problem, retry_after=retry_after,
                   idempotency_key=idempotency_key)


class MalformedEvent(ValueError):
    """What a subscriber received is not a completion event of the gateway; the message says why."""
