"""`python -m gateway events`: the one-liners and JSON lines it prints, and reading the real emulator."""

from __future__ import annotations

import http.server
import io
import json
import threading
import uuid
from argparse import Namespace
from concurrent import futures
from dataclasses import replace
from typing import Any

import pytest

from gateway.cli import main
from gateway.cli.events import Event, Filters, format_json, format_line, watch
from gateway.errors import ConfigError
from gateway.events import completion_event, event_source
from gateway.ledger import FINISHED, Delivery
from tests.constants import PROJECT

SUBMITTED_AT = 1_714_564_800.0  # 2024-05-01T12:00:00Z
ERROR = {"reason": "invalidQuery", "location": "query",
         "message": "Query error: Cannot coerce expression @number_of_clusters\nto type INT64 at [1:158]"}


def delivery(job_id: str = "job_1", outcome: str = "SUCCEEDED", workflow: str = "store-clusters",
             error: dict | None = None) -> Delivery:
    return Delivery(key=f"{workflow}:k-{job_id}", workflow=workflow, idempotency_key=f"k-{job_id}", fingerprint="f",
                    claim_token="t", created_at=SUBMITTED_AT, expires_at=SUBMITTED_AT + 3600, state=FINISHED,
                    delivery_id=f"msg_{job_id}", job_id=job_id, submitted_at=SUBMITTED_AT, outcome=outcome,
                    carto_state="DONE", error=error, checks=3, finished_at=SUBMITTED_AT + 12.34,
                    parameters={"number_of_clusters": 2})


def event_of(record: Delivery) -> Event:
    message = completion_event(record, source=event_source(PROJECT))
    return Event(message.attributes, message.data)


def args(**overrides) -> Namespace:
    return Namespace(**{"json": False, "workflow": None, "outcome": None, "subscription": None, "max": 0, **overrides})


# --- formatting (pure) ------------------------------------------------------------------------------

def test_a_success_prints_time_outcome_workflow_job_and_duration():
    line = format_line(event_of(delivery()))

    assert line == "2024-05-01T12:00:12.340Z  SUCCEEDED  store-clusters  job_1  12.3s"


def test_a_failure_adds_the_reason_and_message_on_one_line():
    line = format_line(event_of(delivery(outcome="FAILED", error=ERROR)))

    assert line.endswith("[invalidQuery] Query error: Cannot coerce expression @number_of_clusters to type INT64 at [1:158]")
    assert "\n" not in line


def test_a_message_that_is_not_json_still_prints_its_attributes():
    line = format_line(Event({"outcome": "FAILED", "workflow": "w", "job_id": "j"}, b"\xff not json"))

    assert line == "-  FAILED     w  j  -  (data is not JSON)"


def test_json_output_is_one_line_with_attributes_and_data():
    event = event_of(delivery(outcome="FAILED", error=ERROR))

    printed = format_json(event)

    assert "\n" not in printed
    parsed = json.loads(printed)
    assert parsed["attributes"]["ce-id"] == "job_1:FAILED" and parsed["data"]["error"] == ERROR


def test_json_output_keeps_data_that_is_not_json_as_text():
    assert json.loads(format_json(Event({}, b"plain text")))["data"] == "plain text"


def test_filters_become_a_subscription_filter_on_attributes():
    assert Filters("store-clusters", "FAILED").expression() == (
        'attributes.workflow = "store-clusters" AND attributes.outcome = "FAILED"')
    assert Filters().expression() == ""


def test_filters_match_on_attributes():
    attributes = event_of(delivery(outcome="FAILED", error=ERROR)).attributes

    assert Filters(outcome="FAILED").matches(attributes)
    assert not Filters("other-workflow").matches(attributes)


def test_a_filter_that_could_inject_into_the_expression_is_refused():
    with pytest.raises(ConfigError):
        Filters(workflow='x" OR attributes.outcome = "y')


def without_google(tmp_path, monkeypatch) -> None:
    """No PUBSUB_EMULATOR_HOST, no credentials file or gcloud login, and no metadata server to ask."""
    for name in ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
                        "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)


