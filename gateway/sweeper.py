"""Re-driving deliveries stuck between two states (docs/architecture.md, "Invariants"): run by Cloud Scheduler via `sweep`.

    claimed, silent past the grace   → find the job in CARTO's list by its metadata or marker: adopt it, or
                                       release the claim so the sender's retry can submit it (queued again
                                       instead, when it was accepted already: its submitter died)
    queued, hand-off overdue         → schedule its submit task again (the next attempt); waiting for a slot
                                       past its deadline → one TIMED_OUT event (notSubmitted)
    every capped or paused workflow  → free the slots of ended jobs, give free slots to the oldest waiting
                                       (a workflow no longer paused releases its deliveries here)
    submitted (tracking unpublished) → publish the tracking message
    tracked, next check overdue      → schedule the next check again (its task was lost, or creating it
                                       failed); past the deadline, check once and finish (TIMED_OUT if
                                       still running)
    finished, event unpublished      → publish the completion event
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway import logs
from gateway.admission import Admission
from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.intake import Intake, rule_of
from gateway.ledger import CLAIMED, FINISHED, QUEUED, SUBMITTED, TRACKED, Delivery, Ledger, Rule
from gateway.poller import Poller
from gateway.workflows import Registry

log = logging.getLogger("gateway.sweeper")
HAND_OFF_OVERDUE_S = 30.0  # a submit task this late was lost (or never created): hand it off again


@dataclass
class SweepReport:
    """What one sweep did, for the log line and the HTTP answer."""

    adopted: int = 0
    released: int = 0
    tracked: int = 0
    rescheduled: int = 0
    timed_out: int = 0
    published: int = 0
    purged: int = 0
    requeued: int = 0  # accepted deliveries whose submitter died, queued again
    handed_off: int = 0  # queued deliveries whose submit task was scheduled again, or a slot given
    not_submitted: int = 0  # ended TIMED_OUT without a job
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Sweeper:
    """Finds stuck deliveries and moves each one step on."""

    def __init__(self, *, ledger: Ledger, intake: Intake, poller: Poller, admission: Admission, registry: Registry,
                 clock: Clock, sweep_grace_s: float, claim_stale_s: float | None = None):
        self.ledger, self.intake, self.poller, self.clock = ledger, intake, poller, clock
        self.admission, self.registry = admission, registry
        self.sweep_grace_s = sweep_grace_s
        self.claim_stale_s = intake.claim_stale_s if claim_stale_s is None else claim_stale_s

    def sweep(self, limit: int = 200) -> SweepReport:
        report = SweepReport()
        now = self.clock.now()
        self._refill(now, report)
        for delivery in self.ledger.stale(now - self.sweep_grace_s, limit):
            try:
                self._redrive(delivery, now, report)
            except GatewayError as exc:
                log.warning("sweep could not re-drive %s: %s", delivery.key, exc.detail,
                            extra=logs.event("sweep.failed", workflow=delivery.workflow, key=delivery.key,
                                             code=exc.code))
                report.failed.append(delivery.key)
        report.purged = self.ledger.purge_expired(now)
        return report

    def _refill(self, now: float, report: SweepReport) -> None:
        """Each workflow's line takes its file's rule: slots of ended jobs freed, free slots to the oldest
        waiting. A workflow without a cap or pause is looked at only if it still has a line."""
        for workflow in self.registry.workflows.values():
            rule = rule_of(workflow)
            try:
                if not workflow.admitted:
                    line = self.ledger.line(workflow.name)
                    if line is None or not (line.running or line.waiting):
                        continue
                    rule = Rule(None)
                granted = self.ledger.refill(workflow.name, rule, now)
                self.poller.hand_off(granted)
                report.handed_off += len(granted)
                self._slot_holders(workflow.name, set(granted), now, report)
            except GatewayError as exc:
                log.warning("sweep could not refill %s: %s", workflow.name, exc.detail)
                report.failed.append(workflow.name)

    def _slot_holders(self, workflow: str, granted: set[str], now: float, report: SweepReport) -> None:
        """A slot must not sit idle past one sweep once its holder cannot be moving: a holder due a
        hand-off for a while gets its submit task again (the same name: one task), and a holder claimed
        past the stale-claim time (its submitter died) is reconciled now, not after the grace."""
        line = self.ledger.line(workflow)
        for key in line.running if line is not None else ():
            record = None if key in granted else self.ledger.get(key)
            if record is None:
                continue
            if record.state == QUEUED and record.hand_off_at is not None and now - record.hand_off_at >= HAND_OFF_OVERDUE_S:
                self.poller.hand_off([key])
                _redriven(report, "handed_off", record)
            elif record.state == CLAIMED and now - record.updated_at >= self.claim_stale_s:
                self._reconcile(record, report)

    def _redrive(self, delivery: Delivery, now: float, report: SweepReport) -> None:
        if delivery.state == CLAIMED:
            # A younger claim may still have its job POST in flight: releasing it now would let the
            # sender's retry submit a second job (tests/test_faults_network.py). Same rule as a replay's.
            if now - delivery.updated_at >= self.claim_stale_s:
                self._reconcile(delivery, report)
        elif delivery.state == QUEUED:
            self._queued(delivery, now, report)
        elif delivery.state == SUBMITTED:
            if self.intake.track(delivery):
                _redriven(report, "tracked", delivery)
        elif delivery.state == TRACKED:
            self._tracked(delivery, now, report)
        elif delivery.state == FINISHED and not delivery.published:
            self.poller.publish(delivery)
            _redriven(report, "published", delivery)

    def _reconcile(self, delivery: Delivery, report: SweepReport) -> None:
        job_id = self.intake.find_submitted_job(delivery)
        if job_id is not None:
            self.intake.adopt(delivery, job_id)
            _redriven(report, "adopted", delivery, job_id)
        elif delivery.queued_at is not None:  # accepted: its submitter died before CARTO took the job
            now = self.clock.now()
            if self.ledger.queue(delivery.key, delivery.claim_token, reason=delivery.queue_reason or "carto_unavailable",
                                 hand_off_at=now, answer=delivery.last_answer, unknown=False, now=now):
                self.poller.hand_off([delivery.key])
                _redriven(report, "requeued", delivery)
        elif self.ledger.release(delivery.key, delivery.claim_token):
            _redriven(report, "released", delivery)
            workflow = self.registry.get(delivery.workflow)
            if delivery.capped and workflow is not None:
                self.poller.hand_off(self.ledger.refill(delivery.workflow, rule_of(workflow), self.clock.now()))

    def _queued(self, delivery: Delivery, now: float, report: SweepReport) -> None:
        """A waiting delivery is stale only at its deadline; one with a hand-off due, when its task is lost."""
        if delivery.deadline_at is not None and now >= delivery.deadline_at:
            self.admission.not_submitted(delivery, now)
            _redriven(report, "not_submitted", delivery)
        elif delivery.hand_off_at is not None and self.ledger.reschedule(delivery.key, delivery.attempts, now, now):
            self.poller.hand_off([delivery.key])
            _redriven(report, "handed_off", delivery)

    def _tracked(self, delivery: Delivery, now: float, report: SweepReport) -> None:
        # A tracked record's updated_at is its next check's due time (or when it was tracked), so being
        # in `stale` means that check is overdue by more than the grace: its task is lost.
        if delivery.deadline_at is not None and now >= delivery.deadline_at + self.sweep_grace_s:
            self.poller.expire(delivery, now)
            _redriven(report, "timed_out", delivery)
        else:
            self.poller.resume(delivery, now)
            _redriven(report, "rescheduled", delivery)


def _redriven(report: SweepReport, kind: str, delivery: Delivery, job_id: str | None = None) -> None:
    """Count one re-drive in the report and log it: one line per stuck delivery moved on."""
    setattr(report, kind, getattr(report, kind) + 1)
    log.info("sweep re-drove %s: %s", delivery.key, kind, extra=logs.event(
        "sweep.redrive", kind=kind, workflow=delivery.workflow, key=delivery.key,
        delivery_id=delivery.delivery_id, job_id=job_id or delivery.job_id))
