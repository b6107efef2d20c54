"""workflow_gateway_client against the real local stack: trigger (202, one job per key, the gateway's
own 503 retried, a 422 raised), the production token path through google-auth, parse_event on
real events, and the example subscriber and caller running under functions-framework.

The stack cannot verify Google-signed ID tokens offline (it would fetch Google's certificates), so
the test workflow (tests/data/workflows/client/) checks the token the client sends as a bearer
token: the ID token a loopback token endpoint issues for a generated service account key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import jsonschema
import pytest
from workflow_gateway_client import GatewayError, JobEvent, RetryPolicy, parse_event, trigger

from gateway.local import emulators
from gateway.local.devstack import LocalStack
from tests.clienttools import token_endpoint
from tests.constants import CARTO_TOKEN, DATA, ROOT, SECRET

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

WORKFLOW = "client-trigger"
# Its own project on the session's emulator: other stacks' topics and fixed subscription names
# (poll-push, submit-push) live in tests.constants.PROJECT, and an existing subscription is kept as is.
PROJECT = "client-test-project"
BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
EVENT_SCHEMA = json.loads((ROOT / "schemas" / "job-event.schema.json").read_text())


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    with token_endpoint(tmp_path_factory.mktemp("credentials")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def stack(pubsub_emulator, test_schemas, tokens, tmp_path_factory):
    schemas = tmp_path_factory.mktemp("client-schemas") / "schemas"
    shutil.copytree(test_schemas, schemas)
    shutil.copy(DATA / "workflows" / "client" / f"{WORKFLOW}.json", schemas / "workflows")
    stack = LocalStack(state_dir=tmp_path_factory.mktemp("client-stack"), project=PROJECT, schemas_dir=schemas,
                       pubsub_host=pubsub_emulator.host, sandbox_duration_s=0.5,
                       env={"CARTO_API_TOKEN": CARTO_TOKEN, "STORE_CLUSTERS_SECRET": SECRET,
                            "CLIENT_TRIGGER_TOKEN": tokens.id_token, "GATEWAY_POLL_FIRST_S": "0.2"}).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def pulled(stack):
    """A pull subscription on the events topic: pulled(job_id) -> the ReceivedMessage of its event (acked)."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, f"client-events-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(request={"name": path, "topic": f"projects/{PROJECT}/topics/{stack.topics['events']}"})
    seen: dict[str, object] = {}

    def for_job(job_id: str, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while job_id not in seen:
            assert time.monotonic() < deadline, f"no event for {job_id} within {timeout_s} s"
            answer = subscriber.pull(request={"subscription": path, "max_messages": 50}, timeout=10)
            for received in answer.received_messages:
                seen[received.message.attributes["job_id"]] = received
            if answer.received_messages:
                subscriber.acknowledge(request={"subscription": path,
                                                "ack_ids": [r.ack_id for r in answer.received_messages]})
        return seen[job_id]

    yield for_job
    subscriber.close()


def fetcher(tokens):
    return lambda audience: tokens.id_token


def jobs(stack) -> int:
    return len(stack.sandbox.jobs())


# --- trigger ----------------------------------------------------------------------------------------

def test_trigger_gets_a_202_with_a_job_the_warehouse_has(stack, tokens):
    run = trigger(stack.url("webhook"), WORKFLOW, BODY, token_fetcher=fetcher(tokens))

    assert run.status == 202 and not run.duplicate and run.attempts == 1
    assert run.status_url == f"/jobs/{run.job_id}" and run.delivery_id == run.idempotency_key
    assert any(job.external_id == run.job_id for job in stack.sandbox.jobs())


def test_the_same_key_twice_is_one_job(stack, tokens):
    key = f"order-{uuid.uuid4().hex}"
    before = jobs(stack)

    first = trigger(stack.url("webhook"), WORKFLOW, BODY, idempotency_key=key, token_fetcher=fetcher(tokens))
    again = trigger(stack.url("webhook"), WORKFLOW, BODY, idempotency_key=key, token_fetcher=fetcher(tokens))

    assert (first.status, again.status, again.duplicate) == (202, 200, True)
    assert again.job_id == first.job_id and jobs(stack) == before + 1


def test_a_rate_limiting_carto_is_not_the_callers_problem_one_attempt_queued_then_one_job(stack, tokens):
    stack.sandbox.faults.rate_limit("submit", retry_after=1)
    slept: list[float] = []
    before = jobs(stack)

    run = trigger(stack.url("webhook"), WORKFLOW, BODY, token_fetcher=fetcher(tokens),
                  retry=RetryPolicy(sleep=lambda s: (slept.append(s), time.sleep(s))))
    deadline = time.monotonic() + 60
    while jobs(stack) == before and time.monotonic() < deadline:
        time.sleep(0.2)

    assert run.status == 202 and run.attempts == 1 and slept == []
    assert run.queued and run.job_id is None and run.status_url.startswith("/deliveries/")
    assert jobs(stack) == before + 1


def test_a_422_is_raised_with_the_problems_errors_and_starts_nothing(stack, tokens):
    before = jobs(stack)

    with pytest.raises(GatewayError) as caught:
        trigger(stack.url("webhook"), WORKFLOW, {**BODY, "radius_m": "far"}, token_fetcher=fetcher(tokens))

    assert caught.value.status == 422 and caught.value.code == "validation-failed" and not caught.value.retryable
    assert any(error.path == "/radius_m" for error in caught.value.errors)
    assert jobs(stack) == before


def test_a_token_the_gateway_does_not_accept_is_a_401(stack):
    with pytest.raises(GatewayError) as caught:
        trigger(stack.url("webhook"), WORKFLOW, BODY, token_fetcher=lambda audience: "not-the-token")

    assert caught.value.status == 401 and not caught.value.retryable


def test_the_production_path_sends_google_auths_id_token_for_the_url(stack, tokens, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tokens.key_file))
    before = len(tokens.grants)

    run = trigger(stack.url("webhook"), WORKFLOW, BODY)

    assert run.status == 202
    assert tokens.audiences()[before:] == [stack.url("webhook")]


