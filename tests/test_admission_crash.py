"""A submitter dies at the worst moments of a capped workflow (tests/rigs.py: the real function apps,
the local CARTO job API and a SQLite ledger on a fake clock): between a slot's grant and its submission,
and between CARTO's answer and the ledger's record of the job. The slot is never given to a second
delivery meanwhile, never stays idle past the next sweep once its holder's POST can no longer be in
flight, and no delivery gets two jobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.ledger import CLAIMED, QUEUED
from tests.rigs import BODY, Rig, assert_one_job_with_one_outcome, msg, peak_running, running_rig, write_admission_schemas

WORKFLOW = "one-at-a-time"
SWEEP_EVERY_S = 60.0  # Cloud Scheduler's sweep interval


@pytest.fixture
def rig(test_schemas, tmp_path) -> Iterator[Rig]:
    schemas = write_admission_schemas(test_schemas, tmp_path / "schemas")
    with running_rig(schemas, tmp_path / "state") as built:
        yield built


def key(delivery: str) -> str:
    return f"{WORKFLOW}:{delivery}"


def sweep(rig: Rig) -> dict:
    return rig.client("sweep").post("/").get_json()


def sweep_every_interval(rig: Rig, until: float) -> None:
    """The sweeper on its schedule, the tasks it hands out run, until the fake clock reaches `until`."""
    while rig.clock.now() < until:
        rig.clock.advance(SWEEP_EVERY_S)
        sweep(rig)
        rig.poll_all()


def jobs_of(rig: Rig, delivery: str) -> list:
    return [job for job in rig.sandbox.jobs() if (job.metadata or {}).get("delivery_id") == delivery]


def test_killed_between_the_grant_and_the_hand_off_the_next_sweep_submits_the_holder(rig):
    first, second = msg(), msg()
    rig.post(WORKFLOW, BODY, msg_id=first)
    rig.post(WORKFLOW, BODY, msg_id=second)
    hand_off = rig.app.poller.hand_off
    rig.app.poller.hand_off = lambda keys: None  # poll dies right after the job's end granted the slot
    rig.poll_all()
    rig.app.poller.hand_off = hand_off
    granted, running = rig.app.ledger.get(key(second)), rig.app.ledger.line(WORKFLOW).running
    ended_at = rig.app.ledger.get(key(first)).finished_at

    jobs_then = jobs_of(rig, second)
    rig.clock.advance(SWEEP_EVERY_S)
    report = sweep(rig)
    rig.poll_all()

    assert granted.state == QUEUED and not granted.waiting and running == [key(second)] and jobs_then == []
    assert report["handed_off"] == 1
    assert jobs_of(rig, second)[0].created_at - ended_at <= SWEEP_EVERY_S  # idle for at most one interval
    assert len(rig.sandbox.jobs()) == 2 and peak_running(rig.sandbox.jobs()) == 1


def test_killed_after_dequeuing_before_carto_read_the_post_the_slot_is_held_then_resubmitted(rig):
    first, second, third = msg(), msg(), msg()
    for delivery in (first, second, third):
        rig.post(WORKFLOW, BODY, msg_id=delivery)
    # second's submit task: its POST never reaches CARTO, and the submitter dies before it can queue it again
    rig.sandbox.faults.drop("submit")
    rig.app.ledger.crash("queue")
    rig.poll_all()
    held, jobs_meanwhile = rig.app.ledger.get(key(second)), jobs_of(rig, second)
    line_meanwhile = rig.app.ledger.line(WORKFLOW)
    crashed_at = rig.clock.now()

    sweep_every_interval(rig, crashed_at + rig.app.sweeper.claim_stale_s + SWEEP_EVERY_S)
    rig.poll_all()

    assert held.state == CLAIMED and held.queued_at is not None and jobs_meanwhile == []
    assert line_meanwhile.running == [key(second)] and line_meanwhile.waiting == [key(third)]  # not given away
    assert len(jobs_of(rig, first)) == len(jobs_of(rig, second)) == len(jobs_of(rig, third)) == 1
    # the slot waited only for the POST it may still have had in flight, then one sweep
    assert jobs_of(rig, second)[0].created_at - crashed_at <= rig.app.sweeper.claim_stale_s + SWEEP_EVERY_S
    assert peak_running(rig.sandbox.jobs()) == 1
    assert len(rig.publisher.events()) == 3


def test_killed_between_carto_s_answer_and_the_ledger_write_the_job_is_adopted_not_posted_again(rig):
    first, second = msg(), msg()
    rig.post(WORKFLOW, BODY, msg_id=first)
    rig.post(WORKFLOW, BODY, msg_id=second)
    rig.app.ledger.crash("mark_submitted")  # second's submit task: CARTO creates the job, the submitter dies
    rig.poll_all()
    held = rig.app.ledger.get(key(second))
    created = len(jobs_of(rig, second))
    crashed_at = rig.clock.now()

    sweep_every_interval(rig, crashed_at + rig.app.sweeper.claim_stale_s + SWEEP_EVERY_S)
    rig.poll_all()

    assert held.state == CLAIMED and held.job_id is None and created == 1
    assert rig.app.ledger.line(WORKFLOW).running == []
    record = rig.app.ledger.get(key(second))
    assert [job.external_id for job in jobs_of(rig, second)] == [record.job_id] and record.outcome == "SUCCEEDED"
    assert len(rig.sandbox.jobs()) == 2 and peak_running(rig.sandbox.jobs()) == 1


def test_killed_between_carto_s_answer_and_the_ledger_write_inline_then_one_job(rig):
    rig.app.ledger.crash("mark_submitted")  # the webhook: CARTO creates the job, the instance dies
    delivery = msg()
    answer = rig.post(WORKFLOW, BODY, msg_id=delivery)
    crashed_at = rig.clock.now()

    sweep_every_interval(rig, crashed_at + rig.app.sweeper.claim_stale_s + SWEEP_EVERY_S)

    assert answer.status_code == 503
    assert assert_one_job_with_one_outcome(rig.sandbox, rig.publisher) == rig.app.ledger.get(key(delivery)).job_id
    assert rig.app.ledger.line(WORKFLOW).running == []
