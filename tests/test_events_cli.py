"""`python -m gateway events`: the one-liners and JSON lines it prints, and reading the real emulator."""

from __future__ import annotations

import io
import json
import uuid
from argparse import Namespace
from dataclasses import replace

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


def test_without_an_emulator_or_credentials_it_says_in_one_line_what_to_export(tmp_path, monkeypatch, capsys):
    # No PUBSUB_EMULATOR_HOST, no credentials file or gcloud login, and no metadata server to ask.
    for name in ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
                        "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)

    status = main(["events", "--max", "1"])

    out, err = capsys.readouterr()
    assert status == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: no Pub/Sub to read: export PUBSUB_EMULATOR_HOST=127.0.0.1:8085")


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

