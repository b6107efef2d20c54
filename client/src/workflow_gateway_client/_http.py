"""`trigger`: run a workflow through the gateway's `POST /hooks/{workflow}`.

Authentication is a Google-signed ID token for the gateway's URL (the workflow's `google-id-token`
scheme checks it): from the metadata server on Google Cloud, or from the service account key that
GOOGLE_APPLICATION_CREDENTIALS names elsewhere (https://google.aip.dev/auth/4110). Tokens are kept
per audience until google-auth says they are due for a refresh.

Retries. Every attempt carries the same `Idempotency-Key`, so the gateway starts at most one job
whatever happens to the answers: a retry after a lost answer gets the original job (200,
`duplicate: true`), a retry while the first attempt is still in flight a 409, which is retried too.
Retried: no connection, a timeout, and 409, 429, 503, 504. Each wait is the answer's `Retry-After`
(never sooner) plus "full jitter" backoff, a random share of an exponentially growing cap
(https://aws.amazon.com/builders-library/timeouts-retries-and-backoff-with-jitter/), within a
bounded number of attempts and a total time. A small loop rather than urllib3's `Retry`: that one
does not retry POSTs by default, does not bound the total time, and ends in an exception that
drops the last problem+json, which the caller needs. requests and google-auth are imported on the
first call, so a subscriber that only parses events never loads them.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from workflow_gateway_client.errors import GatewayError

if TYPE_CHECKING:
    import requests

TokenFetcher = Callable[[str], str]
WORKFLOW_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    """How `trigger` retries: at most `attempts` requests, none started after `total_s`."""

    attempts: int = 5
    total_s: float = 120.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def wait_s(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
        return (retry_after or 0.0) + random.uniform(0.0, cap)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Triggered:
    """The gateway took the request: its 202 (a new job, or `queued`) or 200 (the replay of an earlier one).
    A queued delivery (CARTO busy, or the workflow at its cap or paused) has no job yet: `job_id` is None
    and `status_url` is its delivery's; its completion event still comes."""

    job_id: str | None
    workflow: str
    status_url: str | None
    delivery_id: str | None
    duplicate: bool
    idempotency_key: str
    status: int
    attempts: int
    body: Mapping[str, Any]
    queued: bool = False


def trigger(url: str, workflow: str, payload: Any, *, idempotency_key: str | None = None,
            audience: str | None = None, timeout: float = 60.0, retry: RetryPolicy = DEFAULT_RETRY,
            token_fetcher: TokenFetcher | None = None, session: requests.Session | None = None) -> Triggered:
    """Run `workflow` with `payload` through the gateway at `url`; raises GatewayError if it is not taken.

    `audience` (of the ID token) defaults to `url`; a new idempotency key is made when none is given
    and is returned, and re-sent on every retry. `timeout` bounds each attempt's wait for an answer.
    `token_fetcher(audience) -> token` replaces the Google ID token (tests, other schemes).
    """
    if not isinstance(workflow, str) or not WORKFLOW_NAME.fullmatch(workflow):
        raise ValueError(f"not a workflow name: {workflow!r}")
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()  # before anything is sent
    key = idempotency_key or str(uuid.uuid4())
    target = f"{url.rstrip('/')}/hooks/{workflow}"
    fetch = token_fetcher or _default_tokens().token
    deadline = retry.clock() + retry.total_s
    attempt = 0
    while True:
        attempt += 1
        try:
            token = _token(fetch, audience or url, key)
        except GatewayError as exc:
            failure, answer = exc, None
        else:
            headers = {"Content-Type": "application/json", "Accept": "application/json",
                       "Idempotency-Key": key, "Authorization": f"Bearer {token}"}
            failure, answer = _attempt(session or _session(), target, body, headers, timeout, workflow, key)
        if answer is not None:
            return _accepted(answer, workflow, key, attempt)
        assert failure is not None
        if not failure.retryable or attempt >= retry.attempts:
            raise failure
        wait = retry.wait_s(attempt, failure.retry_after)
        if retry.clock() + wait > deadline:
            raise failure
        retry.sleep(wait)


