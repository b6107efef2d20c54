"""Client for CARTO's SQL API: the job calls, the synchronous query, and the tokens they carry.

    POST   {base}/v3/sql/{connection}/job            {"query", "queryParameters", "metadata"} -> the job
    GET    {base}/v3/sql/{connection}/job/{id}       the job, in either dialect (`gateway.carto.dialects`)
    DELETE {base}/v3/sql/{connection}/job/{id}       cancel
    GET    {base}/v3/sql/jobs                         list
    POST   {base}/v3/sql/{connection}/query          {"q", "queryParameters"} -> {rows, schema, meta} (reads)

CARTO echoes the bearer token in its answers: every body is passed through `strip_secrets`
before anything else sees it. Only what cannot have been applied twice is retried — a connection
that was never made, or a 429/503 answer, which means the request was not acted on. A POST whose
fate is unknown (reset or timeout after it was sent) is reported as `SubmitOutcomeUnknown`, never
retried blindly: the ledger and the sweeper reconcile it with CARTO's job list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from gateway.carto.dialects import JobStatus, job_id_of, jobs_of, parse_status, strip_secrets
from gateway.errors import CartoUnavailable, NotFound, QueryTimedOut, SubmitOutcomeUnknown, UpstreamRejected
from gateway.outbound import Answer, Http, NeverConnected, NoAnswer
from gateway.settings import Secret

MAX_RETRY_WAIT_S = 5.0


class TokenSource(Protocol):
    """Gives the bearer token for the next CARTO call."""

    def token(self) -> str: ...


@dataclass
class StaticToken:
    """A long-lived API access token from the environment."""

    secret: Secret

    def token(self) -> str:
        return self.secret.reveal()


class ClientCredentials:
    """OAuth client-credentials token for CARTO M2M clients, refreshed a minute before it expires."""

    REFRESH_MARGIN_S = 60.0

    def __init__(self, http: Http, url: str, client_id: str, client_secret: Secret,
                 *, clock: Callable[[], float] = time.time, timeout_s: float = 10.0):
        self._http, self._url, self._client_id = http, url, client_id
        self._client_secret, self._clock, self._timeout_s = client_secret, clock, timeout_s
        self._token: str | None = None
        self._expires_at = 0.0

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self._client_id!r})"

    def token(self) -> str:
        if self._token is None or self._clock() >= self._expires_at - self.REFRESH_MARGIN_S:
            self._refresh()
        assert self._token is not None
        return self._token

    def _refresh(self) -> None:
        form = {"grant_type": "client_credentials", "client_id": self._client_id,
                "client_secret": self._client_secret.reveal(), "audience": "carto-cloud-native-api"}
        try:
            answer = self._http.request("POST", self._url, body=urlencode(form).encode(),
                                        headers={"Content-Type": "application/x-www-form-urlencoded",
                                                 "Accept": "application/json"},
                                        timeout=(self._timeout_s, self._timeout_s))
        except (NeverConnected, NoAnswer):
            raise CartoUnavailable("CARTO's token endpoint is unreachable") from None
        if answer.status >= 500 or answer.status == 429:
            raise CartoUnavailable(f"CARTO's token endpoint answered {answer.status}")
        try:
            body = answer.json()
            token, lifetime = body["access_token"], float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise UpstreamRejected(f"CARTO's token endpoint refused the client ({answer.status})") from None
        self._token, self._expires_at = str(token), self._clock() + lifetime


class CartoClient:
    """The four calls of CARTO's SQL job API, with timeouts and honest retries."""

    def __init__(self, http: Http, tokens: TokenSource, *, timeout_s: float = 30.0,
                 connect_timeout_s: float = 5.0, attempts: int = 3, sleep: Callable[[float], None] = time.sleep,
                 workflow_tokens: Mapping[str, TokenSource] | None = None):
        self._http, self._tokens = http, tokens
        self._workflow_tokens = dict(workflow_tokens or {})
        self._connect_timeout_s, self._read_timeout_s = connect_timeout_s, timeout_s
        self._timeout = (connect_timeout_s, timeout_s)
        self._attempts, self._sleep = attempts, sleep

    @property
    def longest_submit_s(self) -> float:
        """The longest one `submit` can take, retries and their waits included: a claim younger than
        this may still have its POST in flight, so nobody may resubmit it yet."""
        per_attempt = self._connect_timeout_s + self._read_timeout_s
        return self._attempts * per_attempt + (self._attempts - 1) * MAX_RETRY_WAIT_S

    @property
    def longest_post_s(self) -> float:
        """The longest one job POST can stay in flight (connect and read timeouts): after that, a POST of
        unknown outcome has landed or never will, and CARTO's job list tells which."""
        return self._connect_timeout_s + self._read_timeout_s

    def submit(self, base_url: str, connection: str, query: str, parameters: Mapping[str, Any] | list[Any], *,
               workflow: str | None = None, metadata: Mapping[str, Any] | None = None,
               budget_s: float | None = None) -> str:
        """Create the job; return its id. CartoUnavailable: safe to retry; UpstreamRejected: it never will work.

        `parameters` is an object of named parameters (BigQuery) or an array in placeholder order
        (Snowflake, PostgreSQL, Redshift); `metadata` is stored with the job by CARTO's SQL API.
        With `budget_s` (the webhook's inline try) there is one attempt, and no answer within the
        budget is SubmitOutcomeUnknown: the caller queues the delivery instead of waiting."""
        body: dict[str, Any] = {"query": query,
                                "queryParameters": list(parameters) if isinstance(parameters, list) else dict(parameters)}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        answer = self._call("POST", f"{base_url}/v3/sql/{connection}/job", workflow, json_body=body, budget_s=budget_s)
        job_id = job_id_of(answer)
        if not job_id:  # accepted, so the job may exist: only the job list can tell
            raise SubmitOutcomeUnknown("CARTO accepted the job but its answer carries no externalId or jobId")
        return job_id

    def job(self, base_url: str, connection: str, job_id: str, *, workflow: str | None = None) -> dict[str, Any]:
        """The job's body as CARTO answers it (token stripped); NotFound when CARTO does not know it."""
        body = self._call("GET", f"{base_url}/v3/sql/{connection}/job/{job_id}", workflow)
        return body if isinstance(body, dict) else {}

    def status(self, base_url: str, connection: str, job_id: str, *, workflow: str | None = None) -> JobStatus:
        return parse_status(job_id, self.job(base_url, connection, job_id, workflow=workflow))

    def cancel(self, base_url: str, connection: str, job_id: str, *, workflow: str | None = None) -> JobStatus:
        """Ask CARTO to cancel the job; the job in its answer tells whether it had already ended."""
        body = self._call("DELETE", f"{base_url}/v3/sql/{connection}/job/{job_id}", workflow)
        return parse_status(job_id, body if isinstance(body, Mapping) else {})

    def list_jobs(self, base_url: str, *, workflow: str | None = None) -> list[dict[str, Any]]:
        return jobs_of(self._call("GET", f"{base_url}/v3/sql/jobs", workflow))

    def query(self, base_url: str, connection: str, sql: str, parameters: Mapping[str, Any] | list[Any] | None = None,
              *, workflow: str | None = None, budget_s: float | None = None) -> dict[str, Any]:
        """Run a read-only statement through the synchronous `/query` endpoint: `{rows, schema, meta}`.
        A read may be repeated, so it is retried like a GET; with `budget_s`, every attempt and wait fits
        in that many seconds (QueryTimedOut when they do not)."""
        body: dict[str, Any] = {"q": sql}
        if parameters is not None:
            body["queryParameters"] = parameters
        deadline = None if budget_s is None else time.monotonic() + budget_s
        answer = self._call("POST", f"{base_url}/v3/sql/{connection}/query", workflow, json_body=body, read=True,
                            deadline=deadline)
        return answer if isinstance(answer, dict) else {"rows": answer if isinstance(answer, list) else []}

    def _call(self, method: str, url: str, workflow: str | None, *, json_body: Any = None, read: bool = False,
              deadline: float | None = None, budget_s: float | None = None) -> Any:
        tokens = self._workflow_tokens.get(workflow or "", self._tokens)
        creates = method == "POST" and not read
        attempts = 1 if budget_s is not None else self._attempts
        for attempt in range(1, attempts + 1):
            timeout = self._timeout if deadline is None else _within(self._timeout, deadline)
            if budget_s is not None:  # the webhook's inline try: one attempt within the budget
                timeout = (min(self._connect_timeout_s, budget_s / 2), min(self._read_timeout_s, budget_s))
            wait = self._attempt(method, url, tokens, json_body, creates=creates, last=attempt == attempts,
                                 timeout=timeout)
            if not isinstance(wait, float):
                return wait.body
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise QueryTimedOut("CARTO did not answer within the time budget")
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, method: str, url: str, tokens: TokenSource, json_body: Any, *, creates: bool,
                 last: bool, timeout: tuple[float, float]) -> Any:
        headers = {"Authorization": f"Bearer {tokens.token()}", "Accept": "application/json"}
        body = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(json_body, allow_nan=False).encode()  # strict JSON, as requests sent it
        try:
            answer = self._http.request(method, url, headers=headers, body=body, timeout=timeout)
        except NeverConnected as exc:
            if last:
                raise CartoUnavailable(f"CARTO is unreachable ({exc})") from None
            return 0.5
        except NoAnswer as exc:
            # The request may have been read and applied: never repeat a POST here.
            if creates:
                raise SubmitOutcomeUnknown(f"CARTO did not answer the job request ({exc})") from None
            if last:
                raise CartoUnavailable(f"CARTO did not answer ({exc})") from None
            return 0.5
        return self._judge(method, answer, creates=creates, last=last)

    def _judge(self, method: str, answer: Answer, *, creates: bool, last: bool) -> Any:
        status = answer.status
        if status in (429, 503):
            retry_after = _retry_after(answer.headers.get("Retry-After"))
            if last or retry_after > MAX_RETRY_WAIT_S:
                raise CartoUnavailable(f"CARTO answered {status}", retry_after=max(1, round(retry_after)))
            return float(retry_after)
        if status in (500, 502, 504):
            if creates:
                raise SubmitOutcomeUnknown(f"CARTO answered {status} to the job request")
            if last:
                raise CartoUnavailable(f"CARTO answered {status}")
            return 1.0
        if status == 404 and method != "POST":
            raise NotFound("CARTO does not know this job")
        # A 404 to the job POST means a wrong base URL or connection: CARTO refused it, the sender's
        # workflow is not unknown, so it falls through to a 502 below.
        if status >= 400:
            raise UpstreamRejected(f"CARTO refused the request ({status}): {_message(answer)}")
        if creates:  # a 2xx: the job exists even if its answer was cut short (tests/test_faults_network.py)
            return _Answer(_accepted(answer))
        return _Answer(_json(answer))


def _within(timeout: tuple[float, float], deadline: float) -> tuple[float, float]:
    """Connect and read timeouts cut to what is left before `deadline`; QueryTimedOut when nothing is."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise QueryTimedOut("CARTO did not answer within the time budget")
    return min(timeout[0], left), min(timeout[1], left)


@dataclass(frozen=True)
class _Answer:
    body: Any


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def _json(answer: Answer) -> Any:
    try:
        return strip_secrets(answer.json())
    except ValueError:
        raise UpstreamRejected(f"CARTO answered {answer.status} with a body that is not JSON") from None


def _accepted(answer: Answer) -> Any:
    """The body of a 2xx to the job POST; a connection closed inside its headers reads as an empty 200."""
    try:
        return strip_secrets(answer.json())
    except ValueError:
        raise SubmitOutcomeUnknown(f"CARTO answered {answer.status} to the job request with a body "
                                   "that is not JSON") from None


def _message(answer: Answer) -> str:
    try:
        body = strip_secrets(answer.json())
    except ValueError:
        return answer.text[:200]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body.get("detail") or "")[:300]
    return str(body)[:300]