def test_without_an_emulator_or_credentials_it_says_in_one_line_what_to_export(tmp_path, monkeypatch, capsys):
    without_google(tmp_path, monkeypatch)

    status = main(["events", "--max", "1"])

    out, err = capsys.readouterr()
    assert status == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: no Pub/Sub to read: export PUBSUB_EMULATOR_HOST=127.0.0.1:8085")


@pytest.fixture
def token_endpoint():
    """A loopback OAuth token endpoint that refuses every refresh as Google does a revoked or expired login."""
    asked: list[str] = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            body = json.dumps({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token", asked
    server.shutdown()
    server.server_close()


def assert_one_line_saying_to_log_in(status: int, printed: tuple[str, str]) -> str:
    out, err = printed
    *before, last = err.splitlines()
    assert status == 1 and out == "" and all(line.startswith("watching ") for line in before), err  # no traceback
    assert last.startswith("error: ") and "gcloud auth application-default login" in last
    return last


def test_expired_credentials_are_one_line_saying_to_log_in_again(tmp_path, monkeypatch, capsys, token_endpoint):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    url, asked = token_endpoint
    without_google(tmp_path, monkeypatch)
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": PROJECT, "private_key_id": "k1", "private_key": pem,
           "client_email": f"watcher@{PROJECT}.iam.gserviceaccount.com", "client_id": "1", "token_uri": url}
    (tmp_path / "key.json").write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))

    err = assert_one_line_saying_to_log_in(main(["events", "--max", "1"]), capsys.readouterr())

    assert "were refused" in err and "invalid_grant" in err and "PRIVATE KEY" not in err
    assert len(asked) == 1 and "assertion=" in asked[0]  # the refresh was tried once, at the loopback endpoint


