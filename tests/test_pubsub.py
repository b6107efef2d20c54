"""gateway.pubsub: group commit, the REST bridge until the gRPC client has loaded, and REST's auth.

The group-commit tests drive `PubSubPublisher` with recording transports (the batching is ours; what
goes over the wire is covered against the real emulator below and in the end-to-end tests). The REST
transport is exercised against the real Pub/Sub emulator and, for the production path with
credentials, against loopback stand-ins for Google's token endpoint and Pub/Sub's REST front end.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.errors import PublishUnavailable
from gateway.events import Message
from gateway.pubsub import PubSubPublisher, RestPublish
from tests.constants import PROJECT
from tests.stackutil import answer_json, pulled_topic


class Transport:
    """Records every Publish call; the first `hold` calls wait until `release` is set."""

    def __init__(self, hold: int = 0, fail_call: int | None = None):
        self.calls: list[list[Message]] = []
        self.release = threading.Event()
        self.hold, self.fail_call = hold, fail_call
        self._lock = threading.Lock()

    def __call__(self, topic_path: str, messages: list[Message]) -> list[str]:
        with self._lock:
            self.calls.append(list(messages))
            number = len(self.calls)
        if number <= self.hold:
            assert self.release.wait(10)
        if number == self.fail_call:
            raise PublishUnavailable("Pub/Sub said no")
        return [f"id-{m.data.decode()}" for m in messages]


def publish_in_threads(publisher: PubSubPublisher, names: list[str]) -> tuple[list[threading.Thread], dict[str, Any]]:
    results: dict[str, Any] = {}

    def one(name: str) -> None:
        try:
            results[name] = publisher.publish("jobs", Message(name.encode(), {"n": name}))
        except PublishUnavailable as exc:
            results[name] = exc

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    return threads, results


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_a_message_alone_goes_out_at_once_in_its_own_call():
    transport = Transport()
    publisher = PubSubPublisher(PROJECT, grpc=transport)

    assert publisher.publish("jobs", Message(b"a", {})) == "id-a"
    assert publisher.publish("jobs", Message(b"b", {})) == "id-b"
    assert [[m.data for m in call] for call in transport.calls] == [[b"a"], [b"b"]]
    assert publisher.waiting("jobs") == 0


def test_messages_published_while_a_call_is_in_flight_go_out_together_and_each_caller_gets_its_id():
    transport = Transport(hold=1)
    publisher = PubSubPublisher(PROJECT, grpc=transport)
    first, results = publish_in_threads(publisher, ["first"])
    wait_until(lambda: len(transport.calls) == 1)  # in flight, held

    rest, more = publish_in_threads(publisher, [f"m{i}" for i in range(6)])
    wait_until(lambda: publisher.waiting("jobs") == 7)
    transport.release.set()
    for thread in first + rest:
        thread.join(10)

    assert [len(call) for call in transport.calls] == [1, 6]
    assert {**results, **more} == {name: f"id-{name}" for name in ["first"] + [f"m{i}" for i in range(6)]}
    assert publisher.waiting("jobs") == 0


def test_a_failed_call_fails_every_caller_of_its_batch_and_no_other():
    transport = Transport(hold=1, fail_call=2)
    publisher = PubSubPublisher(PROJECT, grpc=transport)
    first, results = publish_in_threads(publisher, ["first"])
    wait_until(lambda: len(transport.calls) == 1)
    batch, failed = publish_in_threads(publisher, ["x", "y", "z"])
    wait_until(lambda: publisher.waiting("jobs") == 4)
    transport.release.set()
    for thread in first + batch:
        thread.join(10)

    assert results == {"first": "id-first"}
    assert sorted(failed) == ["x", "y", "z"]
    assert all(isinstance(outcome, PublishUnavailable) and "Pub/Sub said no" in outcome.detail
               for outcome in failed.values())
    assert publisher.publish("jobs", Message(b"after", {})) == "id-after"  # the queue moved on


def test_topics_do_not_wait_for_each_other():
    transport = Transport(hold=1)
    publisher = PubSubPublisher(PROJECT, grpc=transport)
    held, _ = publish_in_threads(publisher, ["held"])
    wait_until(lambda: len(transport.calls) == 1)

    assert publisher.publish("events", Message(b"other", {})) == "id-other"
    assert held[0].is_alive() and publisher.waiting("jobs") == 1  # "jobs" is still in flight
    transport.release.set()
    held[0].join(10)


def test_batches_are_capped_and_sent_in_order(monkeypatch):
    monkeypatch.setattr("gateway.pubsub.MAX_BATCH", 3)
    transport = Transport(hold=1)
    publisher = PubSubPublisher(PROJECT, grpc=transport)
    first, _ = publish_in_threads(publisher, ["first"])
    wait_until(lambda: len(transport.calls) == 1)
    names = [f"m{i}" for i in range(7)]
    threads = []
    for name in names:  # one at a time, so the order of joining is known
        threads += publish_in_threads(publisher, [name])[0]
        wait_until(lambda n=len(threads): publisher.waiting("jobs") == 1 + n)
    transport.release.set()
    for thread in first + threads:
        thread.join(10)

    assert [[m.data.decode() for m in call] for call in transport.calls] == [
        ["first"], ["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]


# --- REST, against the real emulator -------------------------------------------------------------

@pytest.fixture
def tracking_topic(pubsub_emulator):
    with pulled_topic(PROJECT, "tracking") as pulled:
        yield pulled


def test_the_first_messages_go_over_rest_then_over_grpc_once_its_client_has_loaded(tracking_topic):
    topic, read = tracking_topic
    publisher = PubSubPublisher(PROJECT)
    assert publisher.transport == "rest"

    first = publisher.publish(topic, Message(b'{"n": 1}', {"job_id": "job-1"}))
    wait_until(lambda: publisher.transport == "grpc", timeout_s=60)  # loading starts after the first call
    second = publisher.publish(topic, Message(b'{"n": 2}', {"job_id": "job-2"}))

    received = {m.message_id: (m.data, dict(m.attributes)) for m in read(2)}
    assert received == {first: (b'{"n": 1}', {"job_id": "job-1"}), second: (b'{"n": 2}', {"job_id": "job-2"})}


def test_rest_publishes_a_batch_with_binary_data_and_attributes(tracking_topic):
    topic, read = tracking_topic
    rest = RestPublish()
    messages = [Message(bytes([0, 255, 10]) + str(i).encode(), {"i": str(i), "ce-id": f"job:{i}"}) for i in range(3)]

    ids = rest(f"projects/{PROJECT}/topics/{topic}", messages)

    received = {m.message_id: (m.data, dict(m.attributes)) for m in read(3)}
    assert received == {i: (m.data, m.attributes) for i, m in zip(ids, messages, strict=True)}


def test_rest_to_a_missing_topic_is_unavailable_not_retried(pubsub_emulator):
    slept: list[float] = []
    rest = RestPublish(sleep=slept.append)

    with pytest.raises(PublishUnavailable, match="HTTP 404"):
        rest(f"projects/{PROJECT}/topics/no-such-topic-{uuid.uuid4().hex[:6]}", [Message(b"x", {})])
    assert slept == []


# --- REST with credentials: Google's token endpoint and Pub/Sub's front end on loopback --------------

class FrontEnd(BaseHTTPRequestHandler):
    """Token endpoint (POST /token) and topics.publish; `answers` scripts the publish statuses."""

    answers: list[int] = []
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/token":
            answer_json(self, 200, {"access_token": "ya29.loopback-token", "expires_in": 3600, "token_type": "Bearer"})
            return
        FrontEnd.seen.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                              "body": json.loads(body)})
        status = FrontEnd.answers.pop(0) if FrontEnd.answers else 200
        count = len(json.loads(body)["messages"])
        answer_json(self, status, {"messageIds": [str(i) for i in range(count)]} if status == 200 else {"error": {}})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def front_end(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    server = ThreadingHTTPServer(("127.0.0.1", 0), FrontEnd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    account = {"type": "service_account", "project_id": PROJECT, "private_key_id": "k1", "private_key": key,
               "client_email": f"gateway@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
               "token_uri": f"{url}/token"}
    (tmp_path / "sa.json").write_text(json.dumps(account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "sa.json"))
    FrontEnd.answers, FrontEnd.seen = [], []
    yield url
    server.shutdown()
    server.server_close()


def test_rest_sends_the_default_credentials_token_and_retries_a_503(front_end):
    FrontEnd.answers = [503]
    slept: list[float] = []
    rest = RestPublish(endpoint=front_end, authenticate=True, sleep=slept.append)

    ids = rest(f"projects/{PROJECT}/topics/jobs", [Message(b"hello", {"a": "b"})])

    assert ids == ["0"] and slept == [0.1]
    assert [seen["authorization"] for seen in FrontEnd.seen] == ["Bearer ya29.loopback-token"] * 2
    assert FrontEnd.seen[-1]["path"] == f"/v1/projects/{PROJECT}/topics/jobs:publish"
    assert FrontEnd.seen[-1]["body"] == {"messages": [{"data": "aGVsbG8=", "attributes": {"a": "b"}}]}


def test_rest_without_credentials_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    rest = RestPublish(endpoint="http://127.0.0.1:9", authenticate=True)

    with pytest.raises(PublishUnavailable, match="no credentials"):
        rest(f"projects/{PROJECT}/topics/jobs", [Message(b"x", {})])


def test_rest_gives_up_within_its_timeout_when_pub_sub_stays_unreachable():
    slept: list[float] = []
    rest = RestPublish(endpoint="http://127.0.0.1:9", authenticate=False, timeout_s=1.0, sleep=slept.append)

    with pytest.raises(PublishUnavailable, match="REST publish failed"):
        rest(f"projects/{PROJECT}/topics/jobs", [Message(b"x", {})])
    assert slept and sum(slept) < 1.0
