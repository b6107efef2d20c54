"""workflow_gateway_client.trigger against a scripted loopback gateway (what is sent, what is retried,
what is raised), its production token path through google-auth, and publish_request on the real
Pub/Sub emulator. The same calls against the real local stack are in tests/test_client_stack.py."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from workflow_gateway_client import GatewayError, RetryPolicy, publish_request, trigger

from tests.clienttools import token_endpoint
from tests.constants import PROJECT
from tests.stackutil import pulled_topic

TOKEN = "id-token-SENTINEL-3b1e"
PAYLOAD = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
ACCEPTED = {"job_id": "job_1", "workflow": "store-clusters", "status_url": "/jobs/job_1",
            "delivery_id": "k", "duplicate": False}
PROBLEM_422 = {"type": "https://x/validation-failed", "title": "Payload does not match the workflow", "status": 422,
               "detail": "1 problem(s)", "code": "validation-failed",
               "errors": [{"path": "/radius_m", "message": "'radius_m' is a required property"}]}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Gateway:
    """A loopback HTTP server that records each request and answers the scripted (status, headers, body) in turn,
    then 202 with ACCEPTED."""

    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    received: list[Recorded] = field(default_factory=list)
    url: str = ""

    def then(self, status: int, body: object, **headers: str) -> Gateway:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        content_type = "application/json" if status < 400 else "application/problem+json"
        self.script.append((status, {"Content-Type": content_type, **headers}, data))
        return self

    def keys(self) -> list[str]:
        return [r.headers["Idempotency-Key"] for r in self.received]


@pytest.fixture
def gateway():
    fake = Gateway()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fake.received.append(Recorded(self.path, dict(self.headers.items()), body))
            status, headers, data = fake.script.pop(0) if fake.script else (
                202, {"Content-Type": "application/json"}, json.dumps(ACCEPTED).encode())
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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


def recorded_retry(**kw) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    return RetryPolicy(sleep=slept.append, **kw), slept


def test_trigger_posts_the_payload_as_json_to_the_workflow_hook(gateway):
    run = trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())

    assert (run.job_id, run.status, run.duplicate, run.attempts) == ("job_1", 202, False, 1)
    assert run.body == ACCEPTED and run.status_url == "/jobs/job_1"
    request = gateway.received[0]
    assert request.path == "/hooks/store-clusters"
    assert json.loads(request.body) == PAYLOAD and request.headers["Content-Type"] == "application/json"


def test_trigger_sends_an_id_token_for_the_audience(gateway):
    tokens = Tokens()

    trigger(gateway.url + "/", "store-clusters", PAYLOAD, audience="https://gw.example", token_fetcher=tokens)

    assert tokens.audiences == ["https://gw.example"]
    assert gateway.received[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_the_audience_defaults_to_the_gateway_url(gateway):
    tokens = Tokens()

    trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=tokens)

    assert tokens.audiences == [gateway.url]


def test_the_given_idempotency_key_is_sent_and_returned(gateway):
    run = trigger(gateway.url, "store-clusters", PAYLOAD, idempotency_key="order-42", token_fetcher=Tokens())

    assert gateway.keys() == ["order-42"] and run.idempotency_key == "order-42"


def test_each_call_without_a_key_gets_a_new_one_and_returns_it(gateway):
    runs = [trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens()) for _ in range(2)]

    assert [run.idempotency_key for run in runs] == gateway.keys()
    assert len(set(gateway.keys())) == 2 and all(gateway.keys())


def test_a_503_is_retried_with_the_same_key_after_its_retry_after(gateway):
    gateway.then(503, {"status": 503, "code": "carto-unavailable", "title": "CARTO is unavailable"}, Retry_After="3")
    retry, slept = recorded_retry(initial_backoff_s=0.5)

    run = trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens(), retry=retry)

    assert run.job_id == "job_1" and run.attempts == 2
    assert len(gateway.received) == 2 and len(set(gateway.keys())) == 1
    assert len(slept) == 1 and 3.0 <= slept[0] <= 3.5  # never sooner than asked; jitter within the first cap


def test_a_409_in_flight_is_retried_and_the_replay_answer_is_returned(gateway):
    gateway.then(409, {"status": 409, "code": "delivery-in-flight"})
    gateway.then(200, {**ACCEPTED, "duplicate": True})
    retry, slept = recorded_retry()

    run = trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens(), retry=retry)

    assert (run.status, run.duplicate, run.attempts) == (200, True, 2)
    assert len(set(gateway.keys())) == 1 and len(slept) == 1


def test_an_http_date_retry_after_is_honoured(gateway):
    import time
    from email.utils import formatdate

    gateway.then(503, {"status": 503}, Retry_After=formatdate(time.time() + 30, usegmt=True))
    retry, slept = recorded_retry()

    trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens(), retry=retry)

    assert 25 <= slept[0] <= 31


def test_retries_stop_after_the_attempts_and_raise_the_last_problem(gateway):
    for _ in range(5):
        gateway.then(503, {"status": 503, "code": "unavailable", "title": "Service unavailable"}, Retry_After="1")
    retry, slept = recorded_retry(attempts=3)

    with pytest.raises(GatewayError) as caught:
        trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens(), retry=retry)

    assert len(gateway.received) == 3 and len(slept) == 2
    assert caught.value.status == 503 and caught.value.code == "unavailable" and caught.value.retryable
    assert caught.value.retry_after == 1.0 and caught.value.idempotency_key == gateway.keys()[0]


def test_no_retry_starts_past_the_total_time(gateway):
    gateway.then(503, {"status": 503}, Retry_After="120")
    retry, slept = recorded_retry(total_s=60)

    with pytest.raises(GatewayError) as caught:
        trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens(), retry=retry)

    assert caught.value.status == 503 and slept == [] and len(gateway.received) == 1


def test_a_refused_connection_is_retried_then_raised_as_retryable():
    from gateway.local.emulators import free_port

    retry, slept = recorded_retry(attempts=3, initial_backoff_s=0.01)
    with pytest.raises(GatewayError) as caught:
        trigger(f"http://127.0.0.1:{free_port()}", "store-clusters", PAYLOAD, token_fetcher=Tokens(), retry=retry)

    assert caught.value.status is None and caught.value.code == "no-answer" and caught.value.retryable
    assert len(slept) == 2


def test_a_422_is_raised_at_once_with_the_problem_and_its_errors(gateway):
    gateway.then(422, PROBLEM_422)
    retry, slept = recorded_retry()

    with pytest.raises(GatewayError) as caught:
        trigger(gateway.url, "store-clusters", {}, token_fetcher=Tokens(), retry=retry)

    error = caught.value
    assert (error.status, error.code, error.retryable) == (422, "validation-failed", False)
    assert [(e.path, e.message) for e in error.errors] == [("/radius_m", "'radius_m' is a required property")]
    assert error.problem == PROBLEM_422 and "422" in str(error) and "1 problem(s)" in str(error)
    assert slept == [] and len(gateway.received) == 1


def test_an_answer_that_is_not_json_still_raises_with_its_status(gateway):
    gateway.then(502, b"<html>Bad Gateway</html>", Content_Type="text/html")

    with pytest.raises(GatewayError) as caught:
        trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())

    assert caught.value.status == 502 and caught.value.code == "http-502" and not caught.value.retryable
    assert caught.value.problem["detail"] == "<html>Bad Gateway</html>"


def test_a_2xx_without_a_job_id_is_an_error_not_a_result(gateway):
    gateway.then(202, {"accepted": True})

    with pytest.raises(GatewayError, match="without a job id") as caught:
        trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())
    assert caught.value.code == "unexpected-answer"


def test_the_token_never_shows_in_the_exception(gateway):
    gateway.then(401, {"title": "Authentication failed", "status": 401, "code": "unauthenticated"})

    with pytest.raises(GatewayError) as caught:
        trigger(gateway.url, "store-clusters", PAYLOAD, token_fetcher=Tokens())

    assert caught.value.code == "unauthenticated"
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.args) + repr(vars(caught.value))


@pytest.mark.parametrize("payload, workflow", [({"radius_m": float("nan")}, "store-clusters"),
                                               (PAYLOAD, "../jobs"), (PAYLOAD, "Store")])
def test_bad_input_is_refused_before_anything_is_sent(gateway, payload, workflow):
    tokens = Tokens()

    with pytest.raises(ValueError):
        trigger(gateway.url, workflow, payload, token_fetcher=tokens)

    assert gateway.received == [] and tokens.audiences == []


# --- the production token path: google-auth with a service account key (loopback token endpoint) --

def test_without_a_fetcher_the_token_comes_from_google_auth_for_the_url(gateway, tmp_path, monkeypatch):
    # Each test's gateway has its own port, so its URL is an audience the process has no token for yet.
    with token_endpoint(tmp_path) as endpoint:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(endpoint.key_file))
        for _ in range(2):
            trigger(gateway.url, "store-clusters", PAYLOAD)

    assert [r.headers["Authorization"] for r in gateway.received] == [f"Bearer {endpoint.id_token}"] * 2
    assert endpoint.audiences() == [gateway.url]  # asked once, then kept until google-auth says it is due


def test_no_credentials_is_a_clear_error_and_nothing_is_sent(gateway, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(GatewayError) as caught:
        trigger(gateway.url, "store-clusters", PAYLOAD)

    assert caught.value.code == "no-credentials" and not caught.value.retryable and caught.value.status is None
    assert gateway.received == []


# --- publish_request against the real Pub/Sub emulator -----------------------------------------------

@pytest.fixture
def requests_topic(pubsub_emulator):
    with pulled_topic(PROJECT, "requests") as (topic, read):
        yield topic, lambda: read(1)[0]


def test_publish_request_sends_the_payload_with_workflow_and_key_attributes(requests_topic):
    topic, read_one = requests_topic

    published = publish_request(PROJECT, "store-clusters", PAYLOAD, topic=topic, idempotency_key="order-42")

    message = read_one()
    assert message.message_id == published.message_id and published.topic == f"projects/{PROJECT}/topics/{topic}"
    assert json.loads(message.data) == PAYLOAD
    assert dict(message.attributes) == {"workflow": "store-clusters", "idempotency_key": "order-42"}


def test_publish_request_makes_a_key_when_none_is_given_and_returns_it(requests_topic):
    topic, read_one = requests_topic

    published = publish_request(PROJECT, "store-clusters", PAYLOAD, topic=topic)

    assert read_one().attributes["idempotency_key"] == published.idempotency_key != ""


def test_publish_request_uses_the_requests_topic_setting(requests_topic, monkeypatch):
    topic, read_one = requests_topic
    monkeypatch.setenv("GATEWAY_REQUESTS_TOPIC", topic)

    published = publish_request(PROJECT, "store-clusters", PAYLOAD)

    assert read_one().message_id == published.message_id


def test_publish_request_to_a_missing_topic_raises_a_gateway_error(pubsub_emulator):
    with pytest.raises(GatewayError) as caught:
        publish_request(PROJECT, "store-clusters", PAYLOAD, topic="no-such-topic-3f1", timeout=10)

    assert caught.value.code == "publish-failed" and caught.value.status is None


def test_a_token_endpoint_that_does_not_answer_is_retried_then_raised_as_retryable(gateway, tmp_path, monkeypatch):
    from gateway.local.emulators import free_port

    with token_endpoint(tmp_path) as endpoint:
        key = json.loads(endpoint.key_file.read_text())
    key["token_uri"] = f"http://127.0.0.1:{free_port()}/token"
    (tmp_path / "dead.json").write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "dead.json"))
    retry, slept = recorded_retry(attempts=2, initial_backoff_s=0.01)

    with pytest.raises(GatewayError) as caught:
        trigger(gateway.url, "store-clusters", PAYLOAD, retry=retry)

    assert caught.value.code == "token-unavailable" and caught.value.retryable and len(slept) == 1
    assert gateway.received == []
