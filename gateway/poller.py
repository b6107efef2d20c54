"""Following a job to its end and publishing its one completion event (docs/architecture.md, "One job").

The schedule is geometric: the k-th status check is due `first_s * factor**k` seconds after
submission (1 s, 1.25 s, 1.56 s, … with the defaults), so a job is seen finished within
`factor - 1` (25 %) of its run time, in about log_factor(duration) checks.

Each invocation makes one status check and, while the job runs, hands the next one to a
`Scheduler` (a Cloud Task due at the next point of the schedule, gateway/tasks.py), then answers:
"still running" is a success, never a failed push. Only the first trigger (the tracking message)
may check a few times in a row while the next check is due within `inline_s` of its start: the
first seconds of a short job, where checks are a fraction of a second apart. Only one first trigger
of an instance waits inline at a time: under a burst of new jobs the others check what is due and
hand the rest to tasks at once, since a subscription pushes only a few messages at a time (Pub/Sub
ramps its push rate up with fast acknowledgements), so pushes held for seconds would keep the burst's
later jobs — a short one among them — waiting behind them. A task's body carries
the check count and the last check time, so a retried task resumes where it was; each invocation that
checked copies them to the ledger record and moves its `updated_at` to the next check's due time, so the
record shows the checks made and the sweeper finds a job whose next check is overdue (its task lost).

Final transitions are first-writer-wins in the ledger, and the event is published before the
invocation answers, with a deterministic id, so retries never yield a second, different outcome.

A message only names the delivery (docs/architecture.md, "The ledger is the source of truth"): the
job's id, CARTO endpoint, connection and deadline are the ledger record's. A message naming another
job id, or a check whose progress the record makes impossible, is refused: logged, acknowledged, no
CARTO call.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gateway import logs
from gateway.carto import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT, CartoClient, JobStatus
from gateway.clock import Clock
from gateway.errors import GatewayError, NotFound, TasksUnavailable, Unavailable
from gateway.events import Check, Handoff, Publisher, Tracking, completion_event
from gateway.ledger import QUEUED, Delivery, Ledger

log = logging.getLogger("gateway.poller")

CLOCK_SKEW_S = 5.0  # how far a check's last_check_at may lie outside [submission, now]: clocks of two instances
INLINE_FOLLOWERS = 1  # first triggers of one instance that may wait inline for their job at the same time


class Scheduler(Protocol):
    """Schedules one status check as a task due at `check.due_at`, named after (delivery key, check index),
    so scheduling the same check twice is one task (ALREADY_EXISTS counts as done). Raises
    TasksUnavailable (an Unavailable) when the queue cannot take it."""

    def schedule(self, check: Check) -> None: ...

    def hand_off(self, handoff: Handoff) -> None:
        """Schedule the submit task of a queued delivery, named after (delivery key, attempt)."""


@dataclass(frozen=True)
class Schedule:
    """When status checks are due, relative to submission."""

    first_s: float = 1.0
    factor: float = 1.25

    def due(self, k: int) -> float:
        return self.first_s * self.factor ** k

    def index_after(self, elapsed: float) -> int:
        """The index of the first check time strictly after `elapsed` seconds since submission."""
        if elapsed < self.first_s:
            return 0
        k = math.floor(math.log(elapsed / self.first_s, self.factor)) + 1
        while self.due(k) <= elapsed:
            k += 1
        return k

    def next_after(self, elapsed: float) -> float:
        """The first check time strictly after `elapsed` seconds since submission."""
        return self.due(self.index_after(elapsed))


class Results(Protocol):
    """Reads the output rows of a job that ended SUCCEEDED, for its event (`gateway.results.ResultReader`):
    the event's `result`, or None when the workflow asks for none. Never raises for a failed read."""

    def read(self, workflow: str, base_url: str, connection: str,
             output_table: str | None) -> dict[str, Any] | None: ...


