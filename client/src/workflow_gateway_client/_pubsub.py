"""`publish_request`: run a workflow by publishing to the gateway's requests topic.

The gateway's `submit` function handles each message like a webhook minus the signature (IAM on
the topic is the authentication). Pub/Sub delivers at least once and the client library retries
publishes on its own, so every message carries an `idempotency_key` attribute (made here when the
caller gives none): however many copies arrive, one job runs. Needs the `[pubsub]` extra.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from workflow_gateway_client._http import WORKFLOW_NAME
from workflow_gateway_client.errors import GatewayError

DEFAULT_REQUESTS_TOPIC = "workflow-requests"


@dataclass(frozen=True)
class Published:
    """Pub/Sub has the request: its message id, and the key the job's completion event names as `delivery_id`."""

    message_id: str
    idempotency_key: str
    topic: str


def publish_request(project: str, workflow: str, payload: Any, *, idempotency_key: str | None = None,
                    topic: str | None = None, timeout: float = 30.0, publisher: Any = None) -> Published:
    """Publish a run request for `workflow`; returns once Pub/Sub has it, raises GatewayError if it never did.

    `topic` defaults to GATEWAY_REQUESTS_TOPIC, else `workflow-requests` (a name in `project`, or a
    full `projects/…/topics/…` path). `publisher` is a `google.cloud.pubsub_v1.PublisherClient`
    (one is built per process when not given; it honours PUBSUB_EMULATOR_HOST).
    """
    if not isinstance(workflow, str) or not WORKFLOW_NAME.fullmatch(workflow):
        raise ValueError(f"not a workflow name: {workflow!r}")
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    key = idempotency_key or str(uuid.uuid4())
    name = topic or os.environ.get("GATEWAY_REQUESTS_TOPIC") or DEFAULT_REQUESTS_TOPIC
    path = name if name.startswith("projects/") else f"projects/{project}/topics/{name}"
    client = publisher or _publisher()
    try:
        message_id = client.publish(path, data, workflow=workflow, idempotency_key=key).result(timeout=timeout)
    except Exception as exc:  # the library's API, transport and timeout errors all mean "not published"
        raise GatewayError(f"workflow {workflow}: publishing to {path} failed ({type(exc).__name__}: {exc})",
                           status=None, code="publish-failed", retryable=True, idempotency_key=key) from exc
    return Published(message_id=str(message_id), idempotency_key=key, topic=path)


_lock = threading.Lock()
_client: Any = None


def _publisher() -> Any:
    global _client
    with _lock:
        if _client is None:
            try:
                from google.cloud import pubsub_v1
            except ImportError:
                raise ImportError("publish_request needs google-cloud-pubsub: "
                                  "pip install 'workflow-gateway-client[pubsub]'") from None
            _client = pubsub_v1.PublisherClient()
        return _client
