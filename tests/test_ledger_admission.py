"""The admission moves on every ledger store: SQLite and Firestore (the real emulator) pass the same tests."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.ledger import (
    BUSY,
    CLAIMED,
    FINISHED,
    QUEUED,
    REFUSE,
    REPLACE,
    RUN,
    SUBMITTED,
    SUPERSEDED,
    WAIT,
    Delivery,
    Rule,
    open_ledger,
)
from tests.constants import PROJECT

T0 = 1_700_000_000.0
CAP1 = Rule(cap=1)


@pytest.fixture(params=["sqlite", "firestore"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        ledger = open_ledger(f"sqlite:///{tmp_path}/state/ledger.db")
    else:
        request.getfixturevalue("firestore_emulator")
        ledger = open_ledger(f"firestore://deliveries-{uuid.uuid4().hex}", project=PROJECT)
    yield ledger
    ledger.close()


def delivery(n: int, *, at: float = T0, workflow: str = "nightly") -> Delivery:
    return Delivery(key=f"{workflow}:evt-{n}", workflow=workflow, idempotency_key=f"evt-{n}", fingerprint="f" * 64,
                    claim_token=f"token-{n}", created_at=at + n, updated_at=at + n, expires_at=at + 72 * 3600,
                    delivery_id=f"evt-{n}", deadline_at=at + n + 3600)


def admit(ledger, n: int, rule: Rule = CAP1, **kw):
    return ledger.claim_admitted(delivery(n, **kw), rule, T0 + n)


def test_an_arrival_under_the_cap_gets_a_slot(ledger):
    admitted = admit(ledger, 1)
    assert admitted.created and admitted.verdict == RUN
    record = ledger.get("nightly:evt-1")
    assert record.state == CLAIMED and record.capped
    assert ledger.line("nightly").running == ["nightly:evt-1"]


def test_an_arrival_at_the_cap_waits_in_arrival_order(ledger):
    admit(ledger, 1)
    assert admit(ledger, 2).verdict == WAIT
    assert admit(ledger, 3).verdict == WAIT
    second = ledger.get("nightly:evt-2")
    assert second.state == QUEUED and second.waiting and second.queue_reason == "busy"
    assert second.queued_at == T0 + 2 and second.updated_at == second.deadline_at  # the sweeper times it out then
    assert ledger.line("nightly").waiting == ["nightly:evt-2", "nightly:evt-3"]


def test_refuse_at_the_cap_records_nothing(ledger):
    rule = Rule(cap=1, when_busy=REFUSE)
    admit(ledger, 1, rule)
    busy = admit(ledger, 2, rule)
    assert busy.verdict == BUSY and not busy.created
    assert ledger.get("nightly:evt-2") is None
    assert ledger.line("nightly").waiting == []


def test_replace_keeps_only_the_newest_waiting_and_supersedes_the_others(ledger):
    rule = Rule(cap=1, when_busy=REPLACE)
    admit(ledger, 1, rule)
    admit(ledger, 2, rule)
    third = admit(ledger, 3, rule)
    assert third.verdict == WAIT and third.replaced == ("nightly:evt-2",)
    replaced = ledger.get("nightly:evt-2")
    assert replaced.state == FINISHED and replaced.outcome == SUPERSEDED and replaced.superseded_by == "evt-3"
    assert not replaced.published and replaced.job_id is None
    assert ledger.line("nightly").waiting == ["nightly:evt-3"]


def test_a_replay_of_a_recorded_key_is_not_admitted_again(ledger):
    admit(ledger, 1)
    again = admit(ledger, 1)
    assert not again.created and again.delivery.key == "nightly:evt-1"
    assert ledger.line("nightly").running == ["nightly:evt-1"]


def test_a_job_end_hands_its_slot_to_the_oldest_waiting(ledger):
    admit(ledger, 1)
    admit(ledger, 2)
    admit(ledger, 3)
    assert ledger.mark_submitted("nightly:evt-1", "token-1", "job-1", T0 + 1, T0 + 3600, T0 + 1)
    ended = ledger.finish("nightly:evt-1", "SUCCEEDED", "DONE", None, 3, T0 + 50)
    assert ended.handed_to == ["nightly:evt-2"]
    granted = ledger.get("nightly:evt-2")
    assert granted.state == QUEUED and granted.hand_off_at == T0 + 50 and not granted.waiting
    line = ledger.line("nightly")
    assert line.running == ["nightly:evt-2"] and line.waiting == ["nightly:evt-3"]


def test_a_repeated_finish_hands_on_once(ledger):
    admit(ledger, 1)
    admit(ledger, 2)
    admit(ledger, 3)
    ledger.finish("nightly:evt-1", "SUCCEEDED", "DONE", None, 3, T0 + 50)
    again = ledger.finish("nightly:evt-1", "FAILED", "DONE", None, 4, T0 + 60)
    assert again.outcome == "SUCCEEDED" and again.handed_to == ["nightly:evt-2"]
    assert ledger.line("nightly").running == ["nightly:evt-2"]


def test_paused_holds_every_arrival_and_refill_releases_them_in_arrival_order(ledger):
    paused = Rule(cap=None, paused=True)
    for n in (1, 2, 3):
        assert admit(ledger, n, paused).verdict == WAIT
    assert ledger.get("nightly:evt-1").queue_reason == "paused"
    assert ledger.refill("nightly", paused, T0 + 10) == []
    granted = ledger.refill("nightly", Rule(cap=2), T0 + 20)
    assert granted == ["nightly:evt-1", "nightly:evt-2"]
    assert ledger.get("nightly:evt-1").hand_off_at == T0 + 20
    assert ledger.get("nightly:evt-3").waiting


def test_an_arrival_after_unpausing_lets_the_older_ones_go_first(ledger):
    admit(ledger, 1, Rule(cap=1, paused=True))
    later = admit(ledger, 2, CAP1)
    assert later.verdict == WAIT and later.granted == ("nightly:evt-1",)
    assert ledger.line("nightly").waiting == ["nightly:evt-2"]


def test_queue_then_dequeue_by_the_task_of_that_attempt(ledger):
    ledger.claim(delivery(1))
    assert ledger.queue("nightly:evt-1", "token-1", reason="carto_unavailable", hand_off_at=T0 + 30,
                        answer={"status": 503, "message": "down"}, unknown=False, now=T0 + 2)
    queued = ledger.get("nightly:evt-1")
    assert (queued.state, queued.attempts, queued.hand_off_at, queued.updated_at) == (QUEUED, 1, T0 + 30, T0 + 30)
    assert queued.last_answer == {"status": 503, "message": "down"} and queued.queued_at == T0 + 2
    assert ledger.dequeue("nightly:evt-1", 0, "token-x", T0 + 31) is None  # a stale task
    taken = ledger.dequeue("nightly:evt-1", 1, "token-x", T0 + 31)
    assert taken.state == CLAIMED and taken.claim_token == "token-x"
    assert ledger.dequeue("nightly:evt-1", 1, "token-y", T0 + 31) is None  # its twin
    assert ledger.mark_submitted("nightly:evt-1", "token-x", "job-1", T0 + 32, T0 + 3601, T0 + 32)
    submitted = ledger.get("nightly:evt-1")
    assert submitted.state == SUBMITTED and submitted.hand_off_at is None and submitted.queued_at == T0 + 2


def test_queue_never_sets_a_hand_off_past_the_deadline(ledger):
    ledger.claim(delivery(1))
    ledger.queue("nightly:evt-1", "token-1", reason="carto_unavailable", hand_off_at=T0 + 99999, answer=None,
                 unknown=True, now=T0 + 2)
    record = ledger.get("nightly:evt-1")
    assert record.hand_off_at == record.deadline_at and record.unknown


def test_reschedule_moves_a_lost_hand_off_to_the_next_attempt(ledger):
    ledger.claim(delivery(1))
    ledger.queue("nightly:evt-1", "token-1", reason="carto_slow", hand_off_at=T0 + 5, answer=None, unknown=False,
                 now=T0 + 2)
    moved = ledger.reschedule("nightly:evt-1", 1, T0 + 200, T0 + 200)
    assert moved.attempts == 2 and moved.hand_off_at == T0 + 200
    assert ledger.reschedule("nightly:evt-1", 1, T0 + 300, T0 + 300) is None


def test_end_queued_ends_a_waiting_delivery_and_frees_its_place(ledger):
    admit(ledger, 1)
    admit(ledger, 2)
    ended = ledger.end_queued("nightly:evt-2", "CANCELLED", None, T0 + 9)
    assert ended.outcome == "CANCELLED" and ended.job_id is None and ended.finished_at == T0 + 9
    assert ledger.line("nightly").waiting == []
    assert ledger.end_queued("nightly:evt-2", "CANCELLED", None, T0 + 10) is None


def test_end_queued_leaves_a_submitted_delivery_alone(ledger):
    admit(ledger, 1)
    ledger.mark_submitted("nightly:evt-1", "token-1", "job-1", T0 + 1, T0 + 3600, T0 + 1)
    assert ledger.end_queued("nightly:evt-1", "CANCELLED", None, T0 + 9) is None
    assert ledger.end_queued("nightly:evt-1", "CANCELLED", None, T0 + 9, claim_token="token-1") is None
    assert ledger.get("nightly:evt-1").state == SUBMITTED


def test_end_queued_of_a_claim_needs_its_token_and_hands_the_slot_on(ledger):
    admit(ledger, 1)
    admit(ledger, 2)
    assert ledger.end_queued("nightly:evt-1", "FAILED", {"message": "no"}, T0 + 9) is None
    ended = ledger.end_queued("nightly:evt-1", "FAILED", {"message": "no"}, T0 + 9, claim_token="token-1")
    assert ended.handed_to == ["nightly:evt-2"]


def test_releasing_a_capped_claim_frees_its_slot_for_refill(ledger):
    admit(ledger, 1)
    admit(ledger, 2)
    assert ledger.release("nightly:evt-1", "token-1")
    assert ledger.get("nightly:evt-1") is None
    assert ledger.line("nightly").running == []
    assert ledger.refill("nightly", CAP1, T0 + 5) == ["nightly:evt-2"]


def test_refill_frees_the_slot_of_a_record_that_ended_or_vanished(ledger):
    admit(ledger, 1)
    admit(ledger, 2)
    ledger.release("nightly:evt-1", "token-1")  # gone
    assert ledger.refill("nightly", CAP1, T0 + 5) == ["nightly:evt-2"]
    assert ledger.line("nightly").running == ["nightly:evt-2"]


def test_uncapped_deliveries_never_touch_a_line(ledger):
    ledger.claim(delivery(1))
    ledger.mark_submitted("nightly:evt-1", "token-1", "job-1", T0 + 1, T0 + 3600, T0 + 1)
    ended = ledger.finish("nightly:evt-1", "SUCCEEDED", "DONE", None, 1, T0 + 9)
    assert ended.handed_to == [] and not ended.capped
    assert ledger.line("nightly") is None


def test_concurrent_arrivals_never_exceed_the_cap(ledger):
    start = threading.Barrier(12)

    def arrive(n: int) -> str:
        start.wait()
        return ledger.claim_admitted(delivery(n), Rule(cap=3), T0 + n).verdict

    with ThreadPoolExecutor(12) as pool:
        verdicts = list(pool.map(arrive, range(12)))
    assert verdicts.count(RUN) == 3 and verdicts.count(WAIT) == 9
    line = ledger.line("nightly")
    assert len(line.running) == 3 and len(line.waiting) == 9
