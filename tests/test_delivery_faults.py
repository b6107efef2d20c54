"""Whatever fails between the sender and the completion event, one delivery makes one CARTO job and
that job makes at least one completion event, every copy with the same ce-id (docs/architecture.md, "Invariants").

Everything is real except time and Pub/Sub: the functions-framework apps of main.py, the local CARTO
job API over loopback HTTP (on the same FakeClock as the app), a SQLite ledger file, and a recording
publisher whose `fail_next` stands in for Pub/Sub being down. Tracking messages reach `poll` as
Pub/Sub push bodies, so a raise is a 500 (nack) and a return a 2xx (ack), as in the cloud.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from werkzeug.serving import make_server

from gateway.app import App
from gateway.errors import LedgerUnavailable
from gateway.events import Message
from gateway.ledger import CLAIMED, SUBMITTED, TRACKED
from gateway.ledger.sqlite import SqliteLedger
from gateway.local.sandbox import SandboxServer, serve
from gateway.settings import Settings
from tests.apptools import FakeClock, RecordingPublisher, function_client, settings_env
from tests.conftest import CARTO_TOKEN, ROOT, load_json

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
EVENT_SCHEMA = load_json(ROOT / "schemas" / "job-event.schema.json")
JOBS_TOPIC = "workflow-jobs"
GRACE_S = 120.0  # GATEWAY_SWEEP_GRACE_S's default
ACK, NACK = 200, 500  # what functions-framework answers a push when the function returns or raises


# --- the rig: one instance of the gateway against the local CARTO job API -----------------------

class CrashingLedger(SqliteLedger):
    """A SQLite ledger whose next `mark_submitted` fails: the instance 'dies' right after CARTO said yes."""

    crashes = 1

    def mark_submitted(self, *args: Any, **kwargs: Any) -> bool:
        if self.crashes > 0:
            self.crashes -= 1
            raise LedgerUnavailable("injected crash between CARTO's answer and the ledger write")
        return super().mark_submitted(*args, **kwargs)


@dataclass
class Rig:
    """One gateway instance (webhook, poll, submit, sweep) wired to a sandbox, a ledger file and a fake clock."""

    clock: FakeClock
    sandbox: SandboxServer
    app: App
    publisher: RecordingPublisher
    clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, env: dict[str, str], clock: FakeClock, sandbox: SandboxServer, *,
              ledger: SqliteLedger | None = None) -> Rig:
        publisher = RecordingPublisher()
        app = App.build(Settings.from_env(env), publisher=publisher, ledger=ledger, clock=clock.as_clock())
        return cls(clock, sandbox, app, publisher)

    def client(self, target: str) -> Any:
        """The functions-framework test client of `target` in main.py, serving this rig's App."""
        if target not in self.clients:
            self.clients[target] = function_client(self.app, target)
        return self.clients[target]

    def headers(self, workflow: str, body: bytes, msg_id: str | None = None) -> dict[str, str]:
        """Headers that authenticate `body` for `workflow` at the fake clock's now."""
        scheme = self.app.registry.get(workflow).schemes[0]
        return {**scheme.sign(body, self.clock.now(), msg_id), "Content-Type": "application/json"}

    def fresh_client(self, target: str = "webhook") -> Any:
        """Another test client of the same function app, for use from another thread."""
        return self.client(target).application.test_client()

    def post(self, workflow: str, payload: Any, *, msg_id: str | None = None,
             headers: dict[str, str] | None = None, client: Any = None) -> Any:
        body = json.dumps(payload).encode()
        return (client or self.client("webhook")).post(
            f"/hooks/{workflow}", data=body, headers={**self.headers(workflow, body, msg_id), **(headers or {})})

    def job_request(self, method: str, job_id: str, workflow: str = "store-clusters") -> Any:
        return self.client("webhook").open(f"/jobs/{job_id}", method=method, headers=self.headers(workflow, b""))

    def tracking(self) -> list[Message]:
        return self.publisher.on(JOBS_TOPIC)

    def deliver(self, message: Message, message_id: str = "1", target: str = "poll") -> int:
        """Push one Pub/Sub message to `target`; the status is what Pub/Sub sees (2xx ack, else nack)."""
        return self.client(target).post("/", json=push_body(message, message_id)).status_code

    def poll_all(self) -> list[int]:
        """Deliver every tracking message published so far to `poll`."""
        return [self.deliver(message, str(n)) for n, message in enumerate(self.tracking())]


def push_body(message: Message, message_id: str = "1") -> dict[str, Any]:
    """A Pub/Sub push request body, as a push subscription (or Eventarc) delivers it."""
    return {"message": {"data": base64.b64encode(message.data).decode(), "attributes": message.attributes,
                        "messageId": message_id},
            "subscription": "projects/p/subscriptions/s"}


