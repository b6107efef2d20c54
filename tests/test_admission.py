"""Admission on one gateway instance (tests/rigs.py: the real function apps, the local CARTO job API and a
SQLite ledger on a fake clock): accept-then-submit, the per-workflow cap in each `when_busy` mode,
paused workflows, the end of deliveries that never got a job, and the fast path left as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.carto import StaticToken
from gateway.ledger import QUEUED
from gateway.ledger.sqlite import SqliteLedger
from gateway.settings import Secret
from tests.rigs import ACK, BODY, EVENT_SCHEMA, Rig, msg, peak_running, running_rig, write_admission_schemas

CAPPED = "capped"


@pytest.fixture
def admission_schemas(test_schemas, tmp_path) -> Path:
    return write_admission_schemas(test_schemas, tmp_path / "schemas")


@pytest.fixture
def rig(admission_schemas, tmp_path) -> Iterator[Rig]:
    with running_rig(admission_schemas, tmp_path / "state") as built:
        yield built


def events_by_outcome(rig: Rig) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in rig.publisher.events():
        jsonschema.validate(event["data"], EVENT_SCHEMA)
        found.setdefault(event["attributes"]["outcome"], []).append(event)
    return found


def delivery_of(rig: Rig, job) -> str:
    return json.loads(json.dumps(job.metadata))["delivery_id"]


# --- accept, then submit -------------------------------------------------------------------------

def test_ten_deliveries_during_a_carto_outage_are_accepted_and_each_runs_once_after_it(rig):
    rig.sandbox.faults.error("submit", status=503, count=10)
    deliveries = [msg() for _ in range(10)]

    answers = [rig.post("store-clusters", BODY, msg_id=d) for d in deliveries]
    rig.poll_all()

    assert [a.status_code for a in answers] == [202] * 10 and all(a.get_json()["queued"] for a in answers)
    assert sorted(delivery_of(rig, job) for job in rig.sandbox.jobs()) == sorted(deliveries)
    succeeded = events_by_outcome(rig)["SUCCEEDED"]
    assert sorted(e["data"]["delivery_id"] for e in succeeded) == sorted(deliveries)
    assert all(e["data"]["queued_s"] > 0 for e in succeeded)


def test_a_rate_limiting_carto_is_honoured_and_every_delivery_runs_once(rig):
    rig.sandbox.faults.rate_limit("submit", retry_after=60, count=15)
    deliveries = [msg() for _ in range(30)]

    answers = [rig.post("store-clusters", BODY, msg_id=d) for d in deliveries]
    queued = [rig.app.ledger.get(f"store-clusters:{d}") for d in deliveries[:15]]
    rig.poll_all()

    assert [a.status_code for a in answers] == [202] * 30
    assert all(r.state == QUEUED and r.hand_off_at - r.queued_at >= 60 for r in queued)  # Retry-After honoured
    assert sorted(delivery_of(rig, job) for job in rig.sandbox.jobs()) == sorted(deliveries)
    assert len(events_by_outcome(rig)["SUCCEEDED"]) == 30


def test_a_queued_delivery_carto_refuses_for_good_ends_failed_without_a_job(rig):
    rig.sandbox.faults.error("submit", status=503)
    delivery = msg()

    answer = rig.post("store-clusters", BODY, msg_id=delivery)
    rig.app.carto._tokens = StaticToken(Secret("a-revoked-token"))  # CARTO now answers 401: for good
    rig.poll_all()

    [event] = rig.publisher.events()
    assert answer.status_code == 202 and rig.sandbox.jobs() == []
    assert event["attributes"]["outcome"] == "FAILED" and event["data"]["job_id"] is None
    assert event["data"]["error"]["reason"] == "notAccepted" and "401" in event["data"]["error"]["message"]
    assert event["attributes"]["ce-id"].startswith("delivery-") and "job_id" not in event["attributes"]
    jsonschema.validate(event["data"], EVENT_SCHEMA)


def test_a_delivery_still_unsubmitted_at_its_deadline_times_out_with_carto_s_last_answer(rig):
    rig.sandbox.faults.error("submit", status=503, count=10_000)
    delivery = msg()

    rig.post("store-clusters", BODY, msg_id=delivery)
    rig.poll_all()

    [event] = rig.publisher.events()
    record = rig.app.ledger.get(f"store-clusters:{delivery}")
    assert event["attributes"]["outcome"] == "TIMED_OUT" and event["data"]["job_id"] is None
    assert event["data"]["error"]["reason"] == "notSubmitted" and "503" in event["data"]["error"]["message"]
    assert record.finished_at >= record.deadline_at == record.created_at + rig.app.registry.get("store-clusters").deadline_s
    assert rig.sandbox.jobs() == [] and record.attempts > 5


def test_a_slow_carto_answers_the_sender_within_the_budget_and_makes_one_job(rig):
    rig.sandbox.faults.delay("submit", seconds=12)  # real seconds: the webhook waits the inline budget only
    delivery = msg()

    answer = rig.post("store-clusters", BODY, msg_id=delivery)
    record = rig.app.ledger.get(f"store-clusters:{delivery}")
    rig.sandbox.faults.clear()
    rig.poll_all()

    assert answer.status_code == 202 and answer.get_json()["queued"] is True
    assert record.queue_reason == "carto_slow" and record.unknown
    assert len(rig.sandbox.jobs()) == 1 and len(events_by_outcome(rig)["SUCCEEDED"]) == 1


# --- the cap ------------------------------------------------------------------------------------

def test_a_cap_of_two_runs_eight_deliveries_two_at_a_time_in_arrival_order(rig):
    deliveries = [msg() for _ in range(8)]

    answers = [rig.post(CAPPED, BODY, msg_id=d) for d in deliveries]
    rig.poll_all()

    assert [a.get_json()["queued"] for a in answers] == [False, False] + [True] * 6
    assert all(a.status_code == 202 for a in answers)
    assert peak_running(rig.sandbox.jobs()) == 2
    assert [delivery_of(rig, job) for job in rig.sandbox.jobs()] == deliveries
    assert len(events_by_outcome(rig)["SUCCEEDED"]) == 8
    assert rig.app.ledger.line(CAPPED).running == [] and rig.app.ledger.line(CAPPED).waiting == []


def test_replace_keeps_the_running_one_and_the_newest_and_supersedes_the_rest(rig):
    deliveries = [msg() for _ in range(6)]

    answers = [rig.post("replacing", BODY, msg_id=d) for d in deliveries]
    rig.poll_all()

    outcomes = events_by_outcome(rig)
    assert all(a.status_code == 202 for a in answers)
    assert [delivery_of(rig, job) for job in rig.sandbox.jobs()] == [deliveries[0], deliveries[-1]]
    assert len(outcomes["SUCCEEDED"]) == 2 and len(outcomes["SUPERSEDED"]) == 4
    superseded = {e["data"]["delivery_id"]: e["data"]["superseded_by"] for e in outcomes["SUPERSEDED"]}
    assert superseded == {deliveries[n]: deliveries[n + 1] for n in range(1, 5)}
    assert all(e["data"]["job_id"] is None and e["attributes"]["ce-type"] == "com.carto.workflows.job.superseded"
               for e in outcomes["SUPERSEDED"])


def test_refuse_answers_429_with_retry_after_while_busy_and_202_once_free(rig):
    first = rig.post("refusing", BODY)
    busy = rig.post("refusing", BODY, msg_id=(refused := msg()))
    rig.poll_all()
    later = rig.post("refusing", BODY, msg_id=refused)

    assert first.status_code == 202
    assert busy.status_code == 429 and busy.headers["Retry-After"] and busy.get_json()["code"] == "workflow-busy"
    assert busy.headers["Content-Type"] == "application/problem+json"
    assert later.status_code == 202 and later.get_json()["duplicate"] is False


def test_a_refused_delivery_records_nothing(rig):
    rig.post("refusing", BODY)
    delivery = msg()

    rig.post("refusing", BODY, msg_id=delivery)

    assert rig.app.ledger.get(f"refusing:{delivery}") is None and rig.app.ledger.line("refusing").waiting == []


def test_cancelling_a_waiting_delivery_is_one_cancelled_event_and_no_job(rig):
    rig.post("one-at-a-time", BODY)
    waiting = msg()
    rig.post("one-at-a-time", BODY, msg_id=waiting)

    cancelled = rig.app.admission.cancel(f"one-at-a-time:{waiting}")
    again = rig.app.admission.cancel(f"one-at-a-time:{waiting}")
    rig.poll_all()

    outcomes = events_by_outcome(rig)
    assert cancelled.outcome == "CANCELLED" and again.outcome == "CANCELLED"
    assert [e["data"]["delivery_id"] for e in outcomes["CANCELLED"]] == [waiting]
    assert len(rig.sandbox.jobs()) == 1 and len(outcomes["SUCCEEDED"]) == 1


def test_a_replay_of_a_waiting_delivery_answers_queued_then_its_job(rig):
    rig.post("one-at-a-time", BODY)
    waiting = msg()
    rig.post("one-at-a-time", BODY, msg_id=waiting)

    early = rig.post("one-at-a-time", BODY, msg_id=waiting)
    rig.poll_all()
    late = rig.post("one-at-a-time", BODY, msg_id=waiting)

    assert early.status_code == 200 and early.get_json()["queued"] is True and early.get_json()["job_id"] is None
    assert late.status_code == 200 and late.get_json()["job_id"] == rig.sandbox.jobs()[1].external_id


# --- paused ------------------------------------------------------------------------------------

def test_a_paused_workflow_holds_deliveries_and_releases_them_in_arrival_order_once_unpaused(rig):
    deliveries = [msg() for _ in range(3)]
    answers = [rig.post("held", BODY, msg_id=d) for d in deliveries]
    rig.poll_all()
    held_jobs = len(rig.sandbox.jobs())

    workflows = rig.app.registry.workflows
    workflows["held"] = replace(workflows["held"], paused=False)  # the file no longer says paused
    report = rig.client("sweep").post("/").get_json()
    rig.poll_all()

    assert [a.status_code for a in answers] == [202] * 3 and all(a.get_json()["queued"] for a in answers)
    assert held_jobs == 0 and report["handed_off"] == 3
    assert sorted(delivery_of(rig, job) for job in rig.sandbox.jobs()) == sorted(deliveries)
    assert len(events_by_outcome(rig)["SUCCEEDED"]) == 3


# --- the fast path -------------------------------------------------------------------------------

class CountingLedger(SqliteLedger):
    """Counts the ledger's writes by method."""

    WRITES = ("claim", "claim_admitted", "queue", "dequeue", "reschedule", "end_queued", "refill", "release",
              "take_over", "mark_submitted", "mark_tracked", "finish", "note_checks", "mark_published")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.writes: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name in CountingLedger.WRITES:
            object.__getattribute__(self, "writes").append(name)
        return object.__getattribute__(self, name)


def test_an_uncapped_workflow_with_carto_up_adds_no_ledger_write_and_no_task(admission_schemas, tmp_path):
    ledger = CountingLedger(tmp_path / "state" / "ledger.sqlite3")
    with running_rig(admission_schemas, tmp_path / "state", ledger=ledger) as rig:
        answer = rig.post("store-clusters", BODY)
        webhook_writes = list(ledger.writes)

        assert answer.status_code == 202 and answer.get_json()["queued"] is False
        assert webhook_writes == ["claim", "mark_submitted", "mark_tracked"]
        assert rig.tasks.requests == [] and rig.app.ledger.line("store-clusters") is None
        assert rig.poll_all() == [ACK]
