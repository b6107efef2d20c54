"""Queued deliveries: the submit hand-off `poll` runs, the end of one that never got a job, and
cancelling one (docs/architecture.md, "Admission").

A submit task carries only the delivery's key and the attempt it was scheduled for; everything else
is read from the ledger, which is also what makes a task that arrives twice, late or after the
delivery moved on harmless: only the task of the record's current attempt may dequeue it, and
dequeuing is a claim under a fresh token. No invocation waits for a slot or for CARTO: a task that
cannot submit now queues the delivery again and schedules the next task, and answers 2xx.
"""

from __future__ import annotations

import logging
import secrets

from gateway.carto import CANCELLED, TIMED_OUT
from gateway.clock import Clock
from gateway.errors import DeliveryInFlight, NotFound
from gateway.events import Handoff
from gateway.intake import Intake
from gateway.ledger import CLAIMED, QUEUED, SUBMITTED, Delivery, Ledger
from gateway.poller import Poller
from gateway.workflows import Registry

log = logging.getLogger("gateway.admission")


class Admission:
    """Moves queued deliveries on: submits them when their task comes, ends them at their deadline."""

    def __init__(self, *, ledger: Ledger, intake: Intake, poller: Poller, registry: Registry,
                 clock: Clock):
        self.ledger, self.intake, self.poller, self.registry, self.clock = ledger, intake, poller, registry, clock

    def handle(self, handoff: Handoff) -> Delivery | None:
        """One submit task. Returns the record as it ends up (None when the key is unknown)."""
        record = self.ledger.get(handoff.key)
        if record is None:
            log.error("submit task for an unknown delivery; dropped", extra={"key": handoff.key})
            return None
        if record.state == SUBMITTED:  # submitted, its tracking message not yet out
            self.intake.track(record)
            return record
        if record.state != QUEUED or record.hand_off_at is None:
            return record  # done, being submitted, or waiting for a slot: this task is stale
        if record.attempts != handoff.attempt:  # a stale task: make sure the current one exists
            self.poller.hand_off([record.key])
            return record
        now = self.clock.now()
        if record.deadline_at is not None and now >= record.deadline_at:
            return self.not_submitted(record, now)
        workflow = self.registry.get(record.workflow)
        if workflow is None:
            return self._end(record, "FAILED", {"reason": "notAccepted", "location": None,
                                                "message": f"workflow {record.workflow} is no longer defined"}, now)
        mine = self.ledger.dequeue(record.key, record.attempts, secrets.token_hex(16), now)
        if mine is None:
            return self.ledger.get(record.key)
        try:
            return self.intake.submit_queued(mine, workflow)
        except DeliveryInFlight:  # the sweeper took it over meanwhile: it carries on
            return self.ledger.get(record.key)

    def not_submitted(self, record: Delivery, now: float) -> Delivery | None:
        """A delivery still without a job at its deadline: one TIMED_OUT event (reason notSubmitted)."""
        answer = (record.last_answer or {}).get("message") or "no slot of the workflow came free before the deadline"
        return self._end(record, TIMED_OUT, {"reason": "notSubmitted", "location": None,
                                             "message": f"not submitted before the deadline; CARTO's last answer: {answer}"
                                             if record.last_answer else answer}, now)

    def _end(self, record: Delivery, outcome: str, error: dict[str, object] | None, now: float) -> Delivery | None:
        ended = self.ledger.end_queued(record.key, outcome, error, now)
        if ended is None:
            return self.ledger.get(record.key)
        return self.poller.publish(ended)

    def cancel(self, key: str) -> Delivery:
        """Cancel a delivery: one CANCELLED event. Queued (no job yet): ended without a job, its slot or place
        handed on; with a job: the job is cancelled at CARTO (as DELETE /jobs/{id}); already over: unchanged.
        DeliveryInFlight while its job is being submitted right now (retry in a moment)."""
        record = self.ledger.get(key)
        if record is None:
            raise NotFound(f"no delivery {key}")
        if record.outcome is not None:
            return record
        if record.job_id is not None:
            return self.poller.cancel(record)
        if record.state == CLAIMED:
            raise DeliveryInFlight("the delivery is being submitted right now", retry_after=2)
        ended = self.ledger.end_queued(key, CANCELLED, None, self.clock.now())
        if ended is None:  # dequeued or ended meanwhile
            return self.cancel(key) if self._moved_on(key) else record
        log.info("queued delivery cancelled", extra={"key": key, "workflow": record.workflow})
        return self.poller.publish(ended)

    def _moved_on(self, key: str) -> bool:
        current = self.ledger.get(key)
        return current is not None and (current.outcome is not None or current.job_id is not None)