def gateway_env(schemas: Path, sandbox: SandboxServer, state: Path, **extra: str) -> dict[str, str]:
    """Settings of a test instance: the first status check after 1 s, the default grace and windows.

    CARTO calls time out after 5 s here, so a claim is stale after 3 × (5 + 5) + 2 × 5 + 30 = 70 s
    (CartoClient.longest_submit_s + CLAIM_MARGIN_S): the tests' 91 s and 121 s waits are past it."""
    return settings_env(schemas, sandbox.url, state, GATEWAY_POLL_FIRST_S="1", **{"CARTO_TIMEOUT_S": "5", **extra})


@contextmanager
def running_rig(schemas: Path, state: Path, *, ledger: SqliteLedger | None = None, **extra: str) -> Iterator[Rig]:
    """A rig with a fresh sandbox on the rig's fake clock (jobs run 10 s of that clock)."""
    clock = FakeClock()
    sandbox = serve(token=CARTO_TOKEN, default_duration_s=10.0, clock=clock.now)
    try:
        yield Rig.build(gateway_env(schemas, sandbox, state, **extra), clock, sandbox, ledger=ledger)
    finally:
        sandbox.stop()


def msg() -> str:
    return f"msg_{uuid.uuid4().hex}"


# --- what every fault test asserts ------------------------------------------------------------

def events_of(*publishers: RecordingPublisher) -> list[dict[str, Any]]:
    return [event for publisher in publishers for event in publisher.events()]


def assert_one_job_with_one_outcome(sandbox: SandboxServer, *publishers: RecordingPublisher) -> str:
    """Exactly one CARTO job; at least one completion event, all for it, all with one ce-id; returns the job id."""
    jobs = sandbox.jobs()
    assert len(jobs) == 1, f"expected one CARTO job, got {[j.external_id for j in jobs]}"
    job_id = jobs[0].external_id
    events = events_of(*publishers)
    assert events, "the job yielded no completion event"
    assert {e["attributes"]["job_id"] for e in events} == {job_id}
    outcomes = {e["attributes"]["ce-id"] for e in events}
    assert len(outcomes) == 1, f"more than one outcome for one job: {outcomes}"
    assert outcomes == {f"{job_id}:{events[0]['attributes']['outcome']}"}
    for event in events:
        jsonschema.validate(event["data"], EVENT_SCHEMA)
    return job_id


def race(count: int, action: Callable[[int], Any]) -> list[Any]:
    """Run `action(n)` from `count` threads released together."""
    barrier = threading.Barrier(count)

    def run(n: int) -> Any:
        barrier.wait()
        return action(n)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


@contextmanager
def served(flask_app: Any) -> Iterator[str]:
    """A real threaded WSGI server on loopback around a functions-framework app; yields its base URL."""
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def rig(test_schemas, tmp_path) -> Iterator[Rig]:
    with running_rig(test_schemas, tmp_path) as built:
        yield built


# --- CARTO unavailable before the job exists ---------------------------------------------------

def test_carto_503_on_submit_then_the_senders_retry_makes_the_one_job(rig):
    rig.sandbox.faults.error("submit", status=503, count=3)  # every attempt of the first delivery
    delivery = msg()

    refused = rig.post("store-clusters", BODY, msg_id=delivery)
    retried = rig.post("store-clusters", BODY, msg_id=delivery)
    statuses = rig.poll_all()

    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert rig.app.ledger.get(f"store-clusters:{delivery}").job_id == retried.get_json()["job_id"]
    assert retried.status_code == 202 and statuses == [ACK]
    assert assert_one_job_with_one_outcome(rig.sandbox, rig.publisher) == retried.get_json()["job_id"]


def test_carto_503_once_is_retried_inside_the_request(rig):
    rig.sandbox.faults.error("submit", status=503, count=1)

    accepted = rig.post("store-clusters", BODY)
    rig.poll_all()

    assert accepted.status_code == 202
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


# --- a crash after CARTO accepted the job, before the ledger knew ---------------------------------

def test_a_lost_submit_answer_is_a_503_and_keeps_the_claim(rig):
    rig.sandbox.faults.drop("submit", after=True)  # the job is created; the gateway never hears
    delivery = msg()

    refused = rig.post("store-clusters", BODY, msg_id=delivery)

    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert len(rig.sandbox.jobs()) == 1
    assert rig.app.ledger.get(f"store-clusters:{delivery}").state == CLAIMED


