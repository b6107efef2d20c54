"""Following a job to its end and publishing its one completion event (docs/architecture.md, "One job").

The schedule is geometric: the k-th status check is due `first_s * factor**k` seconds after
submission (1 s, 1.25 s, 1.56 s, … with the defaults), so a job is seen finished within
`factor - 1` (25 %) of its run time, in about log_factor(duration) checks. One invocation
sleeps between checks while the next one is due within `inline_s` of its start; past that it
sleeps out the rest of that budget and asks Pub/Sub to redeliver the tracking message later
(`RetryLater`, which makes the function fail, so the subscription's retry policy backs off).
A redelivery that arrives before the next check is due sleeps until then (if within `inline_s`)
or asks again, making no CARTO call.

Final transitions are first-writer-wins in the ledger, and the event is published before the
message is acked, with a deterministic id, so redeliveries never yield a second, different outcome.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.carto import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT, CartoClient, JobStatus
from gateway.errors import GatewayError, NotFound, Unavailable
from gateway.events import Publisher, Tracking, completion_event
from gateway.ledger import Delivery, Ledger

log = logging.getLogger("gateway.poller")


class RetryLater(Exception):
    """The job is still running and the next check is far: have Pub/Sub redeliver the message."""


@dataclass(frozen=True)
class Schedule:
    """When status checks are due, relative to submission."""

    first_s: float = 1.0
    factor: float = 1.25

    def due(self, k: int) -> float:
        return self.first_s * self.factor ** k

    def next_after(self, elapsed: float) -> float:
        """The first check time strictly after `elapsed` seconds since submission."""
        if elapsed < self.first_s:
            return self.first_s
        k = math.floor(math.log(elapsed / self.first_s, self.factor)) + 1
        while self.due(k) <= elapsed:
            k += 1
        return self.due(k)


@dataclass(frozen=True)
class Clock:
    """Time and sleep, passed in so tests can run the schedule instantly."""

    now: Callable[[], float]
    sleep: Callable[[float], None]


class Poller:
    """Checks one job on its schedule and publishes its completion event once it is over."""

    def __init__(self, *, carto: CartoClient, ledger: Ledger, publisher: Publisher, events_topic: str,
                 source: str, clock: Clock, schedule: Schedule, inline_s: float):
        self.carto, self.ledger, self.publisher = carto, ledger, publisher
        self.events_topic, self.source, self.clock = events_topic, source, clock
        self.schedule, self.inline_s = schedule, inline_s

    def handle(self, tracking: Tracking) -> Delivery | None:
        """Follow the job until it ends (publish, return the record) or raise RetryLater."""
        record = self.ledger.get(tracking.key)
        if record is None:
            log.error("tracking message for an unknown delivery; dropped", extra={"job_id": tracking.job_id})
            return None
        if record.outcome is not None:
            return self.publish(record)
        return self._follow(tracking, record)

    def _follow(self, tracking: Tracking, record: Delivery) -> Delivery:
        started = self.clock.now()
        checks, last_check = record.checks, record.last_check_at
        while True:
            now = self.clock.now()
            if now >= tracking.deadline_at:
                return self._finish(record, self._check(tracking), checks + 1, now, timed_out=True)
            due_at = self._due(tracking, last_check)
            if due_at > now:
                if due_at - started > self.inline_s:
                    self.ledger.note_checks(record.key, checks, last_check or tracking.submitted_at)
                    # Spend the rest of the budget first: a redelivery that comes back at once (the
                    # emulator's, or a short backoff) then cannot spin.
                    self.clock.sleep(max(0.0, started + self.inline_s - now))
                    raise RetryLater(f"job {tracking.job_id} still running; next check in {due_at - now:.0f} s")
                self.clock.sleep(due_at - now)
            status = self._check(tracking)
            checks, last_check = checks + 1, self.clock.now()
            if status is not None and status.outcome is not None:
                return self._finish(record, status, checks, last_check)

    def _due(self, tracking: Tracking, last_check: float | None) -> float:
        elapsed = -1.0 if last_check is None else last_check - tracking.submitted_at
        return min(tracking.submitted_at + self.schedule.next_after(elapsed), tracking.deadline_at)

    def _check(self, tracking: Tracking) -> JobStatus | None:
        try:
            return self.carto.status(tracking.api_base_url, tracking.connection, tracking.job_id,
                                     workflow=tracking.workflow)
        except NotFound:
            log.warning("CARTO does not know the job (yet?)", extra={"job_id": tracking.job_id})
        except Unavailable as exc:
            log.warning("status check failed: %s", exc.detail, extra={"job_id": tracking.job_id})
        except GatewayError as exc:
            log.warning("status check refused: %s", exc.detail, extra={"job_id": tracking.job_id})
        return None

    def _finish(self, record: Delivery, status: JobStatus | None, checks: int, now: float,
                *, timed_out: bool = False) -> Delivery:
        if status is not None and status.outcome is not None:
            outcome, error = status.outcome, status.error
        elif timed_out:
            outcome, error = TIMED_OUT, None
        else:
            raise AssertionError("a job finishes with an outcome or at its deadline")
        state = status.state if status is not None else record.carto_state
        final = self.ledger.finish(record.key, outcome, state, error, checks, now)
        return self.publish(final)

    def expire(self, record: Delivery, now: float) -> Delivery:
        """Finish a job whose tracking went silent past its deadline: its real outcome, or TIMED_OUT."""
        assert record.job_id is not None
        tracking = Tracking(record.key, record.job_id, record.workflow, record.connection, record.api_base_url,
                            record.submitted_at or record.created_at, record.deadline_at or now,
                            record.delivery_id, record.trace)
        return self._finish(record, self._check(tracking), record.checks + 1, now, timed_out=True)

    def cancelled(self, record: Delivery, now: float, answer: JobStatus | None = None) -> Delivery:
        """Record a cancellation made through DELETE /jobs/{id} and publish its event; a job CARTO's
        answer shows had already succeeded or failed keeps that outcome (a cancel cannot undo it)."""
        if answer is not None and answer.outcome in (SUCCEEDED, FAILED):
            final = self.ledger.finish(record.key, answer.outcome, answer.state, answer.error, record.checks, now)
        else:
            final = self.ledger.finish(record.key, CANCELLED, "CANCELLED", None, record.checks, now)
        return self.publish(final)

    def publish(self, record: Delivery) -> Delivery:
        """Publish the completion event of a finished record (again, if need be); PublishUnavailable propagates."""
        if not record.published:
            self.publisher.publish(self.events_topic, completion_event(record, source=self.source))
            self.ledger.mark_published(record.key, self.clock.now())
            record = replace(record, published=True)
        return record


