"""Idempotency of deliveries (draft-ietf-httpapi-idempotency-key-header): a replay answers
the original job, a reused key with another body is a 422, a twin still in flight is a 409, and the key
comes from the configured header, the body pointer, a plain Idempotency-Key header or the sender's
delivery id, in that order. Through the real webhook function, the local CARTO job API and SQLite."""

from __future__ import annotations

import threading

from tests.rigs import BODY, msg

ORDER = {"total": 12.5}


# --- replay, conflict, in flight ----------------------------------------------------------------

def test_the_same_key_and_body_answers_the_original_job_as_a_duplicate(rig):
    delivery = msg()
    first = rig.post("store-clusters", BODY, msg_id=delivery)

    replay = rig.post("store-clusters", BODY, msg_id=delivery)

    assert first.status_code == 202 and replay.status_code == 200
    assert replay.get_json() == {**first.get_json(), "duplicate": True}
    assert replay.headers["Location"] == first.headers["Location"]
    assert len(rig.sandbox.jobs()) == 1 and len(rig.tracking()) == 1


def test_a_replay_after_the_job_finished_still_answers_it_and_publishes_nothing(rig):
    delivery = msg()
    job_id = rig.post("store-clusters", BODY, msg_id=delivery).get_json()["job_id"]
    rig.poll_all()
    published = len(rig.publisher.messages)

    replay = rig.post("store-clusters", BODY, msg_id=delivery)

    assert replay.status_code == 200 and replay.get_json()["job_id"] == job_id
    assert len(rig.publisher.messages) == published and len(rig.sandbox.jobs()) == 1


def test_the_same_key_with_another_body_is_a_422_and_submits_nothing(rig):
    delivery = msg()
    rig.post("store-clusters", BODY, msg_id=delivery)

    reused = rig.post("store-clusters", {**BODY, "clusters": 3}, msg_id=delivery)

    assert reused.status_code == 422 and reused.headers["Content-Type"] == "application/problem+json"
    problem = reused.get_json()
    assert problem["code"] == "idempotency-key-reused" and problem["errors"][0]["path"] == "idempotency-key"
    assert len(rig.sandbox.jobs()) == 1


def test_the_same_key_while_the_first_is_in_flight_is_a_409_with_retry_after(rig):
    delivery = msg()
    inside_carto = rig.sandbox.faults.hold("submit")  # the first delivery waits inside CARTO until released
    first: dict[str, object] = {}
    sender = threading.Thread(target=lambda: first.update(
        answer=rig.post("store-clusters", BODY, msg_id=delivery, client=rig.fresh_client())))
    sender.start()
    assert inside_carto.arrived.wait(30), "the first delivery never reached CARTO"

    twin = rig.post("store-clusters", BODY, msg_id=delivery)
    inside_carto.release()
    sender.join()

    assert twin.status_code == 409 and int(twin.headers["Retry-After"]) > 0
    assert twin.get_json()["code"] == "delivery-in-flight"
    assert first["answer"].status_code == 202 and len(rig.sandbox.jobs()) == 1


def test_another_key_is_another_job(rig):
    one = rig.post("store-clusters", BODY, msg_id=msg())
    two = rig.post("store-clusters", BODY, msg_id=msg())

    assert one.status_code == two.status_code == 202
    assert one.get_json()["job_id"] != two.get_json()["job_id"] and len(rig.sandbox.jobs()) == 2


def test_the_same_key_on_two_workflows_is_two_deliveries(rig):
    delivery = msg()

    clusters = rig.post("store-clusters", BODY, msg_id=delivery)
    order = rig.post("idem-pointer", ORDER, msg_id=delivery)

    assert clusters.status_code == order.status_code == 202 and len(rig.sandbox.jobs()) == 2


# --- where the key comes from -------------------------------------------------------------------

def test_the_key_comes_from_the_configured_header(rig):
    first = rig.post("idem-pointer", ORDER, msg_id=msg(), headers={"X-Order-Key": "ord-key-1"})
    again = rig.post("idem-pointer", ORDER, msg_id=msg(), headers={"X-Order-Key": "ord-key-1"})

    assert first.status_code == 202 and again.status_code == 200
    assert rig.app.ledger.get("idem-pointer:ord-key-1").job_id == first.get_json()["job_id"]
    assert len(rig.sandbox.jobs()) == 1


def test_the_configured_header_wins_over_the_body_pointer(rig):
    rig.post("idem-pointer", {**ORDER, "order": {"id": "o-1"}}, headers={"X-Order-Key": "ord-key-2"})

    assert rig.app.ledger.get("idem-pointer:ord-key-2") is not None
    assert rig.app.ledger.get("idem-pointer:o-1") is None


def test_the_key_comes_from_the_body_pointer_when_the_header_is_absent(rig):
    order = {**ORDER, "order": {"id": "o-2"}}

    first = rig.post("idem-pointer", order, msg_id=msg())
    again = rig.post("idem-pointer", order, msg_id=msg())
    other = rig.post("idem-pointer", {**ORDER, "order": {"id": "o-3"}}, msg_id=msg())

    assert [first.status_code, again.status_code, other.status_code] == [202, 200, 202]
    assert rig.app.ledger.get("idem-pointer:o-2").job_id == first.get_json()["job_id"]
    assert len(rig.sandbox.jobs()) == 2


def test_an_unsigned_idempotency_key_cannot_turn_a_captured_delivery_into_a_second_job(rig):
    delivery = msg()
    first = rig.post("idem-pointer", ORDER, msg_id=delivery, headers={"Idempotency-Key": "caller-key-1"})
    again = rig.post("idem-pointer", ORDER, msg_id=delivery, headers={"Idempotency-Key": "caller-key-2"})

    assert first.status_code == 202 and again.status_code == 200
    assert rig.app.ledger.get(f"idem-pointer:{delivery}") is not None and len(rig.sandbox.jobs()) == 1
    assert rig.app.ledger.get("idem-pointer:caller-key-1") is None


def test_without_any_other_key_the_senders_delivery_id_is_the_key(rig):
    delivery = msg()

    first = rig.post("idem-pointer", ORDER, msg_id=delivery)
    again = rig.post("idem-pointer", ORDER, msg_id=delivery)
    other = rig.post("idem-pointer", ORDER, msg_id=msg())

    assert [first.status_code, again.status_code, other.status_code] == [202, 200, 202]
    assert rig.app.ledger.get(f"idem-pointer:{delivery}").job_id == first.get_json()["job_id"]
    assert first.get_json()["delivery_id"] == delivery and len(rig.sandbox.jobs()) == 2