def test_the_sweeper_adopts_the_job_whose_answer_was_lost_instead_of_submitting_again(rig):
    rig.sandbox.faults.drop("submit", after=True)
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(GRACE_S + 1)

    report = rig.client("sweep").post("/").get_json()
    statuses = rig.poll_all()
    replay = rig.post("store-clusters", BODY, msg_id=delivery)

    job_id = assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)
    assert report["adopted"] == 1 and statuses == [ACK]
    assert replay.status_code == 200 and replay.get_json()["job_id"] == job_id


def test_a_retry_soon_after_a_lost_answer_is_told_to_wait(rig):
    rig.sandbox.faults.drop("submit", after=True)
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(30)

    retried = rig.post("store-clusters", BODY, msg_id=delivery)

    assert retried.status_code == 409 and retried.headers["Retry-After"]
    assert len(rig.sandbox.jobs()) == 1


def test_a_retry_after_90_s_finds_the_job_in_carto_and_answers_it(rig):
    rig.sandbox.faults.drop("submit", after=True)
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(91)

    retried = rig.post("store-clusters", BODY, msg_id=delivery)
    statuses = rig.poll_all()

    job_id = assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)
    assert retried.status_code == 200 and retried.get_json()["job_id"] == job_id
    assert statuses == [ACK]


@pytest.fixture
def crashing(test_schemas, tmp_path) -> Iterator[Rig]:
    with running_rig(test_schemas, tmp_path, ledger=CrashingLedger(tmp_path / "ledger.sqlite3")) as built:
        yield built


def test_a_crash_before_the_ledger_write_then_a_late_replay_adopts_the_job(crashing):
    delivery = msg()

    crashed = crashing.post("store-clusters", BODY, msg_id=delivery)
    crashing.clock.advance(91)
    replay = crashing.post("store-clusters", BODY, msg_id=delivery)
    crashing.poll_all()

    job_id = assert_one_job_with_one_outcome(crashing.sandbox, crashing.publisher)
    assert crashed.status_code == 503 and crashed.headers["Retry-After"]
    assert replay.status_code == 200 and replay.get_json()["job_id"] == job_id


def test_a_crash_before_the_ledger_write_then_the_sweep_adopts_the_job(crashing):
    delivery = msg()

    crashed = crashing.post("store-clusters", BODY, msg_id=delivery)
    crashing.clock.advance(GRACE_S + 1)
    report = crashing.client("sweep").post("/").get_json()
    crashing.poll_all()

    assert crashed.status_code == 503 and report["adopted"] == 1
    job_id = assert_one_job_with_one_outcome(crashing.sandbox, crashing.publisher)
    assert crashing.app.ledger.get(f"store-clusters:{delivery}").job_id == job_id


# --- Pub/Sub down after the job was submitted ---------------------------------------------------

def test_a_failed_tracking_publish_still_answers_202_and_leaves_the_record_submitted(rig):
    rig.publisher.fail_next = 1
    delivery = msg()

    accepted = rig.post("store-clusters", BODY, msg_id=delivery)

    assert accepted.status_code == 202 and accepted.get_json()["job_id"] == rig.sandbox.jobs()[0].external_id
    assert rig.app.ledger.get(f"store-clusters:{delivery}").state == SUBMITTED
    assert rig.tracking() == []


def test_a_replay_republishes_the_tracking_message_that_failed(rig):
    rig.publisher.fail_next = 1
    delivery = msg()
    accepted = rig.post("store-clusters", BODY, msg_id=delivery)

    replay = rig.post("store-clusters", BODY, msg_id=delivery)
    statuses = rig.poll_all()

    assert replay.status_code == 200 and replay.get_json()["job_id"] == accepted.get_json()["job_id"]
    assert statuses == [ACK]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_the_sweeper_republishes_the_tracking_message_that_failed(rig):
    rig.publisher.fail_next = 1
    rig.post("store-clusters", BODY)
    rig.clock.advance(GRACE_S + 1)

    report = rig.client("sweep").post("/").get_json()
    statuses = rig.poll_all()

    assert report["tracked"] == 1 and statuses == [ACK]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


# --- redelivered tracking messages --------------------------------------------------------------

