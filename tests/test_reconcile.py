"""Crash reconciliation finds a job by the gateway's metadata first (in the job list, then on each job
the list shows without it), by the marker comment in its query second."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from gateway.carto import delivery_marker, delivery_metadata
from tests.rigs import ACK, BODY, GRACE_S, assert_one_job_with_one_outcome

QUERY = "CALL `p.d.proc`(@a)"


def delivery(rig, key):
    return SimpleNamespace(key=key, workflow="store-clusters", connection="carto_dw", api_base_url=rig.sandbox.url)


def planted(rig, *, metadata=None, query=QUERY):
    return rig.app.carto.submit(rig.sandbox.url, "carto_dw", query, {"a": 1}, metadata=metadata)


def test_the_job_is_found_by_its_metadata_in_the_job_list(rig):
    key = f"store-clusters:{uuid.uuid4().hex}"
    planted(rig, query=f"{QUERY}\n{delivery_marker(key)}")  # a decoy with only the marker
    by_metadata = planted(rig, metadata=delivery_metadata(key, "store-clusters", "d"))

    assert rig.app.intake.find_submitted_job(delivery(rig, key)) == by_metadata


def test_a_list_that_drops_metadata_is_completed_by_each_job(rig):
    key = f"store-clusters:{uuid.uuid4().hex}"
    planted(rig, metadata=delivery_metadata("store-clusters:other", "store-clusters", "d0"))
    wanted = planted(rig, metadata=delivery_metadata(key, "store-clusters", "d"))
    rig.sandbox.faults.drop_metadata("list")

    assert rig.app.intake.find_submitted_job(delivery(rig, key)) == wanted
    assert rig.sandbox.stats()["requests"]["status"] >= 1  # it had to ask for the jobs one by one


def test_without_metadata_anywhere_the_marker_finds_the_job(rig):
    key = f"store-clusters:{uuid.uuid4().hex}"
    wanted = planted(rig, query=f"{QUERY}\n{delivery_marker(key)}")
    rig.sandbox.faults.drop_metadata("list")

    assert rig.app.intake.find_submitted_job(delivery(rig, key)) == wanted


def test_no_job_of_this_delivery_is_none(rig):
    planted(rig, metadata=delivery_metadata("store-clusters:other", "store-clusters", "d0"))
    assert rig.app.intake.find_submitted_job(delivery(rig, f"store-clusters:{uuid.uuid4().hex}")) is None


def test_a_sweep_adopts_a_lost_job_even_when_the_list_drops_metadata(rig):
    rig.sandbox.faults.drop("submit", after=True)
    rig.app.ledger.crash("queue")  # the instance dies before it could queue the delivery
    msg_id = f"msg_{uuid.uuid4().hex}"
    rig.post("store-clusters", BODY, msg_id=msg_id)
    rig.clock.advance(GRACE_S + 1)
    rig.sandbox.faults.drop_metadata("list")

    rig.app.sweeper.claim_stale_s = 0.0
    report = rig.app.sweeper.sweep()
    statuses = rig.poll_all()

    assert report.adopted == 1 and statuses == [ACK]
    assert rig.app.ledger.get(f"store-clusters:{msg_id}").job_id == assert_one_job_with_one_outcome(rig.sandbox,
                                                                                                   rig.publisher)
