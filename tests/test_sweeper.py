"""The sweeper (gateway/sweeper.py): each re-drive path of its docstring, on a FakeClock,
through the real `sweep` function app, the local CARTO job API (same clock) and a SQLite ledger.

    claimed, silent past the grace   → adopt the job CARTO has for it, or release the claim (queue it
                                       again when it was accepted)
    queued, hand-off overdue         → its submit task again; waiting past the deadline → TIMED_OUT
    submitted (tracking unpublished) → publish the tracking message
    tracked, next check overdue      → schedule it again; past the deadline, check once and finish
    finished, event unpublished      → publish the completion event
"""

from __future__ import annotations

from typing import Any

from gateway.ledger import CLAIMED, FINISHED, SUBMITTED, TRACKED
from tests.rigs import (
    ACK,
    BODY,
    GRACE_S,
    NACK,
    Rig,
    assert_one_job_with_one_outcome,
    msg,
)

NOTHING = {"adopted": 0, "released": 0, "tracked": 0, "rescheduled": 0, "timed_out": 0, "published": 0, "purged": 0,
           "requeued": 0, "handed_off": 0, "not_submitted": 0, "failed": []}


def sweep(rig: Rig) -> dict[str, Any]:
    answer = rig.client("sweep").post("/")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    return answer.get_json()


def did(**counts: Any) -> dict[str, Any]:
    return {**NOTHING, **counts}


def state_of(rig: Rig, key: str) -> str | None:
    record = rig.app.ledger.get(key)
    return None if record is None else record.state


# --- claimed ------------------------------------------------------------------------------------

def test_a_silent_claim_whose_job_carto_has_is_adopted_not_submitted_again(rig):
    rig.sandbox.faults.drop("submit", after=True)
    rig.app.ledger.crash("queue")  # the instance dies before it could queue the delivery
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(GRACE_S + 1)

    report = sweep(rig)
    statuses = rig.poll_all()

    assert report == did(adopted=1) and statuses == [ACK]
    job_id = assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)
    assert rig.app.ledger.get(f"store-clusters:{delivery}").job_id == job_id


def test_a_silent_claim_with_no_job_in_carto_is_released_for_the_senders_retry(rig):
    rig.sandbox.faults.drop("submit")  # the connection dies before CARTO read the request: no job
    rig.app.ledger.crash("queue")  # and the instance before it could queue the delivery
    delivery = msg()
    lost = rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(GRACE_S + 1)

    report = sweep(rig)
    released = state_of(rig, f"store-clusters:{delivery}")
    retried = rig.post("store-clusters", BODY, msg_id=delivery)
    rig.poll_all()

    assert lost.status_code == 503 and report == did(released=1) and released is None
    assert retried.status_code == 202
    assert assert_one_job_with_one_outcome(rig.sandbox, rig.publisher) == retried.get_json()["job_id"]


def test_a_claim_within_the_grace_is_left_alone(rig):
    rig.sandbox.faults.drop("submit", after=True)
    rig.app.ledger.crash("queue")
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(GRACE_S - 1)

    assert sweep(rig) == NOTHING
    assert state_of(rig, f"store-clusters:{delivery}") == CLAIMED and len(rig.sandbox.jobs()) == 1


def test_a_claim_is_kept_while_carto_cannot_list_its_jobs(rig):
    rig.sandbox.faults.drop("submit")
    rig.app.ledger.crash("queue")
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(GRACE_S + 1)
    rig.sandbox.faults.error("list", status=503, count=3)  # every attempt of the first sweep

    first = sweep(rig)
    kept = state_of(rig, f"store-clusters:{delivery}")
    second = sweep(rig)

    assert first == did(failed=[f"store-clusters:{delivery}"]) and kept == CLAIMED
    assert second == did(released=1)


# --- submitted ----------------------------------------------------------------------------------

def test_a_submitted_delivery_without_its_tracking_message_gets_it(rig):
    rig.publisher.fail_next = 1
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(GRACE_S + 1)

    report = sweep(rig)
    statuses = rig.poll_all()

    assert report == did(tracked=1) and statuses == [ACK]
    assert state_of(rig, f"store-clusters:{delivery}") == FINISHED
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_tracking_publish_that_fails_again_is_retried_by_the_next_sweep(rig):
    rig.publisher.fail_next = 2  # the webhook's publish and the first sweep's
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.clock.advance(GRACE_S + 1)

    first = sweep(rig)
    still = state_of(rig, f"store-clusters:{delivery}")
    second = sweep(rig)

    assert first == NOTHING and still == SUBMITTED
    assert second == did(tracked=1) and state_of(rig, f"store-clusters:{delivery}") == TRACKED