def test_a_tracking_message_delivered_three_times_publishes_one_event(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    [message] = rig.tracking()

    statuses = [rig.deliver(message, "1") for _ in range(3)]

    assert statuses == [ACK] * 3
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_tracking_message_delivered_three_times_at_once_yields_one_event_id(rig):
    rig.post("store-clusters", BODY)
    [message] = rig.tracking()
    clients = [rig.fresh_client("poll") for _ in range(3)]

    statuses = race(3, lambda n: clients[n].post("/", json=push_body(message, "1")).status_code)

    assert statuses == [ACK] * 3
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_failed_event_publish_is_a_nack_and_the_redelivery_publishes_the_same_outcome(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    [message] = rig.tracking()
    rig.publisher.fail_next = 1

    nacked = rig.deliver(message)
    rig.clock.advance(3600)  # whatever CARTO would say by now, the recorded outcome stands
    redelivered = rig.deliver(message)

    assert nacked == NACK and redelivered == ACK
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


# --- many deliveries of one key at once ---------------------------------------------------------

def signed_once(rig: Rig, delivery: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(BODY).encode()
    return body, rig.headers("store-clusters", body, delivery)


def test_50_concurrent_deliveries_of_one_key_make_one_job(rig):
    body, headers = signed_once(rig, msg())
    rig.sandbox.faults.delay("submit", 0.3)  # hold the winner inside CARTO while the others arrive

    with served(rig.client("webhook").application) as url:
        answers = race(50, lambda n: requests.post(f"{url}/hooks/store-clusters", data=body, headers=headers,
                                                   timeout=30))
    statuses = [a.status_code for a in answers]
    rig.poll_all()

    assert set(statuses) <= {202, 200, 409} and statuses.count(202) == 1, statuses
    job_id = assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)
    assert {a.json()["job_id"] for a in answers if a.status_code in (200, 202)} == {job_id}
    assert all(a.headers["Retry-After"] for a in answers if a.status_code == 409)


def test_50_concurrent_deliveries_over_two_instances_sharing_the_ledger_make_one_job(test_schemas, tmp_path):
    with running_rig(test_schemas, tmp_path) as first:
        second = Rig.build(gateway_env(test_schemas, first.sandbox, tmp_path), first.clock, first.sandbox)
        assert second.app.carto is not first.app.carto and second.app.ledger is not first.app.ledger
        body, headers = signed_once(first, msg())

        with served(first.client("webhook").application) as one, served(second.client("webhook").application) as two:
            urls = (one, two)
            answers = race(50, lambda n: requests.post(f"{urls[n % 2]}/hooks/store-clusters", data=body,
                                                       headers=headers, timeout=30))
        statuses = [a.status_code for a in answers]
        first.poll_all()
        second.poll_all()

        assert set(statuses) <= {202, 200, 409} and statuses.count(202) == 1, statuses
        assert_one_job_with_one_outcome(first.sandbox, first.publisher, second.publisher)


# --- cancel -------------------------------------------------------------------------------------

def test_a_cancelled_job_yields_one_cancelled_event_even_when_poll_sees_it_done_later(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]

    cancelled = rig.job_request("DELETE", job_id)
    rig.clock.advance(60)  # CARTO now reports the job DONE
    statuses = rig.poll_all()
    shown = rig.job_request("GET", job_id).get_json()

    assert cancelled.status_code == 200 and statuses == [ACK]
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:CANCELLED"]
    assert shown["outcome"] == "CANCELLED" and shown["event_published"] is True
    assert rig.sandbox.jobs()[0].cancelled


def test_cancelling_a_job_poll_already_finished_changes_nothing(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.poll_all()

    answer = rig.job_request("DELETE", job_id)

    assert answer.status_code == 200 and answer.get_json()["outcome"] == "SUCCEEDED"
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]
    assert not rig.sandbox.jobs()[0].cancelled


def test_cancelling_a_job_that_already_ended_in_carto_reports_how_it_ended(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.clock.advance(60)  # CARTO finished the job; poll has not looked yet

    answer = rig.job_request("DELETE", job_id)
    statuses = rig.poll_all()

    assert answer.status_code == 200 and answer.get_json()["outcome"] == "SUCCEEDED" and statuses == [ACK]
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]
    assert not rig.sandbox.jobs()[0].cancelled


def test_a_poll_that_sees_the_cancel_in_carto_first_reports_it_as_cancelled(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    # The DELETE's call to CARTO has landed; its ledger write has not (yet): poll gets there first.
    rig.app.carto.cancel(rig.sandbox.url, "carto_dw", job_id)

    statuses = rig.poll_all()
    answer = rig.job_request("DELETE", job_id)

    assert statuses == [ACK] and answer.get_json()["outcome"] == "CANCELLED"
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:CANCELLED"]


def test_job_status_shows_the_ledger_record_and_the_live_state(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]

    shown = rig.job_request("GET", job_id)

    assert shown.status_code == 200
    view = shown.get_json()
    assert view["job_id"] == job_id and view["state"] == TRACKED and view["outcome"] is None
    assert view["live"] == {"state": "PENDING", "outcome": None, "error": None}