def _attempt(session: requests.Session, target: str, body: bytes, headers: dict[str, str], timeout: float,
             workflow: str, key: str) -> tuple[GatewayError | None, requests.Response | None]:
    import requests

    try:
        answer = session.post(target, data=body, headers=headers, timeout=(min(CONNECT_TIMEOUT_S, timeout), timeout))
    except (requests.ConnectionError, requests.Timeout) as exc:
        return GatewayError(f"workflow {workflow}: no answer from the gateway ({type(exc).__name__})", status=None,
                            code="no-answer", retryable=True, idempotency_key=key), None
    if answer.status_code in (200, 202):
        return None, answer
    retry_after = _retry_after(answer.headers.get("Retry-After"))
    return GatewayError.from_problem(workflow, answer.status_code, _problem(answer), retry_after=retry_after,
                                     idempotency_key=key), None


def _accepted(answer: requests.Response, workflow: str, key: str, attempts: int) -> Triggered:
    try:
        body = answer.json()
    except ValueError:
        body = None
    queued = isinstance(body, dict) and body.get("queued") is True and body.get("job_id") is None
    if not isinstance(body, dict) or not (isinstance(body.get("job_id"), str) or queued):
        raise GatewayError(f"workflow {workflow}: HTTP {answer.status_code} without a job id", retryable=False,
                           status=answer.status_code, code="unexpected-answer", idempotency_key=key)
    return Triggered(job_id=body["job_id"], workflow=str(body.get("workflow") or workflow),
                     status_url=body.get("status_url"), delivery_id=body.get("delivery_id"),
                     duplicate=bool(body.get("duplicate")), idempotency_key=key, status=answer.status_code,
                     attempts=attempts, body=MappingProxyType(body), queued=queued)


def _token(fetch: TokenFetcher, audience: str, key: str) -> str:
    try:
        return fetch(audience)
    except GatewayError:
        raise
    except Exception as exc:  # google-auth's errors, or the injected fetcher's: never the token itself
        from google.auth.exceptions import TransportError

        unreachable = isinstance(exc, TransportError)  # the metadata server or token endpoint did not answer
        raise GatewayError(f"could not get an ID token for {audience} ({type(exc).__name__}: {exc})", status=None,
                           code="token-unavailable" if unreachable else "no-credentials", retryable=unreachable,
                           idempotency_key=key) from exc


def _problem(answer: requests.Response) -> dict[str, Any]:
    """The problem+json body; a stand-in built from the status when a proxy answered something else."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"status": answer.status_code, "title": answer.reason or f"HTTP {answer.status_code}",
            "detail": (answer.text or "")[:500]}


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time()) if moment.tzinfo else None


class GoogleIdTokens:
    """Google-signed ID tokens per audience, through google-auth, refreshed when due."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credentials: dict[str, Any] = {}
        self._request: Any = None

    def token(self, audience: str) -> str:
        import google.auth.transport.requests
        import google.oauth2.id_token

        with self._lock:
            if self._request is None:
                self._request = google.auth.transport.requests.Request()
            credentials = self._credentials.get(audience)
            if credentials is None:
                credentials = google.oauth2.id_token.fetch_id_token_credentials(audience, request=self._request)
                self._credentials[audience] = credentials
            if not credentials.valid:
                credentials.refresh(self._request)
            return str(credentials.token)


_tokens_lock = threading.Lock()
_tokens: GoogleIdTokens | None = None
_sessions = threading.local()


def _default_tokens() -> GoogleIdTokens:
    global _tokens
    with _tokens_lock:
        if _tokens is None:
            _tokens = GoogleIdTokens()
        return _tokens


def _session() -> requests.Session:
    """One session per thread (requests sessions are not documented as thread-safe), kept for reuse."""
    session = getattr(_sessions, "session", None)
    if session is None:
        import requests

        session = _sessions.session = requests.Session()
    return session