def test_an_unusable_credentials_file_is_one_line_naming_the_variable(tmp_path, monkeypatch, capsys):
    without_google(tmp_path, monkeypatch)
    (tmp_path / "adc.json").write_text("{not json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))

    err = assert_one_line_saying_to_log_in(main(["events", "--max", "1"]), capsys.readouterr())

    assert "GOOGLE_APPLICATION_CREDENTIALS cannot be used" in err


@pytest.fixture
def refusing_pubsub():
    """A loopback gRPC server answering every call with the status code it is set to, and a real
    SubscriberClient talking to it (over a plain channel: as Pub/Sub answers credentials it refuses)."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    refusal: dict[str, Any] = {}
    calls: list[str] = []

    def refuse(request: bytes, context: Any) -> None:
        context.abort(refusal["code"], refusal["message"])

    class Refusing(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            calls.append(details.method)
            return grpc.unary_unary_rpc_method_handler(refuse)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[Refusing()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))

    def refusing(code: Any, message: str) -> Any:
        refusal.update(code=code, message=message)
        return client

    yield refusing, calls
    channel.close()
    server.stop(None)


@pytest.mark.parametrize("subscription", [None, "mine"], ids=["new-subscription", "existing-subscription"])
@pytest.mark.parametrize("code, says", [("PERMISSION_DENIED", "Pub/Sub refused the request"),
                                        ("UNAUTHENTICATED", "Pub/Sub refused the credentials")])
def test_pubsub_refusing_the_first_call_is_one_line_saying_what_to_do(
        monkeypatch, capsys, refusing_pubsub, code, says, subscription):
    import grpc

    from gateway.cli import events as events_cli

    refusing, calls = refusing_pubsub
    client = refusing(getattr(grpc.StatusCode, code), "Request had invalid authentication credentials.")
    monkeypatch.setattr(events_cli, "_subscriber", lambda: client)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)

    argv = ["events", "--max", "1"] + (["--subscription", subscription] if subscription else [])
    err = assert_one_line_saying_to_log_in(main(argv), capsys.readouterr())

    assert says in err and "invalid authentication credentials" in err
    first = "Pull" if subscription else "CreateSubscription"
    assert calls[0] == f"/google.pubsub.v1.Subscriber/{first}" and len(calls) == 1


# --- against the real Pub/Sub emulator -------------------------------------------------------------

@pytest.fixture
def events_topic(pubsub_emulator):
    from google.cloud import pubsub_v1

    from gateway.local.emulators import ensure_topics

    topic = f"events-{uuid.uuid4().hex[:8]}"
    ensure_topics(PROJECT, [topic])
    publisher = pubsub_v1.PublisherClient()

    def publish(record: Delivery) -> None:
        message = completion_event(record, source=event_source(PROJECT))
        publisher.publish(publisher.topic_path(PROJECT, topic), message.data, **message.attributes).result(timeout=10)

    return topic, publish


def _subscriptions(topic: str) -> list[str]:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    return list(publisher.list_topic_subscriptions(request={"topic": publisher.topic_path(PROJECT, topic)}))


def _run(arguments: Namespace, topic: str, on_ready) -> tuple[int, list[str]]:
    out = io.StringIO()
    env = {"GOOGLE_CLOUD_PROJECT": PROJECT, "GATEWAY_EVENTS_TOPIC": topic}
    status = watch(arguments, env=env, out=out, ready=on_ready)
    return status, out.getvalue().splitlines()


def test_two_published_events_are_printed_and_the_temporary_subscription_removed(events_topic):
    topic, publish = events_topic
    seen: list[str] = []

    def on_ready(path: str) -> None:  # the subscription exists now: what is published next reaches it
        seen.extend(_subscriptions(topic))
        publish(delivery("job_a"))
        publish(delivery("job_b", outcome="FAILED", error=ERROR))

    status, lines = _run(args(max=2), topic, on_ready)

    assert status == 0
    assert sorted(line.split()[3] for line in lines) == ["job_a", "job_b"]
    assert len(seen) == 1 and _subscriptions(topic) == []


def test_a_new_subscription_filters_on_the_server(events_topic):
    from google.cloud import pubsub_v1

    topic, publish = events_topic
    filters: list[str] = []

    def on_ready(path: str) -> None:
        filters.append(pubsub_v1.SubscriberClient().get_subscription(request={"subscription": path}).filter)
        publish(delivery("job_ok"))
        publish(delivery("job_bad", outcome="FAILED", error=ERROR))

    _, lines = _run(args(max=1, outcome="FAILED", json=True), topic, on_ready)

    assert filters == ['attributes.outcome = "FAILED"']
    assert [json.loads(line)["attributes"]["job_id"] for line in lines] == ["job_bad"]


def test_an_existing_subscription_is_filtered_here_and_kept(events_topic):
    from gateway.local.emulators import ensure_topics

    topic, publish = events_topic
    name = f"watch-{uuid.uuid4().hex[:8]}"
    ensure_topics(PROJECT, [], pull={name: topic})
    publish(delivery("job_other", workflow="other-workflow"))
    publish(delivery("job_mine"))

    _, lines = _run(args(max=1, subscription=name, workflow="store-clusters"), topic, lambda path: None)

    assert [line.split()[3] for line in lines] == ["job_mine"]
    assert _subscriptions(topic) == [f"projects/{PROJECT}/subscriptions/{name}"]


def test_ctrl_c_exits_zero_and_removes_the_subscription(events_topic):
    topic, _ = events_topic

    def interrupt(path: str) -> None:
        raise KeyboardInterrupt

    status, lines = _run(args(), topic, interrupt)

    assert status == 0 and lines == [] and _subscriptions(topic) == []


def test_a_missing_topic_is_a_config_error_naming_it(pubsub_emulator):
    with pytest.raises(ConfigError, match="no-such-topic"):
        _run(args(max=1), "no-such-topic", lambda path: None)


def test_the_cli_verb_runs_watch(events_topic, monkeypatch, capsys):
    from gateway import cli
    from gateway.local.emulators import ensure_topics

    topic, publish = events_topic
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("GATEWAY_EVENTS_TOPIC", topic)
    name = f"watch-{uuid.uuid4().hex[:8]}"
    ensure_topics(PROJECT, [], pull={name: topic})
    publish(replace(delivery("job_cli"), outcome="TIMED_OUT"))

    assert cli.main(["events", "--subscription", name, "--max", "1"]) == 0
    assert "TIMED_OUT  store-clusters  job_cli" in capsys.readouterr().out

