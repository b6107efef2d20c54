"""The gateway's one error tree, and the one place that turns it into problem+json.

    GatewayError                      any failure a caller is told about (status, code)
    ├── MalformedRequest        400   body is not parseable JSON
    ├── AuthenticationFailed    401   no configured scheme accepted the request
    │   └── SignatureError      401   a signature header is missing, malformed or wrong
    ├── NotFound                404   unknown workflow, job or route
    ├── MethodNotAllowed        405
    ├── DeliveryInFlight        409   the same idempotency key is still being processed
    ├── PayloadTooLarge         413   body over GATEWAY_MAX_BODY_BYTES
    ├── UnsupportedMediaType    415   not application/json
    ├── Unprocessable           422   schema or type violation (carries `errors`)
    │   └── IdempotencyKeyReused 422  same key, different body
    ├── UpstreamRejected        502   CARTO refused the job; retrying will not help
    └── Unavailable             503   CARTO, Pub/Sub or the ledger is down; retry later
        ├── CartoUnavailable
        ├── PublishUnavailable
        └── LedgerUnavailable

    ConfigError                       a bad setting or workflow file: the instance must not start

Problem details follow RFC 9457 (https://www.rfc-editor.org/rfc/rfc9457).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROBLEM_TYPE_BASE = "https://github.com/carto-workflows-gateway/problems/"


@dataclass(frozen=True)
class FieldError:
    """One violation: a JSON Pointer into the payload (or a parameter name) and what is wrong."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class GatewayError(Exception):
    """Base of every error a caller is told about; carries an HTTP status and a stable code."""

    status = 500
    code = "internal"
    title = "Internal error"

    def __init__(self, detail: str = "", *, errors: list[FieldError] | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = list(errors or [])
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 body for this error."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        return body

    def response_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/problem+json"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        headers.update(self.headers)
        return headers

    def response(self) -> tuple[str, int, dict[str, str]]:
        """(body, status, headers) ready for Flask."""
        return json.dumps(self.problem()), self.status, self.response_headers()


class MalformedRequest(GatewayError):
    status, code, title = 400, "malformed-json", "Malformed request body"


class AuthenticationFailed(GatewayError):
    status, code, title = 401, "unauthenticated", "Authentication failed"


class SignatureError(AuthenticationFailed):
    """A signature header is missing, malformed, stale or does not match. Never says which secret."""

    code = "bad-signature"


class NotFound(GatewayError):
    status, code, title = 404, "not-found", "Not found"


class MethodNotAllowed(GatewayError):
    status, code, title = 405, "method-not-allowed", "Method not allowed"


class DeliveryInFlight(GatewayError):
    status, code, title = 409, "delivery-in-flight", "Same idempotency key still in flight"


class PayloadTooLarge(GatewayError):
    status, code, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(GatewayError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class Unprocessable(GatewayError):
    status, code, title = 422, "validation-failed", "Payload does not match the workflow"


class IdempotencyKeyReused(Unprocessable):
    code, title = "idempotency-key-reused", "Idempotency key reused with a different body"


class UpstreamRejected(GatewayError):
    status, code, title = 502, "carto-rejected", "CARTO refused the job"


class Unavailable(GatewayError):
    status, code, title = 503, "unavailable", "Service unavailable, retry later"

    def __init__(self, detail: str = "", *, retry_after: int | None = 5, **kw: Any):
        super().__init__(detail, retry_after=retry_after, **kw)


class CartoUnavailable(Unavailable):
    code, title = "carto-unavailable", "CARTO is unavailable, retry later"


class PublishUnavailable(Unavailable):
    code, title = "pubsub-unavailable", "Pub/Sub is unavailable, retry later"


class LedgerUnavailable(Unavailable):
    code, title = "ledger-unavailable", "The delivery ledger is unavailable, retry later"


class ConfigError(Exception):
    """A bad setting or workflow file; raised at load time so the instance does not start."""
