"""The gateway's one error tree, and the one place that turns it into problem+json.

    GatewayError                      any failure a caller is told about (status, code)
    ├── MalformedRequest        400   body is not parseable JSON
    ├── PoisonMessage           400   a Pub/Sub message that can never be processed: acked, logged
    ├── DeliveryIdTooLong       400   a delivery id or idempotency key over 256 characters
    ├── AuthenticationFailed    401   no configured scheme accepted the request
    │   ├── SignatureError      401   a signature header is missing, malformed or wrong
    │   └── NotAnOperator       401   /jobs or /openapi.json without an operator credential
    ├── Forbidden               403   the console: no valid CSRF token, or a caller it does not serve
    ├── NotFound                404   unknown workflow, job or route
    ├── MethodNotAllowed        405
    ├── DeliveryInFlight        409   the same idempotency key is still being processed
    ├── ActionRefused           409   a cancel or re-run that does not apply to the delivery as it stands
    ├── PayloadTooLarge         413   body over GATEWAY_MAX_BODY_BYTES
    ├── UnsupportedMediaType    415   not application/json
    ├── WorkflowBusy            429   the workflow is at its cap and its `when_busy` is `refuse`
    ├── Unprocessable           422   schema or type violation (carries `errors`)
    │   └── IdempotencyKeyReused 422  same key, different body
    ├── UpstreamRejected        502   CARTO refused the job; retrying will not help
    └── Unavailable             503   CARTO, Pub/Sub, Cloud Tasks or the ledger is down; retry later
        ├── CartoUnavailable
        │   ├── SubmitOutcomeUnknown  the job POST may have reached CARTO: the claim is kept
        │   └── QueryTimedOut   a result read did not finish within its budget (never an HTTP answer)
        ├── PublishUnavailable
        ├── TasksUnavailable
        └── LedgerUnavailable

    ConfigError                       a bad setting or workflow file: the instance must not start

Problem details follow RFC 9457 (https://www.rfc-editor.org/rfc/rfc9457). Each class also says, for the
person who follows a problem's `type`, what happened and what to do: the `webhook` function serves that text
at `/problems/{code}` (a relative `type`, RFC 9457 §3.1.1), and every code at `/problems`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

PROBLEM_TYPE_BASE = "/problems/"  # relative: it resolves against the function's own URL
OPERATORS_ONLY = ("This route is for operators: send Authorization: Bearer with an operator token or a Google ID "
                  "token")


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
    what_happened = "The gateway failed in a way it did not expect: a bug, not something wrong with the request."
    what_to_do = ("Retry later. If it keeps failing, give the operator the time of the request; the function's "
                  "log has the error's type under the same trace.")

    def __init__(self, detail: str = "", *, errors: list[FieldError] | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None, incident: str | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = list(errors or [])
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        self.incident = incident

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
        if self.incident:
            body["incident"] = self.incident
        return body

    @classmethod
    def page(cls) -> str:
        """What a person who follows this problem's `type` reads (plain text)."""
        return (f"{cls.code}: {cls.title} (HTTP {cls.status})\n\n"
                f"What happened: {cls.what_happened}\n\nWhat to do: {cls.what_to_do}\n")

    def response_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/problem+json"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        headers.update(self.headers)
        return headers

    def response(self) -> tuple[str, int, dict[str, str]]:
        """(body, status, headers) ready for Flask."""
        return json.dumps(self.problem()), self.status, self.response_headers()


def crash() -> GatewayError:
    """The 500 of an unexpected exception: a fresh incident id, in the answer and in its log line, so the
    operator finds the line a sender quotes (the exception's values stay out of both)."""
    incident = secrets.token_hex(8)
    return GatewayError(f"internal error, incident {incident}: give the operator this id", incident=incident)


class MalformedRequest(GatewayError):
    status, code, title = 400, "malformed-json", "Malformed request body"
    what_happened = ("The body could not be read as strict JSON: invalid UTF-8, a byte order mark, NaN or Infinity, a duplicate "
                     "key, nesting too deep, or a body the server could not frame.")
    what_to_do = ("Send one UTF-8 JSON document without a BOM; `detail` names the first thing that is wrong. Retrying the same "
                  "body will fail the same way.")


class PoisonMessage(GatewayError):
    """A tracking or request message that can never be processed; it is acked and logged."""

    status, code, title = 400, "poison-message", "Message cannot be processed"
    what_happened = ("A Pub/Sub message the gateway received (a tracking or job request message) can never be processed: "
                     "it is not valid JSON or lacks a field. It was acknowledged so it is not redelivered forever.")
    what_to_do = ("Publish well-formed messages only; the function's log names the message id and what was wrong, "
                  "never its content.")


class DeliveryIdTooLong(GatewayError):
    status, code, title = 400, "delivery-id-too-long", "Delivery id or idempotency key too long"
    what_happened = ("The delivery's id (the scheme's id header, e.g. webhook-id) or its idempotency key (the "
                     "Idempotency-Key header, the workflow's configured header or body field, a request message's "
                     "attribute) is longer than the gateway keeps: 256 characters.")
    what_to_do = "Send an id or key of at most 256 characters; a UUID or a hash is plenty."


