"""Publishing to Pub/Sub: group commit over the gRPC client, and REST until that client has loaded.

Every accepted webhook waits for its tracking message to be published, and every finished job for
its completion event, so publishing sits on the request path. Two things make it cheap:

- **Group commit.** A message published while no call is in flight for its topic goes out at once,
  alone. Messages published while one is in flight join the next batch, which its first thread sends
  in one Publish call as soon as the call ahead returns: no timer, and under load one call carries
  what the request threads published meanwhile (0.35 ms of CPU per message alone, 0.04 ms in batches
  of 8; BENCHMARKS.md). Each caller still returns only once Pub/Sub has its own message. (Not the
  library's batching `PublisherClient`: it waits up to 10 ms to fill a batch and spends a commit
  thread and a future per message.)
- **No gRPC import on the first request.** google-cloud-pubsub's generated client (grpc, protobuf,
  api-core, cryptography through google-auth) takes 0.2 s to import, longer than the bare function's
  whole cold start. Until it has loaded, batches go to Pub/Sub's REST API (`topics.publish`) over
  urllib3; the first REST call starts loading it on a background thread, and the batches after that
  use it. The REST call costs a little more CPU per call, and far more in the emulator's REST front
  end, so it is the bridge, not the road.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from gateway.errors import PublishUnavailable
from gateway.events import Message
from gateway.outbound import GoogleToken, Http, NeverConnected, NoAnswer

MAX_BATCH = 100  # messages per Publish call (Pub/Sub takes up to 1,000 and 10 MB; ours are < 1 KiB)
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
# What the gRPC client's retry treats as transient (429, 500, and the front end's 502/503/504, which
# gRPC reports as UNAVAILABLE).
_RETRIED_STATUSES = {429, 500, 502, 503, 504}


class _Batch:
    """Messages for one topic that go out in one Publish call, and what came back."""

    def __init__(self, first: Message):
        self.messages = [first]
        self.open = True  # takes more messages until its sender starts the call
        self.turn = threading.Event()  # set when the batch ahead of it has been sent
        self.sent = threading.Event()
        self.ids: list[str] = []
        self.error: str | None = None


class RestPublish:
    """`projects.topics.publish` of Pub/Sub's REST API (https://cloud.google.com/pubsub/docs/reference/rest),
    against the emulator when PUBSUB_EMULATOR_HOST is set, else pubsub.googleapis.com with the
    instance's default credentials. Retries what the gRPC client retries (429, 5xx, no connection)."""

    def __init__(self, http: Http | None = None, *, timeout_s: float = 10.0, endpoint: str | None = None,
                 authenticate: bool | None = None, sleep: Callable[[float], None] = time.sleep):
        self._http, self._timeout_s, self._sleep = http or Http(pool_size=8), timeout_s, sleep
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        self._base = (endpoint or (f"http://{emulator}" if emulator else "https://pubsub.googleapis.com")).rstrip("/")
        self._needs_auth = not emulator if authenticate is None else authenticate
        self._token = GoogleToken(PUBSUB_SCOPE, "Pub/Sub", PublishUnavailable)

    def __call__(self, topic_path: str, messages: Sequence[Message]) -> list[str]:
        body = json.dumps({"messages": [
            {"data": base64.b64encode(m.data).decode("ascii"), "attributes": m.attributes} for m in messages]}).encode()
        url = f"{self._base}/v1/{topic_path}:publish"
        deadline, wait, waited = time.monotonic() + self._timeout_s, 0.1, 0.0
        while True:
            failure = self._attempt(url, body, len(messages))
            if isinstance(failure, list):
                return failure
            if waited + wait >= self._timeout_s or time.monotonic() + wait >= deadline:
                raise PublishUnavailable(f"Pub/Sub REST publish failed ({failure})")
            self._sleep(wait)
            waited, wait = waited + wait, min(1.0, wait * 2)

    def _attempt(self, url: str, body: bytes, count: int) -> list[str] | str:
        """The message ids, or why a retry may help; raises when it cannot."""
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self._authorization(url)}
        try:
            answer = self._http.request("POST", url, headers=headers, body=body, timeout=(5.0, self._timeout_s))
        except NeverConnected as exc:
            return str(exc)
        except NoAnswer as exc:  # it may have been published: the caller decides (as with a gRPC deadline)
            raise PublishUnavailable(f"Pub/Sub did not answer ({exc})") from None
        if answer.status in _RETRIED_STATUSES:
            return f"HTTP {answer.status}"
        try:
            ids = [str(i) for i in answer.json()["messageIds"]] if answer.status == 200 else None
        except (ValueError, KeyError, TypeError):
            ids = None
        if ids is None or len(ids) != count:
            raise PublishUnavailable(f"Pub/Sub refused the publish (HTTP {answer.status})")
        return ids

    def _authorization(self, url: str) -> dict[str, str]:
        return self._token.headers(url) if self._needs_auth else {}


