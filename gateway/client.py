"""A tiny client for other cloud functions that run workflows through the gateway.

Two ways in:
- `trigger_http`: POST /hooks/{workflow} with a Google-signed ID token, fetched from the metadata
  server for the audience the workflow's `google-id-token` scheme expects, and an
  `Idempotency-Key`, so a retry with the same key answers the original job instead of a second one.
- `publish_request`: a message on the requests topic (README, "Settings"), for callers that need no answer;
  IAM on the topic is the authentication.

Both build their clients once per instance (lazily) unless given one, like main.py.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from gateway.events import Message, Publisher

DEFAULT_TIMEOUT_S = 30.0
TokenFetcher = Callable[[str], str]


class GatewayRejected(Exception):
    """The gateway answered 4xx/5xx; `problem` is its RFC 9457 body (or what stood in for one)."""

    def __init__(self, workflow: str, status: int, problem: Mapping[str, Any]):
        self.workflow, self.status, self.problem = workflow, status, dict(problem)
        title = problem.get("title") or "error"
        detail = problem.get("detail")
        super().__init__(f"workflow {workflow}: HTTP {status} {title}" + (f": {detail}" if detail else ""))

    @property
    def retryable(self) -> bool:
        """True for 409 and 503: the same request with the same idempotency key may succeed later."""
        return self.status in (409, 503)


def trigger_http(url: str, workflow: str, payload: Any, *, audience: str | None = None,
                 idempotency_key: str | None = None, session: Any = None,
                 token_fetcher: TokenFetcher | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run `workflow` with `payload` via the gateway at `url`; the 202 (or replay 200) answer as a dict.

    `audience` defaults to `url` (a Cloud Function's own URL is its usual audience); a new
    idempotency key is made when none is given. Raises GatewayRejected on 4xx/5xx.
    """
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    token = (token_fetcher or fetch_id_token)(audience or url)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}",
               "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    answer = (session or _session()).post(f"{url.rstrip('/')}/hooks/{workflow}", data=body, headers=headers,
                                          timeout=timeout_s)
    if answer.status_code >= 400:
        raise GatewayRejected(workflow, answer.status_code, _problem(answer))
    return answer.json()


def fetch_id_token(audience: str) -> str:
    """A Google-signed ID token for `audience`, from the metadata server (or local ADC credentials)."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)


def _problem(answer: Any) -> dict[str, Any]:
    """The problem+json body; a stand-in built from the status when a proxy answered something else."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"status": answer.status_code, "title": getattr(answer, "reason", None) or "error",
            "detail": (answer.text or "")[:500]}


@functools.cache
def _session() -> Any:
    import requests

    return requests.Session()


def publish_request(workflow: str, payload: Any, *, project: str, topic: str = "workflow-requests",
                    idempotency_key: str | None = None, publisher: Publisher | None = None) -> str:
    """Publish a run request for `workflow` to the requests topic; returns the Pub/Sub message id.

    A new idempotency key is made when none is given, so that the client library's own publish
    retries still start one job. Raises gateway.errors.PublishUnavailable when Pub/Sub is down.
    """
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    attributes = {"workflow": workflow, "idempotency_key": idempotency_key or str(uuid.uuid4())}
    return (publisher or _publisher(project)).publish(topic, Message(data, attributes))


@functools.cache
def _publisher(project: str) -> Publisher:
    from gateway.pubsub import PubSubPublisher

    return PubSubPublisher(project)