class AuthenticationFailed(GatewayError):
    status, code, title = 401, "unauthenticated", "Authentication failed"
    what_happened = ("None of the workflow's authentication schemes accepted the request. Which header was wrong goes to the "
                     "gateway's log, never into the answer.")
    what_to_do = ("Check that the sender signs with the secret (or token) configured for this workflow, over the exact bytes it "
                  "sends, with a fresh timestamp; the operator can read the reason in the log.")


class SignatureError(AuthenticationFailed):
    """A signature header is missing, malformed, stale or does not match. Never says which secret."""

    code = "bad-signature"
    what_happened = ("A signature header is missing, malformed, outside the replay window, or does not match the body; the "
                     "answer never says which secret was tried.")
    what_to_do = ("Sign the raw body bytes exactly as sent (no re-serialising) with the workflow's current secret, and check the "
                  "sender's clock; after a rotation both secrets work until the old one is removed.")


class NotAnOperator(AuthenticationFailed):
    """No operator credential, or a wrong one. `reason` is for the log (never a value)."""

    code, title = "not-an-operator", "Operator credentials required"
    what_happened = ("This route (/jobs/{job_id}, /openapi.json) is for the gateway's operators. The request carried no "
                     "operator credential or a wrong one; a sender's webhook signature is never one.")
    what_to_do = ("Send `Authorization: Bearer` with a token from GATEWAY_OPERATOR_TOKENS, or a Google ID token for this "
                  "function's URL (`gcloud auth print-identity-token --audiences=URL`) of an email in GATEWAY_OPERATORS. "
                  "`python -m gateway status JOB_ID` does it for you.")

    def __init__(self, reason: str):
        super().__init__(OPERATORS_ONLY, headers={"WWW-Authenticate": 'Bearer realm="operators"'})
        self.reason = reason


class Forbidden(GatewayError):
    status, code, title = 403, "forbidden", "Forbidden"
    what_happened = ("The operators' console refused the request: a form was posted without a valid CSRF token (missing, "
                     "expired, made for another delivery or operator, or by an instance since restarted), or the caller is "
                     "not one the console serves.")
    what_to_do = ("Open the confirmation page again and post its form; locally, open the console from this machine; in the "
                  "cloud, open it through `gcloud run services proxy` as a member of CONSOLE_INVOKERS.")


class NotFound(GatewayError):
    status, code, title = 404, "not-found", "Not found"
    what_happened = "No such workflow, job or route: the name in the URL is unknown to this instance."
    what_to_do = ("Check the path: webhooks go to /hooks/{workflow} with a workflow deployed on this instance, jobs to "
                  "/jobs/{job_id} as returned in `status_url`.")


class MethodNotAllowed(GatewayError):
    status, code, title = 405, "method-not-allowed", "Method not allowed"
    what_happened = "The route exists but not for this HTTP method."
    what_to_do = "Use the method in the `Allow` header: POST for /hooks, GET or DELETE for /jobs, GET for the rest."


class DeliveryInFlight(GatewayError):
    status, code, title = 409, "delivery-in-flight", "Same idempotency key still in flight"
    what_happened = "A request with the same idempotency key is still being processed, here or on another instance."
    what_to_do = "Retry after `Retry-After` seconds: the answer will then be the job the first request made."


class ActionRefused(GatewayError):
    status, code, title = 409, "action-refused", "The action does not apply"
    what_happened = ("The action (the console's, or DELETE /jobs/{id}) does not apply to the delivery as it stands: a cancel "
                     "of a job that has already ended (or has no job yet), or a re-run of a delivery that has not finished "
                     "or whose workflow file now takes other parameters.")
    what_to_do = "Reload the delivery's page to see its current state; nothing was changed."


class PayloadTooLarge(GatewayError):
    status, code, title = 413, "payload-too-large", "Payload too large"
    what_happened = "The body is over the gateway's size limit (GATEWAY_MAX_BODY_BYTES); it was refused before being read."
    what_to_do = "Send a smaller payload, or ask the operator to raise GATEWAY_MAX_BODY_BYTES."


