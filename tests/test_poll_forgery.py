"""Forged `poll` messages on the local stack change nothing: functions-framework serving `webhook` and
`poll`, the Pub/Sub and Cloud Tasks emulators, the local CARTO job API, and a second loopback HTTP
server standing for another host that records every request it receives.

While a job runs, check tasks POSTed to `poll` and tracking messages (pushed to `poll` and published
on the tracking topic) name another base URL, another job's id, a past deadline or impossible progress.
Only the ledger record says which job to follow, where and until when: nothing reaches the other host,
the record's outcome stays unset, and the job ends with its real outcome and one event.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bench.stacks import completion_schemas
from gateway.app import App
from gateway.events import CHECK_TYPE
from gateway.local import emulators
from gateway.local.demos import DEV_SECRET
from gateway.local.devstack import LocalStack
from gateway.settings import Settings
from tests.stackutil import EventInbox, post_hook

pytestmark = pytest.mark.stack

PROJECT = "forgery-project"
BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
DURATIONS = {"running-job": 8.0, "failing-job": 0.5}


class OtherHost(ThreadingHTTPServer):
    """Another host on loopback: records each request and answers like CARTO with a failed job."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Recorder(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        body = json.dumps({"externalId": "job_forged", "status": "failure",
                           "error": {"message": "answered by another host"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stack(pubsub_emulator, tmp_path_factory):
    state = tmp_path_factory.mktemp("forgery")
    schemas, overrides = completion_schemas(state / "schemas", DURATIONS)
    stack = LocalStack(state_dir=state, project=PROJECT, schemas_dir=schemas, pubsub_host=pubsub_emulator.host,
                       sandbox_procedures=overrides, env={"GATEWAY_POLL_INLINE_S": "1"})
    try:
        stack.start()
    except (emulators.EmulatorMissing, RuntimeError, TimeoutError) as exc:
        stack.stop()
        pytest.skip(f"Cloud Tasks emulator unavailable: {exc}")
    yield stack
    stack.stop()


@pytest.fixture
def other_host():
    server = OtherHost()
    yield server
    server.stop()


def submit(stack: LocalStack, workflow: str) -> tuple[str, str]:
    """(delivery key, job id) of a new delivery."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    answer = post_hook(stack.url("webhook"), workflow, BODY, DEV_SECRET, msg_id=msg_id)
    assert answer.status_code == 202, answer.text
    return f"{workflow}:{msg_id}", answer.json()["job_id"]


def forged_check(stack: LocalStack, body: dict) -> int:
    """POST a check task to `poll` the way Cloud Tasks calls it (binary CloudEvent); poll's status."""
    headers = {"ce-specversion": "1.0", "ce-type": CHECK_TYPE, "ce-source": "//forged", "ce-id": uuid.uuid4().hex,
               "ce-subject": str(body.get("job_id")), "Content-Type": "application/json"}
    return requests.post(f"{stack.url('poll')}/", data=json.dumps(body), headers=headers, timeout=60).status_code


def forged_push(stack: LocalStack, body: dict) -> int:
    """POST a tracking message to `poll` the way a push subscription delivers it; poll's status."""
    envelope = {"message": {"data": base64.b64encode(json.dumps(body).encode()).decode(),
                            "attributes": {"workflow": body["workflow"], "job_id": body["job_id"]},
                            "messageId": uuid.uuid4().hex},
                "subscription": f"projects/{PROJECT}/subscriptions/forged"}
    return requests.post(f"{stack.url('poll')}/", json=envelope, timeout=60).status_code


def publish_tracking(stack: LocalStack, body: dict) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, stack.topics["jobs"])
    publisher.publish(topic, json.dumps(body).encode(), workflow=body["workflow"], job_id=body["job_id"]).result(30)


def test_forged_checks_and_tracking_messages_reach_no_other_host_and_change_no_outcome(stack, other_host):
    inbox = EventInbox(PROJECT, stack.topics["events"], f"forgery-events-{uuid.uuid4().hex[:8]}")
    ledger = App.build(Settings.from_env(stack.function_env())).ledger
    stack.sandbox.faults.fail_jobs("the other job's own error")
    _, other_job = submit(stack, "failing-job")
    inbox.wait_for(lambda e: e.attributes.get("job_id") == other_job, timeout_s=60)
    key, job_id = submit(stack, "running-job")
    record = ledger.get(key)
    now = time.time()

    tracking = {"key": key, "job_id": job_id, "workflow": "running-job", "connection": record.connection,
                "api_base_url": other_host.url, "submitted_at": record.submitted_at, "deadline_at": 1.0,
                "delivery_id": record.delivery_id, "trace": None}
    progress = {"checks": 1, "last_check_at": now, "due_at": now, "index": 1}
    forged_checks = [
        {**tracking, **progress},  # another base URL and a past deadline, in an earlier body's fields
        {**tracking, **progress, "job_id": other_job},  # another job's id
        {**tracking, **progress, "index": 10**9},  # a check index past any schedule
        {**tracking, **progress, "checks": 10**9},
        {**tracking, **progress, "last_check_at": now + 10**6},  # a last check in the future
        {**tracking, **progress, "last_check_at": 1.0},  # before the job was submitted
    ]
    forged_tracking = [tracking, {**tracking, "job_id": other_job},
                       {**tracking, "api_base_url": other_host.url + "/v3/sql/x/job/y?"}]

    statuses = [forged_check(stack, body) for body in forged_checks]
    statuses += [forged_push(stack, body) for body in forged_tracking]
    for body in forged_tracking:
        publish_tracking(stack, body)
    time.sleep(2.0)  # the emulator pushes the published ones to poll

    assert all(200 <= status < 300 for status in statuses), statuses  # acknowledged: never retried
    assert other_host.requests == []
    assert ledger.get(key).outcome is None  # the job is still running, as the record says

    event = inbox.wait_for(lambda e: e.attributes.get("job_id") == job_id, timeout_s=90)
    time.sleep(2.0)  # room for a second, wrong event
    inbox.drain(return_immediately=True)
    events = [e for e in inbox.events if e.attributes.get("job_id") == job_id]
    assert event.attributes["outcome"] == "SUCCEEDED" and len(events) == 1
    assert ledger.get(key).outcome == "SUCCEEDED" and ledger.get(key).error is None
    assert other_host.requests == []