# --- parse_event on what a subscriber receives ------------------------------------------------------

def test_parse_event_reads_a_real_event_pulled_from_the_emulator(stack, tokens, pulled):
    run = trigger(stack.url("webhook"), WORKFLOW, BODY, token_fetcher=fetcher(tokens))
    received = pulled(run.job_id)

    event = parse_event(received)

    jsonschema.validate(json.loads(received.message.data), EVENT_SCHEMA)
    assert isinstance(event, JobEvent) and event.succeeded
    assert (event.ce_id, event.job_id, event.workflow) == (f"{run.job_id}:SUCCEEDED", run.job_id, WORKFLOW)
    assert event.type == "com.carto.workflows.job.succeeded" and event.error is None
    assert event.delivery_id == run.idempotency_key and event.message_id == received.message.message_id
    assert event.parameters == {"number_of_clusters": 2, "buffer_radius": 500, "store_type": "Supermarket"}
    assert event.finished_at >= event.submitted_at and event.finished_at.tzinfo is not None
    assert parse_event(received.message) == event
    assert parse_event((dict(received.message.attributes), received.message.data)).job_id == run.job_id
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.outcome = "FAILED"


def test_parse_event_reads_a_streaming_pull_message(stack, tokens):
    from concurrent.futures import TimeoutError as FutureTimeout

    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, f"client-stream-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(request={"name": path, "topic": f"projects/{PROJECT}/topics/{stack.topics['events']}"})
    run = trigger(stack.url("webhook"), WORKFLOW, BODY, token_fetcher=fetcher(tokens))
    found: list[JobEvent] = []

    def callback(message):  # a google.cloud.pubsub_v1.subscriber.message.Message
        event = parse_event(message)
        if event.job_id == run.job_id:
            found.append(event)
        message.ack()

    future = subscriber.subscribe(path, callback)
    deadline = time.monotonic() + 30
    while not found and time.monotonic() < deadline:
        try:
            future.result(timeout=0.2)
        except FutureTimeout:
            pass
    future.cancel()
    subscriber.close()

    assert [e.ce_id for e in found] == [f"{run.job_id}:SUCCEEDED"] and found[0].message_id


RECEIVER = """
import functions_framework
from workflow_gateway_client import parse_event

received = []


@functions_framework.cloud_event
def receive(cloud_event):
    received.append(parse_event(cloud_event))
"""