class GrpcPublish:
    """Pub/Sub's Publish call through google-cloud-pubsub's generated (GAPIC) client."""

    def __init__(self, client: Any = None, *, timeout_s: float = 10.0):
        from google.api_core import retry as api_retry

        if client is None:
            from google.pubsub_v1 import PublisherClient  # honours PUBSUB_EMULATOR_HOST itself

            client = PublisherClient()
        self._client, self._timeout_s = client, timeout_s
        self._retry = api_retry.Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout_s)

    def __call__(self, topic_path: str, messages: Sequence[Message]) -> list[str]:
        request = {"topic": topic_path, "messages": [{"data": m.data, "attributes": m.attributes} for m in messages]}
        try:
            answer = self._client.publish(request=request, retry=self._retry, timeout=self._timeout_s)
        except Exception as exc:  # any client, transport or timeout error means "not published"
            raise PublishUnavailable(f"Pub/Sub publish failed ({type(exc).__name__})") from None
        ids = [str(i) for i in answer.message_ids]
        if len(ids) != len(messages):
            raise PublishUnavailable("Pub/Sub answered with the wrong number of message ids")
        return ids


class PubSubPublisher:
    """Publishes one message and returns once Pub/Sub has it (the `gateway.events.Publisher` protocol).

    `grpc` is the steady-state call (built on a background thread on first use unless given);
    `rest` carries the batches sent before it is ready. Pass `grpc` to use it from the start.
    """

    def __init__(self, project: str, *, timeout_s: float = 10.0, grpc: Callable[..., list[str]] | None = None,
                 rest: Callable[..., list[str]] | None = None, load_grpc: bool = True):
        self._project, self._timeout_s = project, timeout_s
        self._grpc = grpc
        self._rest = rest or RestPublish(timeout_s=timeout_s)
        self._load_grpc = load_grpc and grpc is None
        self._loading = False
        self._lock = threading.Lock()
        self._queues: dict[str, deque[_Batch]] = {}

    def waiting(self, topic: str) -> int:
        """Messages for `topic` not yet answered by Pub/Sub (in flight or gathering)."""
        with self._lock:
            return sum(len(batch.messages) for batch in self._queues.get(topic, ()))

    @property
    def transport(self) -> str:
        """What the next batch goes over: "grpc" once its client has loaded, "rest" until then."""
        return "grpc" if self._grpc is not None else "rest"

    def publish(self, topic: str, message: Message) -> str:
        batch, index, sender = self._join(topic, message)
        if sender:
            batch.turn.wait()  # the call ahead is in flight; meanwhile this batch gathers messages
            self._send(topic, batch)
        else:
            batch.sent.wait()  # its sender always sets it (finally), after a call bounded by timeout_s
        if batch.error is not None:
            raise PublishUnavailable(f"publishing to {topic} failed: {batch.error}")
        return batch.ids[index]

    def _join(self, topic: str, message: Message) -> tuple[_Batch, int, bool]:
        """Add the message to the topic's open batch, or start one (then this thread sends it)."""
        with self._lock:
            queue = self._queues.setdefault(topic, deque())
            last = queue[-1] if queue else None
            if last is not None and last.open and len(last.messages) < MAX_BATCH:
                last.messages.append(message)
                return last, len(last.messages) - 1, False
            batch = _Batch(message)
            queue.append(batch)
            if len(queue) == 1:
                batch.turn.set()
            return batch, 0, True

    def _send(self, topic: str, batch: _Batch) -> None:
        with self._lock:
            batch.open = False
        call = self._grpc or self._rest
        try:
            batch.ids = call(f"projects/{self._project}/topics/{topic}", batch.messages)
        except PublishUnavailable as exc:
            batch.error = exc.detail
        except Exception as exc:  # a bug in a transport must not leave the batch's callers waiting
            batch.error = type(exc).__name__
        finally:
            batch.sent.set()
            with self._lock:
                queue = self._queues[topic]
                queue.popleft()
                if queue:
                    queue[0].turn.set()
        if call is self._rest:
            self._start_loading_grpc()

    def _start_loading_grpc(self) -> None:
        """After the first REST call (not before: it would compete for the GIL with the first request)."""
        with self._lock:
            if not self._load_grpc or self._loading:
                return
            self._loading = True
        threading.Thread(target=self._load, name="pubsub-grpc-client", daemon=True).start()

    def _load(self) -> None:
        try:
            self._grpc = GrpcPublish(timeout_s=self._timeout_s)
        except Exception:  # stay on REST; a later batch tries again
            with self._lock:
                self._loading = False
