"""The `submit` entry point (README, "Completion events"): a request message on the requests topic runs a workflow exactly
like a webhook, minus the signature. Pub/Sub semantics: returning acks, raising nacks (redelivery), so a
message that can never succeed is acked and logged, and one that may succeed later raises.
Through the real functions-framework app with Pub/Sub push bodies, the local CARTO job API and SQLite."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.events import Message
from tests.rigs import (
    ACK,
    BODY,
    Rig,
    assert_one_job_with_one_outcome,
)


class RecordingHandler(logging.Handler):
    """Keeps the records of one logger (robust to the gateway's own JSON handler not propagating)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


@pytest.fixture
def logged() -> Iterator[RecordingHandler]:
    handler = RecordingHandler()
    logger = logging.getLogger("gateway.entrypoints")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def request(payload: Any = BODY, workflow: str = "store-clusters", **attributes: str) -> Message:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Message(data, {"workflow": workflow, **attributes})


def submit(rig: Rig, message: Message, message_id: str = "m-1") -> int:
    return rig.deliver(message, message_id, target="submit")


def test_a_request_message_makes_one_job_and_one_tracking_message(rig):
    status = submit(rig, request())
    statuses = rig.poll_all()

    [job] = rig.sandbox.jobs()
    assert status == ACK and statuses == [ACK]
    assert job.query_parameters == {"number_of_clusters": 2, "buffer_radius": 500.0, "store_type": "Supermarket"}
    assert [json.loads(m.data)["job_id"] for m in rig.tracking()] == [job.external_id]
    assert assert_one_job_with_one_outcome(rig.sandbox, rig.publisher) == job.external_id
    assert rig.publisher.events()[0]["data"]["delivery_id"] == "m-1"


def test_a_redelivered_request_message_still_makes_one_job(rig):
    statuses = [submit(rig, request(), "m-2") for _ in range(3)]

    assert statuses == [ACK] * 3
    assert len(rig.sandbox.jobs()) == 1 and len(rig.tracking()) == 1
    assert rig.app.ledger.get("store-clusters:m-2") is not None


def test_the_idempotency_key_attribute_is_the_key_across_message_ids(rig):
    submit(rig, request(idempotency_key="order-77"), "m-3")
    submit(rig, request(idempotency_key="order-77"), "m-4")

    assert len(rig.sandbox.jobs()) == 1
    assert rig.app.ledger.get("store-clusters:order-77").job_id == rig.sandbox.jobs()[0].external_id


def test_an_unknown_workflow_is_acked_and_logged(rig, logged):
    assert submit(rig, request(workflow="no-such-flow")) == ACK

    assert rig.sandbox.jobs() == [] and rig.publisher.messages == []
    assert any("no-such-flow" in line for line in logged.errors())


def test_an_invalid_payload_is_acked_and_logged(rig, logged):
    assert submit(rig, request({"clusters": 0, "radius_m": -1})) == ACK

    assert rig.sandbox.jobs() == [] and rig.publisher.messages == []
    assert any("validation-failed" in line for line in logged.errors())


def test_data_that_is_not_json_is_acked_and_logged(rig, logged):
    assert submit(rig, request(b"{not json")) == ACK

    assert rig.sandbox.jobs() == []
    assert any("malformed-json" in line for line in logged.errors())


def test_carto_down_acks_the_request_and_its_submit_task_makes_the_job(rig):
    rig.sandbox.faults.error("submit", status=503, count=1)

    acked = submit(rig, request(), "m-5")
    redelivered = submit(rig, request(), "m-5")
    rig.poll_all()

    assert acked == ACK and redelivered == ACK
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_lost_carto_answer_is_acked_and_the_submit_task_adopts_the_job(rig):
    rig.sandbox.faults.drop("submit", after=True)

    lost = submit(rig, request(), "m-6")
    redelivered = submit(rig, request(), "m-6")
    rig.poll_all()

    assert [lost, redelivered] == [ACK, ACK]
    assert_one_job_with_one_outcome(rig.sandbox, rig.publisher)


def test_a_republished_request_is_the_same_delivery_through_its_idempotency_key(rig):
    # A dead-letter replay (deploy/replay-dead-letters.sh) publishes a copy with a new message id.
    submit(rig, request(idempotency_key="order-88"), "m-7")
    submit(rig, request(idempotency_key="order-88"), "m-7-replayed")

    assert len(rig.sandbox.jobs()) == 1


def test_without_an_idempotency_key_a_republished_request_is_a_new_delivery(rig):
    submit(rig, request(), "m-8")
    submit(rig, request(), "m-8-replayed")

    assert len(rig.sandbox.jobs()) == 2  # documented in docs/architecture.md, "Delivery guarantees": set idempotency_key
