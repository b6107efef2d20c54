"""Re-driving deliveries stuck between two states (docs/architecture.md, "Invariants"): run by Cloud Scheduler via `sweep`.

    claimed, silent past the grace   → find the job in CARTO's list by its metadata or marker: adopt it, or
                                       release the claim so the sender's retry can submit it
    submitted (tracking unpublished) → publish the tracking message
    tracked, next check overdue      → schedule the next check again (its task was lost, or creating it
                                       failed); past the deadline, check once and finish (TIMED_OUT if
                                       still running)
    finished, event unpublished      → publish the completion event
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway import logs
from gateway.errors import GatewayError
from gateway.intake import Intake
from gateway.ledger import CLAIMED, FINISHED, SUBMITTED, TRACKED, Delivery, Ledger
from gateway.poller import Poller

log = logging.getLogger("gateway.sweeper")


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
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Sweeper:
    """Finds stuck deliveries and moves each one step on."""

    def __init__(self, *, ledger: Ledger, intake: Intake, poller: Poller, clock: Callable[[], float],
                 grace_s: float, claim_stale_s: float | None = None):
        self.ledger, self.intake, self.poller, self.clock = ledger, intake, poller, clock
        self.grace_s = grace_s
        self.claim_stale_s = intake.claim_stale_s if claim_stale_s is None else claim_stale_s

    def sweep(self, limit: int = 200) -> SweepReport:
        report = SweepReport()
        now = self.clock()
        for delivery in self.ledger.stale(now - self.grace_s, limit):
            try:
                self._redrive(delivery, now, report)
            except GatewayError as exc:
                log.warning("sweep could not re-drive %s: %s", delivery.key, exc.detail,
                            extra=logs.event("sweep.failed", workflow=delivery.workflow, key=delivery.key,
                                             code=exc.code))
                report.failed.append(delivery.key)
        report.purged = self.ledger.purge_expired(now)
        return report

    def _redrive(self, delivery: Delivery, now: float, report: SweepReport) -> None:
        if delivery.state == CLAIMED:
            # A younger claim may still have its job POST in flight: releasing it now would let the
            # sender's retry submit a second job (tests/test_faults_network.py). Same rule as a replay's.
            if now - delivery.updated_at >= self.claim_stale_s:
                self._reconcile(delivery, report)
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
        if job_id is None:
            if self.ledger.release(delivery.key, delivery.claim_token):
                _redriven(report, "released", delivery)
            return
        self.intake.adopt(delivery, job_id)
        _redriven(report, "adopted", delivery, job_id)

    def _tracked(self, delivery: Delivery, now: float, report: SweepReport) -> None:
        # A tracked record's updated_at is its next check's due time (or when it was tracked), so being
        # in `stale` means that check is overdue by more than the grace: its task is lost.
        if delivery.deadline_at is not None and now >= delivery.deadline_at + self.grace_s:
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