def test_parse_event_reads_the_cloud_event_functions_framework_hands_a_function(stack, tokens, pulled, tmp_path):
    import functions_framework

    run = trigger(stack.url("webhook"), WORKFLOW, BODY, token_fetcher=fetcher(tokens))
    message = pulled(run.job_id).message
    (tmp_path / "receiver.py").write_text(RECEIVER)
    client = functions_framework.create_app(target="receive", source=str(tmp_path / "receiver.py"),
                                            signature_type="cloudevent").test_client()
    pushed = {"message": {"data": base64.b64encode(message.data).decode(), "attributes": dict(message.attributes),
                          "messageId": message.message_id, "publishTime": "2026-12-01T20:00:00.000Z"},
              "subscription": f"projects/{PROJECT}/subscriptions/push"}
    eventarc = {"ce-specversion": "1.0", "ce-id": message.message_id, "ce-source": "//pubsub.googleapis.com/x",
                "ce-type": "google.cloud.pubsub.topic.v1.messagePublished", "Content-Type": "application/json"}

    as_push = client.post("/", json=pushed)  # a push subscription's request, converted by functions-framework
    as_eventarc = client.post("/", json=pushed, headers=eventarc)  # Eventarc's binary-mode CloudEvent

    assert as_push.status_code == as_eventarc.status_code == 200
    events = sys.modules["receiver"].received
    assert [e.ce_id for e in events] == [f"{run.job_id}:SUCCEEDED"] * 2
    assert events[0].message_id == events[1].message_id == message.message_id


# --- the examples under functions-framework ---------------------------------------------------------

def serve(example: str, target: str, signature: str, log_path, env: dict[str, str]):
    port = emulators.free_port()
    args = [sys.executable, "-m", "functions_framework", "--target", target, "--signature-type", signature,
            "--source", str(ROOT / "examples" / example / "main.py"), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(args, cwd=ROOT / "examples" / example, env={**os.environ, **env},
                               stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    emulators.wait_for_port(port, 60, process)
    return process, f"http://127.0.0.1:{port}"


def log_lines(path, ce_id: str) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("ce_id") == ce_id]


def test_the_example_subscriber_logs_each_outcome_once_though_pub_sub_delivers_it_twice(stack, tokens, tmp_path):
    log = tmp_path / "subscriber.log"
    # Deployed with --trigger-http (deploy/deploy-subscriber.sh): its @cloud_event decorator, not the
    # signature type the platform passes, makes functions-framework hand it a CloudEvent.
    process, url = serve("subscriber", "on_job_event", "http", log, {})
    try:
        # Two push subscriptions to the same endpoint: every event arrives twice, as a redelivery would.
        suffix = uuid.uuid4().hex[:8]
        emulators.ensure_topics(PROJECT, [stack.topics["events"]], push={
            f"subscriber-a-{suffix}": f"{stack.topics['events']} {url}/",
            f"subscriber-b-{suffix}": f"{stack.topics['events']} {url}/"})
        run = trigger(stack.url("webhook"), WORKFLOW, BODY, token_fetcher=fetcher(tokens))
        ce_id = f"{run.job_id}:SUCCEEDED"
        deadline = time.monotonic() + 60
        while len(log_lines(log, ce_id)) < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        emulators.stop_process_group(process)

    lines = log_lines(log, ce_id)
    outcomes = [line for line in lines if line.get("outcome")]
    assert len(outcomes) == 1 and len(lines) == 2
    assert outcomes[0]["severity"] == "INFO" and outcomes[0]["outcome"] == "SUCCEEDED"
    assert outcomes[0]["job_id"] == run.job_id and outcomes[0]["workflow"] == WORKFLOW
    assert [line["message"] for line in lines if not line.get("outcome")] == ["duplicate delivery skipped"]


def test_the_example_caller_triggers_a_workflow_with_its_service_accounts_token(stack, tokens, tmp_path):
    import requests

    env = {"GATEWAY_URL": stack.url("webhook"), "WORKFLOW": WORKFLOW,
           "GOOGLE_APPLICATION_CREDENTIALS": str(tokens.key_file)}
    process, url = serve("caller", "run_workflow", "http", tmp_path / "caller.log", env)
    before = jobs(stack)
    try:
        answer = requests.post(url, json=BODY, headers={"Idempotency-Key": f"caller-{uuid.uuid4().hex}"}, timeout=60)
        refused = requests.post(url, json={**BODY, "radius_m": "far"}, timeout=60)
    finally:
        emulators.stop_process_group(process)

    assert answer.status_code == 202, answer.text
    assert answer.json()["idempotency_key"].startswith("caller-") and jobs(stack) == before + 1
    assert refused.status_code == 422 and refused.json()["code"] == "validation-failed"
