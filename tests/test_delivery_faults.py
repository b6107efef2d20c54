"""Whatever fails between the sender and the completion event, one delivery makes one CARTO job and
that job makes at least one completion event, every copy with the same ce-id (docs/architecture.md, "Invariants").

Everything is real except time and Pub/Sub: the functions-framework apps of main.py, the local CARTO
job API over loopback HTTP (on the same FakeClock as the app), each ledger store (a SQLite file, and
Firestore on its real emulator), and a recording publisher whose `fail_next` stands in for Pub/Sub
being down. Tracking messages reach `poll` as Pub/Sub push bodies, so a raise is a 500 (nack) and a
return a 2xx (ack), as in the cloud.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from gateway.ledger import QUEUED, SUBMITTED, TRACKED, open_ledger
from tests.constants import PROJECT
from tests.rigs import (
    ACK,
    BODY,
    GRACE_S,
    NACK,
    CrashingLedger,
    Rig,
    assert_one_job_with_one_outcome,
    gateway_env,
    msg,
    push_body,
    race,
    running_rig,
    served,
)


@pytest.fixture(params=["sqlite", "firestore"])
def store(request, tmp_path) -> dict[str, str]:
    """The ledger store of the test's instances: settings over the rig's (SQLite by default)."""
    if request.param == "sqlite":
        return {"GATEWAY_LEDGER": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"}
    request.getfixturevalue("firestore_emulator")
    return {"GATEWAY_LEDGER": f"firestore://faults-{uuid.uuid4().hex}"}


@pytest.fixture
def rig(test_schemas, tmp_path, store) -> Iterator[Rig]:
    with running_rig(test_schemas, tmp_path, **store) as built:
        yield built


# --- CARTO unavailable before the job exists ---------------------------------------------------

def test_carto_503_on_submit_is_accepted_queued_and_its_submit_task_makes_the_one_job(rig):
    rig.sandbox.faults.error("submit", status=503, count=1)
    delivery = msg()

    queued = rig.post("store-clusters", BODY, msg_id=delivery)
    record = rig.app.ledger.get(f"store-clusters:{delivery}")
    statuses = rig.poll_all()
    replay = rig.post("store-clusters", BODY, msg_id=delivery)

    assert queued.status_code == 202 and queued.get_json()["queued"] is True and queued.get_json()["job_id"] is None
    assert record.state == QUEUED and record.queue_reason == "carto_unavailable"
    assert record.last_answer["status"] == 503 and statuses == [ACK]
    job_id = assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)
    assert replay.status_code == 200 and replay.get_json()["job_id"] == job_id and not replay.get_json()["queued"]
    assert rig.publisher.events()[0]["data"]["queued_s"] > 0


def test_carto_503_is_not_retried_inside_the_request(rig):
    rig.sandbox.faults.error("submit", status=503, count=1)

    accepted = rig.post("store-clusters", BODY)
    jobs_then = len(rig.sandbox.jobs())
    rig.poll_all()

    assert accepted.status_code == 202 and jobs_then == 0
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


# --- a crash after CARTO accepted the job, before the ledger knew ---------------------------------

def test_a_lost_submit_answer_is_accepted_queued_with_its_outcome_unknown(rig):
    rig.sandbox.faults.drop("submit", after=True)  # the job is created; the gateway never hears
    delivery = msg()

    queued = rig.post("store-clusters", BODY, msg_id=delivery)

    record = rig.app.ledger.get(f"store-clusters:{delivery}")
    assert queued.status_code == 202 and queued.get_json()["queued"] is True
    assert len(rig.sandbox.jobs()) == 1
    assert record.state == QUEUED and record.unknown and record.queue_reason == "carto_unavailable"


def test_the_submit_task_adopts_the_job_whose_answer_was_lost_instead_of_submitting_again(rig):
    rig.sandbox.faults.drop("submit", after=True)
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)

    statuses = rig.poll_all()
    replay = rig.post("store-clusters", BODY, msg_id=delivery)

    job_id = assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)
    assert statuses == [ACK]
    assert replay.status_code == 200 and replay.get_json()["job_id"] == job_id


def test_a_retry_soon_after_a_lost_answer_is_told_it_is_queued(rig):
    rig.sandbox.faults.drop("submit", after=True)
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(3)

    retried = rig.post("store-clusters", BODY, msg_id=delivery)

    assert retried.status_code == 200 and retried.get_json()["queued"] is True
    assert len(rig.sandbox.jobs()) == 1


@pytest.fixture
def crashing(test_schemas, tmp_path, store) -> Iterator[Rig]:
    ledger = CrashingLedger(open_ledger(store["GATEWAY_LEDGER"], project=PROJECT))
    with running_rig(test_schemas, tmp_path, ledger=ledger, **store) as built:
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
    rig.run_tasks()

    assert statuses == [ACK] * 3
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_tracking_message_delivered_three_times_at_once_yields_one_event_id(rig):
    rig.post("store-clusters", BODY)
    [message] = rig.tracking()
    clients = [rig.fresh_client("poll") for _ in range(3)]

    statuses = race(3, lambda n: clients[n].post("/", json=push_body(message, "1")).status_code)
    rig.run_tasks()

    assert statuses == [ACK] * 3
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_check_task_delivered_twice_yields_one_event_and_schedules_each_next_check_once(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    first = rig.deliver(rig.tracking()[0])
    statuses, tasks = [], 0
    while (request := rig.tasks.take_next()) is not None:
        statuses += [rig.run_task(request), rig.run_task(request)]  # at-least-once: each task arrives twice
        tasks += 1

    assert first == ACK and statuses == [ACK] * 2 * tasks and tasks >= 2
    assert rig.tasks.already_existed == tasks - 1  # each twin scheduled the same next check: one task
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]


def test_cloud_tasks_down_while_scheduling_nacks_the_trigger_and_its_redelivery_follows_the_job(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    [message] = rig.tracking()
    rig.tasks.fail_next = 1  # the next check cannot be scheduled

    nacked = rig.deliver(message)
    redelivered = rig.deliver(message)  # Pub/Sub's retry of the tracking message
    rig.run_tasks()

    assert nacked == NACK and redelivered == ACK
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]


def test_a_failed_event_publish_is_a_nack_and_the_redelivery_publishes_the_same_outcome(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    [message] = rig.tracking()
    rig.publisher.fail_next = 1

    first = rig.deliver(message)
    nacked = rig.run_tasks(retry=False)[-1]  # the check that sees the end cannot publish
    rig.clock.advance(3600)  # whatever CARTO would say by now, the recorded outcome stands
    redelivered = rig.run_task(rig.failed_tasks[-1])

    assert first == ACK and nacked == NACK and redelivered == ACK
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


def test_50_concurrent_deliveries_over_two_instances_sharing_the_ledger_make_one_job(test_schemas, tmp_path, store):
    with running_rig(test_schemas, tmp_path, **store) as first:
        second = Rig.build(gateway_env(test_schemas, first.sandbox, tmp_path, **store), first.clock, first.sandbox)
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

    assert answer.status_code == 409 and "already ended (SUCCEEDED); nothing was cancelled" in answer.get_json()["detail"]
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]
    assert not rig.sandbox.jobs()[0].cancelled


def test_cancelling_a_job_that_already_ended_in_carto_reports_how_it_ended(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.clock.advance(60)  # CARTO finished the job; poll has not looked yet

    answer = rig.job_request("DELETE", job_id)
    statuses = rig.poll_all()

    assert answer.status_code == 409 and statuses == [ACK]
    assert "already ended at CARTO (SUCCEEDED); nothing was cancelled" in answer.get_json()["detail"]
    assert rig.app.ledger.find_job(job_id).outcome == "SUCCEEDED"  # recorded as it ended, by the cancel
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]
    assert not rig.sandbox.jobs()[0].cancelled


def test_a_poll_that_sees_the_cancel_in_carto_first_reports_it_as_cancelled(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    # The DELETE's call to CARTO has landed; its ledger write has not (yet): poll gets there first.
    rig.app.carto.cancel(rig.sandbox.url, "carto_dw", job_id)

    statuses = rig.poll_all()
    answer = rig.job_request("DELETE", job_id)

    assert statuses == [ACK] and answer.status_code == 409 and "already ended (CANCELLED)" in answer.get_json()["detail"]
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:CANCELLED"]


def test_job_status_shows_the_ledger_record_and_the_live_state(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]

    shown = rig.job_request("GET", job_id)

    assert shown.status_code == 200
    view = shown.get_json()
    assert view["job_id"] == job_id and view["state"] == TRACKED and view["outcome"] is None
    assert view["live"] == {"state": "PENDING", "outcome": None, "error": None}