class Poller:
    """Checks one job once per invocation (a few times, inline, at the start) and publishes its
    completion event once it is over; schedules the next check while it runs."""

    def __init__(self, *, carto: CartoClient, ledger: Ledger, publisher: Publisher, events_topic: str,
                 source: str, clock: Clock, schedule: Schedule, inline_s: float, scheduler: Scheduler,
                 sweep_grace_s: float, results: Results | None = None):
        self.carto, self.ledger, self.publisher = carto, ledger, publisher
        self.events_topic, self.source, self.clock = events_topic, source, clock
        self.schedule, self.inline_s, self.scheduler = schedule, inline_s, scheduler
        self.sweep_grace_s = sweep_grace_s  # GATEWAY_SWEEP_GRACE_S: how long past `updated_at` it leaves a tracked job alone
        self._inline = threading.BoundedSemaphore(INLINE_FOLLOWERS)
        self.results = results

    def handle(self, message: Tracking | Check) -> Delivery | None:
        """One invocation: the first trigger (a tracking message) or a scheduled check. Returns the finished
        record once the job is over (its event published), None while it runs (the next check scheduled)
        or when the message is refused."""
        record = self.admit(message)
        return None if record is None else self.follow(record, message)

    def admit(self, message: Tracking | Check) -> Delivery | None:
        """The ledger record the message names, or None (logged) when there is none or the message does
        not fit it: another job id, or a check's progress out of the record's bounds."""
        record = self.ledger.get(message.key)
        if record is None:
            log.error("poll message for an unknown delivery; dropped",
                      extra=logs.event("tracking.dropped", job_id=message.job_id))
            return None
        if record.job_id is None or record.job_id != message.job_id:
            log.error("poll message names job %s, not the delivery's job; refused", message.job_id,
                      extra=logs.event("tracking.refused", reason="job_id", job_id=record.job_id,
                                       workflow=record.workflow))
            return None
        if isinstance(message, Check) and record.outcome is None:
            problem = self._implausible(record, message)
            if problem:
                log.error("check task refused: %s", problem, extra=logs.event(
                    "tracking.refused", reason="progress", job_id=record.job_id, workflow=record.workflow))
                return None
        return record

    def _implausible(self, record: Delivery, check: Check) -> str | None:
        """Why the record makes the check's progress impossible, or None when it fits."""
        now = self.clock.now()
        job = _tracking_of(record, now)
        last_index = self.schedule.index_after(job.deadline_at - job.submitted_at + self.sweep_grace_s)
        if check.index > last_index:
            return f"check index {check.index} past the schedule's last ({last_index})"
        # At most one check per point of the schedule, plus one per task that came early.
        if check.checks > 2 * (last_index + 1):
            return f"{check.checks} checks is more than the schedule allows"
        if check.last_check_at is not None and not (
                job.submitted_at - CLOCK_SKEW_S <= check.last_check_at <= now + CLOCK_SKEW_S):
            return "last_check_at outside the job's submission and now"
        return None

    def follow(self, record: Delivery, message: Tracking | Check) -> Delivery | None:
        """Follow the admitted record's job: from the record's progress (tracking message) or the check's."""
        if record.outcome is not None:
            return self.publish(record)
        job = _tracking_of(record, self.clock.now())
        if isinstance(message, Check):
            return self._follow(job, record, message.checks, message.last_check_at, inline=False)
        return self._first(job, record)

    def _first(self, tracking: Tracking, record: Delivery) -> Delivery | None:
        """The first trigger: it waits inline up to `inline_s` unless another first trigger of this instance
        already does; then it makes only the checks already due and answers."""
        if not self._inline.acquire(blocking=False):
            return self._follow(tracking, record, record.checks, record.last_check_at, inline=True, budget_s=0.0)
        try:
            return self._follow(tracking, record, record.checks, record.last_check_at, inline=True,
                                budget_s=self.inline_s)
        finally:
            self._inline.release()

    def _follow(self, tracking: Tracking, record: Delivery, checks: int, last_check: float | None,
                *, inline: bool, budget_s: float = 0.0) -> Delivery | None:
        started = self.clock.now()
        task_check = not inline  # a task is this check: it is made even if the task came early
        while True:
            now = self.clock.now()
            if now >= tracking.deadline_at:
                return self._finish(record, self._check(tracking, lenient=True), checks + 1, now, timed_out=True)
            index, due_at = self._next(tracking, last_check)
            if due_at > now:
                if task_check:
                    self.clock.sleep(min(due_at - now, self.inline_s))
                elif not inline or due_at - started > budget_s:
                    self._schedule(record, Check(record.key, tracking.job_id, checks, last_check, due_at, index))
                    return None
                else:
                    self.clock.sleep(due_at - now)
            task_check = False
            status = self._check(tracking)
            checks, last_check = checks + 1, self.clock.now()
            if status is not None and status.outcome is not None:
                return self._finish(record, status, checks, last_check)

    def _next(self, tracking: Tracking, last_check: float | None) -> tuple[int, float]:
        """The next check after `last_check`: its index on the schedule and its due time (never past the deadline)."""
        if last_check is None:
            return 0, min(tracking.submitted_at + self.schedule.due(0), tracking.deadline_at)
        index = self.schedule.index_after(last_check - tracking.submitted_at)
        while tracking.submitted_at + self.schedule.due(index) <= last_check:  # rounding of large timestamps
            index += 1
        return index, min(tracking.submitted_at + self.schedule.due(index), tracking.deadline_at)

    def _schedule(self, record: Delivery, check: Check) -> None:
        self.scheduler.schedule(check)
        # One write per invocation that made a check (the inline ones together), so the record's count is
        # the count made (the console, `status`, a cancel's event); and one when the next check falls past
        # what the sweeper tolerates (updated_at + its grace), so it leaves the job alone until then.
        if check.checks != record.checks or check.due_at > record.updated_at + self.sweep_grace_s:
            self.ledger.note_checks(record.key, check.checks, check.last_check_at or _submitted_at(record),
                                    next_check_at=check.due_at)

    def resume(self, record: Delivery, now: float) -> None:
        """Schedule the next check of a tracked job whose chain of tasks broke (the sweeper's re-drive)."""
        tracking = _tracking_of(record, now)
        index, due_at = self._next(tracking, now)
        self.scheduler.schedule(Check(record.key, tracking.job_id, record.checks, record.last_check_at, due_at,
                                     index))
        self.ledger.note_checks(record.key, record.checks, record.last_check_at or tracking.submitted_at,
                                next_check_at=due_at)

    def _check(self, tracking: Tracking, *, lenient: bool = False) -> JobStatus | None:
        """CARTO's answer, or None when it has none for this job; CartoUnavailable propagates (the
        invocation fails, so the queue or the subscription retries it) unless `lenient` (the deadline's check)."""
        try:
            return self.carto.status(tracking.api_base_url, tracking.connection, tracking.job_id,
                                     workflow=tracking.workflow)
        except NotFound:
            log.warning("CARTO does not know the job (yet?)",
                        extra=logs.event("carto.failed", kind="job_unknown", job_id=tracking.job_id))
        except Unavailable as exc:
            if not lenient:
                raise
            log.warning("status check failed: %s", exc.detail,
                        extra=logs.event("carto.failed", kind="status", job_id=tracking.job_id))
        except GatewayError as exc:
            log.warning("status check refused: %s", exc.detail,
                        extra=logs.event("carto.failed", kind="status_refused", job_id=tracking.job_id))
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
        result = self._result(record, status) if outcome == SUCCEEDED else None
        final = self.ledger.finish(record.key, outcome, state, error, checks, now, result=result)
        return self.publish(final)

    def _result(self, record: Delivery, status: JobStatus | None) -> dict[str, Any] | None:
        """The event's `result`, read before the outcome is recorded, so it is recorded with it: an event
        published again after a crash is the same event."""
        if self.results is None:
            return None
        return self.results.read(record.workflow, record.api_base_url, record.connection,
                                 status.output_table if status is not None else None)

    def expire(self, record: Delivery, now: float) -> Delivery:
        """Finish a job whose tracking went silent past its deadline: its real outcome, or TIMED_OUT."""
        return self._finish(record, self._check(_tracking_of(record, now), lenient=True), record.checks + 1, now,
                            timed_out=True)

    def cancel(self, record: Delivery) -> Delivery:
        """Cancel a running job at CARTO and record it (DELETE /jobs/{id} and the console's cancel)."""
        assert record.job_id is not None
        answer = self.carto.cancel(record.api_base_url, record.connection, record.job_id, workflow=record.workflow)
        return self.cancelled(record, self.clock.now(), answer)

    def cancelled(self, record: Delivery, now: float, answer: JobStatus | None = None) -> Delivery:
        """Record a cancellation made through DELETE /jobs/{id} and publish its event; a job CARTO's
        answer shows had already succeeded or failed keeps that outcome (a cancel cannot undo it). The
        checks are the ledger's as of now: a check may have landed while CARTO was cancelling."""
        record = self.ledger.get(record.key) or record
        if answer is not None and answer.outcome in (SUCCEEDED, FAILED):
            result = self._result(record, answer) if answer.outcome == SUCCEEDED else None
            final = self.ledger.finish(record.key, answer.outcome, answer.state, answer.error, record.checks, now,
                                       result=result)
        else:
            final = self.ledger.finish(record.key, CANCELLED, "CANCELLED", None, record.checks, now)
        return self.publish(final)

    def publish(self, record: Delivery) -> Delivery:
        """Publish the completion event of a finished record (again, if need be), and hand its slot's
        successors their submit tasks; PublishUnavailable propagates."""
        if not record.published:
            self.publisher.publish(self.events_topic, completion_event(record, source=self.source))
            self.hand_off(record.handed_to)
            self.ledger.mark_published(record.key, self.clock.now())
            record = replace(record, published=True)
            _log_finished(record)
        return record

    def hand_off(self, keys: list[str] | tuple[str, ...]) -> None:
        """Schedule the submit task of each queued delivery among `keys` that is due a hand-off (named: a
        repeated hand-off is one task). A task that cannot be created now is left to the sweeper, which
        re-drives every queued delivery whose hand-off is overdue."""
        for key in keys:
            record = self.ledger.get(key)
            if record is None or record.state != QUEUED or record.hand_off_at is None:
                continue
            try:
                self.scheduler.hand_off(Handoff(key, record.workflow, record.attempts, record.hand_off_at))
            except TasksUnavailable as exc:
                log.warning("submit hand-off not scheduled; the sweeper will re-drive it: %s", exc.detail,
                            extra={"key": key})


def _log_finished(record: Delivery) -> None:
    """The line of a job's completion event (once per job): its outcome, run time and status checks."""
    duration = round(record.finished_at - _submitted_at(record), 3) if record.finished_at is not None else None
    log.info("job finished %s", record.outcome, extra=logs.event(
        "job.finished", workflow=record.workflow, delivery_id=record.delivery_id, job_id=record.job_id,
        outcome=record.outcome, duration_s=duration, checks=record.checks))


def _submitted_at(record: Delivery) -> float:
    """When the record's job was submitted (its creation for records older than that field)."""
    return record.submitted_at or record.created_at


def _tracking_of(record: Delivery, now: float) -> Tracking:
    """The job to follow, all from the ledger record (never from a message)."""
    assert record.job_id is not None
    return Tracking(record.key, record.job_id, record.workflow, record.connection, record.api_base_url,
                    _submitted_at(record), record.deadline_at or now, record.delivery_id, record.trace)
