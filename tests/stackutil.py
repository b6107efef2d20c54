"""Helpers for tests that drive the running local stack: signing with the official Standard
Webhooks library (an independent client), and reading completion events from the emulator."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from gateway.local import emulators


def signed_headers(secret: str, body: bytes, msg_id: str | None = None) -> dict[str, str]:
    """Headers the official standardwebhooks package produces for `body`."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(tz=UTC)
    try:
        signature = Webhook(secret).sign(msg_id, now, body.decode())
    except UnicodeDecodeError:  # the library signs text only; sign bytes per the spec for invalid-UTF-8 tests
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{msg_id}.{int(now.timestamp())}.".encode() + body
        signature = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature, "Content-Type": "application/json"}


def post_hook(base_url: str, workflow: str, payload: Any, secret: str, msg_id: str | None = None,
              body: bytes | None = None) -> requests.Response:
    body = body if body is not None else json.dumps(payload).encode()
    return requests.post(f"{base_url}/hooks/{workflow}", data=body, headers=signed_headers(secret, body, msg_id),
                         timeout=30)


@dataclass
class Event:
    attributes: dict[str, str]
    data: dict[str, Any]
    raw: bytes
    message_id: str = ""  # Pub/Sub's: every publish gets its own, a redelivery of one keeps it


class EventInbox:
    """A pull subscription on the events topic, read on demand."""

    def __init__(self, project: str, topic: str, name: str):
        from google.cloud import pubsub_v1

        self.subscriber = pubsub_v1.SubscriberClient()
        self.path = self.subscriber.subscription_path(project, name)
        self.subscriber.create_subscription(request={"name": self.path, "topic": f"projects/{project}/topics/{topic}",
                                                     "ack_deadline_seconds": 60})
        self.events: list[Event] = []

    def drain(self, *, return_immediately: bool = False) -> None:
        request = {"subscription": self.path, "max_messages": 100}
        if return_immediately:  # deprecated in Pub/Sub, honoured by the emulator: no wait when empty
            request["return_immediately"] = True
        answer = self.subscriber.pull(request=request, timeout=5)
        ack_ids = []
        for received in answer.received_messages:
            message = received.message
            self.events.append(Event(dict(message.attributes), json.loads(message.data), bytes(message.data),
                                     message.message_id))
            ack_ids.append(received.ack_id)
        if ack_ids:
            self.subscriber.acknowledge(request={"subscription": self.path, "ack_ids": ack_ids})

    def wait_for(self, predicate: Callable[[Event], bool], timeout_s: float = 60.0) -> Event:
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event within {timeout_s} s; have {[e.attributes for e in self.events]}")
            self.drain()
            time.sleep(0.2)

    def for_job(self, job_id: str) -> list[Event]:
        self.drain()
        return [e for e in self.events if e.attributes.get("job_id") == job_id]


def answer_json(handler: Any, status: int, body: Any) -> None:
    """Write a JSON answer from an `http.server` handler of a loopback stand-in."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextmanager
def pulled_topic(project: str, prefix: str):
    """A fresh topic with a pull subscription on the emulator: (topic, read(count) -> messages, acked)."""
    from google.cloud import pubsub_v1

    from gateway.local.emulators import ensure_topics

    topic, subscription = f"{prefix}-{uuid.uuid4().hex[:8]}", f"{prefix}-sub-{uuid.uuid4().hex[:8]}"
    ensure_topics(project, [topic], pull={subscription: topic})
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)

    def read(count: int, timeout_s: float = 20.0) -> list[Any]:
        found: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            answer = subscriber.pull(request={"subscription": path, "max_messages": 10}, timeout=10)
            found += [received.message for received in answer.received_messages]
            if answer.received_messages:
                subscriber.acknowledge(request={"subscription": path,
                                                "ack_ids": [r.ack_id for r in answer.received_messages]})
        return found

    try:
        yield topic, read
    finally:
        subscriber.close()


def delete_subscriptions(project: str, names: list[str]) -> None:
    """Delete push subscriptions an earlier stack on the same emulator left pointing at its own ports."""
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    try:
        for name in names:
            try:
                subscriber.delete_subscription(request={"subscription": subscriber.subscription_path(project, name)})
            except exceptions.NotFound:
                pass
    finally:
        subscriber.close()


def emulator_unavailable(what: str, exc: Exception) -> None:
    """Skip when the emulator is not installed here; fail in CI, and fail on any other start-up error: an
    emulator that is installed but does not start is the project's bug, not the machine's."""
    if isinstance(exc, emulators.EmulatorMissing) and not os.environ.get("CI"):
        pytest.skip(f"{what} emulator unavailable: {exc}")
    pytest.fail(f"{what} emulator did not start: {type(exc).__name__}: {exc}", pytrace=False)
