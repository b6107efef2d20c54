"""gateway.client: triggering over HTTP (against a recording loopback server) and over Pub/Sub (the real emulator)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.client import GatewayRejected, publish_request, trigger_http
from tests.conftest import PROJECT
from tests.stackutil import pulled_topic

TOKEN = "id-token-SENTINEL-3b1e"
PAYLOAD = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
ACCEPTED = {"job_id": "job_1", "workflow": "store-clusters", "status_url": "/jobs/job_1",
            "delivery_id": "k", "duplicate": False}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Gateway:
    """A loopback HTTP server that records each request and answers what the test set."""

    status: int = 202
    content_type: str = "application/json"
    body: bytes = json.dumps(ACCEPTED).encode()
    received: list[Recorded] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def gateway():
    fake = Gateway()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fake.received.append(Recorded("POST", self.path, dict(self.headers.items()), body))
            self.send_response(fake.status)
            self.send_header("Content-Type", fake.content_type)
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


class Tokens:
    """Records the audiences it was asked for."""

    def __init__(self):
        self.audiences: list[str] = []

    def __call__(self, audience: str) -> str:
        self.audiences.append(audience)
        return TOKEN


def test_trigger_http_posts_the_payload_as_json_to_the_workflow_hook(gateway):
    answer = trigger_http(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())

    assert answer == ACCEPTED
    request = gateway.received[0]
    assert request.path == "/hooks/store-clusters"
    assert json.loads(request.body) == PAYLOAD and request.headers["Content-Type"] == "application/json"


def test_trigger_http_sends_an_id_token_for_the_audience(gateway):
    tokens = Tokens()

    trigger_http(gateway.url + "/", "store-clusters", PAYLOAD, audience="https://gw.example", token_fetcher=tokens)

    assert tokens.audiences == ["https://gw.example"]
    assert gateway.received[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_the_audience_defaults_to_the_gateway_url(gateway):
    tokens = Tokens()

    trigger_http(gateway.url, "store-clusters", PAYLOAD, token_fetcher=tokens)

    assert tokens.audiences == [gateway.url]


def test_trigger_http_sends_the_given_idempotency_key(gateway):
    trigger_http(gateway.url, "store-clusters", PAYLOAD, idempotency_key="order-42", token_fetcher=Tokens())

    assert gateway.received[0].headers["Idempotency-Key"] == "order-42"


def test_each_call_without_a_key_gets_a_new_one(gateway):
    for _ in range(2):
        trigger_http(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())

    keys = [request.headers["Idempotency-Key"] for request in gateway.received]
    assert len(set(keys)) == 2 and all(keys)


def test_a_problem_answer_raises_with_the_problem(gateway):
    problem = {"type": "https://x/validation-failed", "title": "Payload does not match the workflow", "status": 422,
               "detail": "1 problem(s)", "code": "validation-failed",
               "errors": [{"path": "/radius_m", "message": "'radius_m' is a required property"}]}
    gateway.status, gateway.content_type, gateway.body = 422, "application/problem+json", json.dumps(problem).encode()

    with pytest.raises(GatewayRejected) as caught:
        trigger_http(gateway.url, "store-clusters", {}, token_fetcher=Tokens())

    assert caught.value.status == 422 and caught.value.problem == problem
    assert "422" in str(caught.value) and "1 problem(s)" in str(caught.value)
    assert not caught.value.retryable


def test_an_answer_that_is_not_json_still_raises_with_its_status(gateway):
    gateway.status, gateway.content_type, gateway.body = 503, "text/html", b"<html>Service Unavailable</html>"

    with pytest.raises(GatewayRejected) as caught:
        trigger_http(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())

    assert caught.value.status == 503 and caught.value.retryable
    assert caught.value.problem["detail"] == "<html>Service Unavailable</html>"


def test_the_token_never_shows_in_the_exception(gateway):
    gateway.status, gateway.body = 401, json.dumps({"title": "Authentication failed", "status": 401}).encode()

    with pytest.raises(GatewayRejected) as caught:
        trigger_http(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())

    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.args)


def test_a_payload_that_is_not_json_is_refused_before_anything_is_sent(gateway):
    tokens = Tokens()

    with pytest.raises(ValueError):
        trigger_http(gateway.url, "store-clusters", {"radius_m": float("nan")}, token_fetcher=tokens)

    assert gateway.received == [] and tokens.audiences == []


# --- publish_request against the real Pub/Sub emulator -----------------------------------------------

@pytest.fixture
def requests_topic(pubsub_emulator):
    with pulled_topic(PROJECT, "requests") as (topic, read):
        yield topic, lambda: read(1)[0]


def test_publish_request_sends_the_payload_with_workflow_and_key_attributes(requests_topic):
    topic, read_one = requests_topic

    message_id = publish_request("store-clusters", PAYLOAD, project=PROJECT, topic=topic, idempotency_key="order-42")

    message = read_one()
    assert message.message_id == message_id
    assert json.loads(message.data) == PAYLOAD
    assert dict(message.attributes) == {"workflow": "store-clusters", "idempotency_key": "order-42"}


def test_publish_request_makes_a_key_when_none_is_given(requests_topic):
    topic, read_one = requests_topic

    publish_request("store-clusters", PAYLOAD, project=PROJECT, topic=topic)

    assert read_one().attributes["idempotency_key"]