class UnsupportedMediaType(GatewayError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"
    what_happened = "The request's Content-Type is not JSON."
    what_to_do = "Send the body with `Content-Type: application/json`."


class WorkflowBusy(GatewayError):
    status, code, title = 429, "workflow-busy", "The workflow is busy, retry later"
    what_happened = ("The workflow already runs as many jobs as its `admission.max_concurrent_jobs` allows, and its "
                     "`when_busy` is `refuse`: the delivery was not recorded and nothing will run for it.")
    what_to_do = ("Send it again after `Retry-After` seconds (same idempotency key); it is accepted once a running job of "
                  "the workflow has ended.")

    def __init__(self, detail: str = "", *, retry_after: int | None = 30, **kw: Any):
        super().__init__(detail, retry_after=retry_after, **kw)


class Unprocessable(GatewayError):
    status, code, title = 422, "validation-failed", "Payload does not match the workflow"
    what_happened = ("The JSON is well formed but does not match the workflow: its schema, a parameter's type, or a required "
                     "value is missing. `errors` lists each violation with a JSON Pointer.")
    what_to_do = ("Fix each entry of `errors` (path and message) and send again; POST /hooks/{workflow}/validate shows what would"
                  " be submitted without submitting it.")


class IdempotencyKeyReused(Unprocessable):
    code, title = "idempotency-key-reused", "Idempotency key reused with a different body"
    what_happened = ("The idempotency key was already used for a delivery with a different body; the gateway will not run a "
                     "second job under the same key.")
    what_to_do = ("Use a new idempotency key (or delivery id) for a new payload; to replay the original delivery, send its exact "
                  "body again.")


class UpstreamRejected(GatewayError):
    status, code, title = 502, "carto-rejected", "CARTO refused the job"
    what_happened = ("CARTO refused the job (bad request, unknown procedure or connection, permission denied); nothing was "
                     "submitted and retrying the same request will not help.")
    what_to_do = ("Read `detail` for CARTO's reason; check the workflow's query, connection and the token's permissions with the "
                  "operator.")


class Unavailable(GatewayError):
    status, code, title = 503, "unavailable", "Service unavailable, retry later"
    what_happened = ("A service the gateway needs to record the delivery (its ledger, Pub/Sub or Cloud Tasks) is unavailable "
                     "right now; nothing was half-done.")
    what_to_do = "Retry after `Retry-After` seconds; the same request will be accepted once the service is back."

    def __init__(self, detail: str = "", *, retry_after: int | None = 5, **kw: Any):
        super().__init__(detail, retry_after=retry_after, **kw)


class CartoUnavailable(Unavailable):
    code, title = "carto-unavailable", "CARTO is unavailable, retry later"
    what_happened = "CARTO could not be reached or answered that it is busy or failing; no job was submitted."
    what_to_do = "Retry after `Retry-After` seconds with the same idempotency key; it will not run twice."


class SubmitOutcomeUnknown(CartoUnavailable):
    """The job POST may or may not have reached CARTO (reset or timeout after sending)."""

    code = "carto-outcome-unknown"
    what_happened = ("The job request may or may not have reached CARTO (the connection broke or timed out after it was "
                     "sent); the gateway does not know whether a job was started, so it did not submit again.")
    what_to_do = ("Retry later with the same idempotency key. The gateway keeps the delivery's claim and reconciles it with "
                  "CARTO's job list, so the job runs at most once; until then a retry is answered 409 delivery-in-flight.")


class QueryTimedOut(CartoUnavailable):
    """A read through `/query` did not complete within its time budget."""

    code = "carto-query-timeout"
    what_happened = "A read through CARTO's /query endpoint did not complete within its time budget."
    what_to_do = "Nothing: the completion event went out with the read's error; read the table yourself if you need it."


class PublishUnavailable(Unavailable):
    code, title = "pubsub-unavailable", "Pub/Sub is unavailable, retry later"
    what_happened = ("Pub/Sub could not take the message the gateway needs to follow or announce the job; the delivery was not "
                     "completed.")
    what_to_do = "Retry after `Retry-After` seconds with the same idempotency key; it will not run twice."


class TasksUnavailable(Unavailable):
    code, title = "tasks-unavailable", "Cloud Tasks is unavailable, retry later"
    what_happened = ("Cloud Tasks could not take the next status check of a job, so `poll` failed and its trigger "
                     "(the subscription or the queue) retries that check.")
    what_to_do = ("Nothing, as a sender: the job is checked again once Cloud Tasks answers, and the sweeper schedules "
                  "any check that was lost.")


class LedgerUnavailable(Unavailable):
    code, title = "ledger-unavailable", "The delivery ledger is unavailable, retry later"
    what_happened = ("The delivery ledger (the record that keeps deliveries from running twice) could not be read or written; "
                     "nothing was submitted.")
    what_to_do = "Retry after `Retry-After` seconds with the same idempotency key."


def problem_types() -> dict[str, type[GatewayError]]:
    """Every code the tree can produce, by code: the classes of this module, whatever else is imported."""
    found = {cls.code: cls for cls in sorted(_TREE, key=_depth, reverse=True)}  # a parent's code wins over a subclass
    return dict(sorted(found.items()))


def _depth(cls: type) -> int:
    return len(cls.__mro__)


def problem_index() -> str:
    """The page at /problems: each code with its status, title and where its explanation is."""
    lines = [f"{PROBLEM_TYPE_BASE}{code}  {cls.status}  {cls.title}" for code, cls in problem_types().items()]
    return "Problem types this gateway answers with (the `type` of each problem+json):\n\n" + "\n".join(lines) + "\n"


class ConfigError(Exception):
    """A bad setting or workflow file; raised at load time so the instance does not start."""


_TREE = tuple(value for value in list(globals().values())
              if isinstance(value, type) and issubclass(value, GatewayError))