# --- tracked ------------------------------------------------------------------------------------

def test_a_tracked_job_whose_check_task_was_lost_gets_its_next_check_scheduled_again(rig):
    rig.tasks.lose_next = 1  # Cloud Tasks took the task, then lost it
    rig.post("store-clusters", BODY)
    statuses = rig.poll_all()
    nothing_pending, no_event = not rig.tasks.pending, not rig.publisher.events()
    lost_due = rig.tasks.requests[-1]["task"]["schedule_time"].timestamp()
    rig.clock.advance(lost_due + GRACE_S + 1 - rig.clock.now())  # the lost check is overdue by the grace

    report = sweep(rig)
    again = sweep(rig)  # the first re-drive moved the record on: not twice
    rig.run_tasks()

    assert statuses == [ACK] and nothing_pending and no_event
    assert report == did(rescheduled=1) and again == NOTHING
    assert len(rig.tracking()) == 1 and len(rig.publisher.events()) == 1
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_tracked_job_whose_chain_is_alive_is_left_alone(rig):
    rig.post("store-clusters", BODY)
    rig.deliver(rig.tracking()[0])  # the first trigger: its next check is a pending task
    rig.clock.advance(GRACE_S / 2)

    assert sweep(rig) == NOTHING and len(rig.tasks.pending) == 1


def test_a_deadline_passing_while_no_task_is_pending_yields_one_timed_out_event(rig):
    rig.sandbox.faults.never_finish()
    rig.tasks.lose_next = 10**6  # every check task is lost, and so is every re-drive of one
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.poll_all()
    rig.clock.advance(21600 + GRACE_S)  # the workflow's deadline_s, plus the grace

    report = sweep(rig)
    second = sweep(rig)

    assert report == did(timed_out=1) and second == NOTHING
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:TIMED_OUT"]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_tracked_job_past_its_deadline_is_finished_with_the_outcome_carto_reports(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.clock.advance(21600 + GRACE_S)  # the workflow's deadline_s, plus the grace

    report = sweep(rig)
    redelivered = rig.poll_all()

    assert report == did(timed_out=1) and redelivered == [ACK]
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]


def test_a_job_still_running_past_its_deadline_yields_one_timed_out_event(rig):
    rig.sandbox.faults.never_finish()
    job_id = rig.post("slow-report", {"region": "emea"}).get_json()["job_id"]
    rig.clock.advance(3 + GRACE_S)  # slow-report's deadline_s is 3

    report = sweep(rig)
    redelivered = rig.poll_all()

    assert report == did(timed_out=1) and redelivered == [ACK]
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:TIMED_OUT"]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


# --- finished -----------------------------------------------------------------------------------

def test_a_finished_job_whose_event_was_not_published_gets_it(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.publisher.fail_next = 1
    first = rig.deliver(rig.tracking()[0])
    checks = rig.run_tasks(retry=False)  # the check that sees the end cannot publish: a 5xx
    rig.clock.advance(GRACE_S + 1)

    report = sweep(rig)
    retried = rig.run_task(rig.failed_tasks[-1])  # the queue's retry of that task arrives after

    assert first == ACK and checks[-1] == NACK and report == did(published=1) and retried == ACK
    assert [e["attributes"]["ce-id"] for e in rig.publisher.events()] == [f"{job_id}:SUCCEEDED"]


def test_a_delivery_whose_event_is_published_is_never_swept_again(rig):
    rig.post("store-clusters", BODY)
    rig.poll_all()
    rig.clock.advance(7 * 24 * 3600 - 60)  # just inside the retention window

    assert sweep(rig) == NOTHING
    assert len(rig.publisher.events()) == 1


def test_a_record_past_its_retention_is_purged_from_the_sqlite_ledger(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.poll_all()
    rig.clock.advance(7 * 24 * 3600 + 1)  # GATEWAY_RETENTION_S's default

    assert sweep(rig) == did(purged=1)
    assert rig.app.ledger.find_job(job_id) is None
