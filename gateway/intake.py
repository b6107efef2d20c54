"""Accepting a delivery: validate, map, claim, submit, track (docs/architecture.md, "One delivery").

Shared by the `webhook` (HTTP) and `submit` (Pub/Sub) entry points. The order of the steps is
the guarantee: a claim before the job, the job id in the ledger before the 202, and every way
out of the middle either releases the claim (nothing happened) or leaves a record the sweeper
and the sender's retry can finish.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway import idempotency, logs
from gateway.carto import CartoClient, delivery_marker, delivery_metadata
from gateway.carto.dialects import connection_of, find_by_marker, find_by_metadata, job_id_of
from gateway.errors import (
    DeliveryInFlight,
    FieldError,
    GatewayError,
    IdempotencyKeyReused,
    NotFound,
    PublishUnavailable,
    SubmitOutcomeUnknown,
    Unavailable,
)
from gateway.events import Publisher, tracking_message
from gateway.ledger import CLAIMED, SUBMITTED, Delivery, Ledger
from gateway.validation import Rendered, render
from gateway.workflows import Workflow

log = logging.getLogger("gateway.intake")
CLAIM_MARGIN_S = 30.0  # beyond the longest CARTO submit (CartoClient.longest_submit_s) before a claim is stale
RECONCILE_FETCHES = 20  # listed jobs without metadata fetched one by one, newest first, before the marker is tried


@dataclass(frozen=True)
class Inbound:
    """One delivery as the entry points hand it over, after authentication and parsing."""

    workflow: Workflow
    body: bytes
    payload: Any
    headers: Mapping[str, str]
    idempotency_key: str | None
    delivery_id: str | None
    trace: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The answer to a delivery: its job, and whether it was a replay."""

    job_id: str
    workflow: str
    delivery_id: str | None
    duplicate: bool
    key: str

    def as_dict(self, status_url: str) -> dict[str, Any]:
        return {"job_id": self.job_id, "workflow": self.workflow, "status_url": status_url,
                "delivery_id": self.delivery_id, "duplicate": self.duplicate}


class Intake:
    """Turns inbound deliveries into CARTO jobs exactly once."""

    def __init__(self, *, carto: CartoClient, ledger: Ledger, publisher: Publisher, jobs_topic: str,
                 default_base_url: str | None, retention_s: int, clock: Callable[[], float],
                 claim_stale_s: float | None = None):
        self.carto, self.ledger, self.publisher = carto, ledger, publisher
        self.claim_stale_s = claim_stale_s if claim_stale_s is not None else carto.longest_submit_s + CLAIM_MARGIN_S
        self.jobs_topic, self.default_base_url = jobs_topic, default_base_url
        self.retention_s, self.clock = retention_s, clock

    def accept(self, inbound: Inbound) -> Accepted:
        """Validate, map, claim, submit and track one delivery; replays answer the original job."""
        workflow = inbound.workflow
        if workflow.paused:
            raise Unavailable(f"workflow {workflow.name} is paused", retry_after=300)
        rendered = render(workflow, inbound.payload, inbound.headers)
        return self._claim(self._new_delivery(inbound, rendered), workflow)

    def rerun(self, original: Delivery, workflow: Workflow, attempt: int, *, trace: str | None = None) -> Accepted:
        """Run a delivery again as a new one, `{key}:rerun-{attempt}`, with the CALL and parameters that
        went to CARTO the first time. It takes the path of any delivery (claim, submit, track), so the
        same attempt asked twice is one job: the second answers the first's, `duplicate`."""
        if workflow.paused:
            raise Unavailable(f"workflow {workflow.name} is paused", retry_after=300)
        now = self.clock()
        key_part = idempotency.rerun_key(original.idempotency_key, attempt)
        delivery_id = idempotency.rerun_key(original.delivery_id or original.idempotency_key, attempt)
        return self._claim(workflow=workflow, delivery=Delivery(
            key=idempotency.ledger_key(original.workflow, key_part), workflow=original.workflow, idempotency_key=key_part,
            fingerprint=original.fingerprint, claim_token=secrets.token_hex(16), created_at=now, updated_at=now,
            expires_at=now + self.retention_s, delivery_id=delivery_id,
            trace=trace, connection=original.connection, api_base_url=original.api_base_url, query=original.query,
            parameters=original.parameters, deadline_at=now + workflow.deadline_s, rerun_of=original.key))

    def _claim(self, delivery: Delivery, workflow: Workflow) -> Accepted:
        claim = self.ledger.claim(delivery)
        if claim.created:
            return self._submit(claim.delivery, workflow)
        return self._replay(claim.delivery, delivery.fingerprint, workflow)

    def _new_delivery(self, inbound: Inbound, rendered: Rendered) -> Delivery:
        now = self.clock()
        key_part = inbound.idempotency_key or idempotency.anonymous_key()
        return Delivery(
            key=idempotency.ledger_key(inbound.workflow.name, key_part), workflow=inbound.workflow.name,
            idempotency_key=key_part, fingerprint=idempotency.fingerprint(inbound.body),
            claim_token=secrets.token_hex(16), created_at=now, updated_at=now,
            expires_at=now + self.retention_s, delivery_id=inbound.delivery_id, trace=inbound.trace,
            connection=inbound.workflow.connection, api_base_url=self.base_url(inbound.workflow),
            query=rendered.query, parameters=rendered.parameters,
            deadline_at=now + inbound.workflow.deadline_s)

    def base_url(self, workflow: Workflow) -> str:
        base = workflow.api_base_url or self.default_base_url
        if not base:
            raise Unavailable("no CARTO_API_BASE_URL configured for this workflow")
        return base

    def _submit(self, delivery: Delivery, workflow: Workflow) -> Accepted:
        query = f"{delivery.query}\n{delivery_marker(delivery.key)}"
        try:
            job_id = self.carto.submit(delivery.api_base_url, delivery.connection, query,
                                       workflow.wire(delivery.parameters or {}),
                                       workflow=delivery.workflow,
                                       metadata=delivery_metadata(delivery.key, delivery.workflow, delivery.delivery_id))
        except SubmitOutcomeUnknown:
            # The job may exist: keep the claim, so neither a retry nor the sweeper submits it twice
            # before reconciling with CARTO's job list.
            log.warning("job submission outcome unknown",
                        extra=logs.event("carto.failed", kind="submit_unknown", key=delivery.key))
            raise
        except GatewayError as exc:  # unavailable or refused before any job exists: undo the claim
            self.ledger.release(delivery.key, delivery.claim_token)
            if isinstance(exc, Unavailable):
                log.warning("job not submitted: %s", exc.detail, extra=logs.event("carto.failed", kind="submit"))
            raise
        return self._record_job(delivery, job_id, duplicate=False)

    def _record_job(self, delivery: Delivery, job_id: str, *, duplicate: bool) -> Accepted:
        now = self.clock()
        deadline = now + ((delivery.deadline_at or now) - delivery.created_at)
        if not self.ledger.mark_submitted(delivery.key, delivery.claim_token, job_id, now, deadline, now):
            # Another instance took the claim over meanwhile; it records and tracks the job.
            raise DeliveryInFlight("the same delivery is being resumed elsewhere", retry_after=2)
        submitted = replace(delivery, state=SUBMITTED, job_id=job_id, submitted_at=now, deadline_at=deadline)
        self.track(submitted)
        return Accepted(job_id, delivery.workflow, delivery.delivery_id, duplicate, delivery.key)

    def track(self, delivery: Delivery) -> bool:
        """Publish the tracking message; False (and a warning) when Pub/Sub is down: the sweeper re-drives."""
        try:
            self.publisher.publish(self.jobs_topic, tracking_message(delivery))
        except PublishUnavailable:
            log.warning("tracking message not published; the sweeper will re-drive it",
                        extra=logs.event("publish.failed", kind="tracking", key=delivery.key, job_id=delivery.job_id))
            return False
        self.ledger.mark_tracked(delivery.key, self.clock())
        return True

    def _replay(self, existing: Delivery, fingerprint: str, workflow: Workflow) -> Accepted:
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "this idempotency key was already used with a different body",
                errors=[FieldError("idempotency-key", "reused with a different body")])
        if existing.state == CLAIMED:
            return self._resume_claim(existing, workflow)
        assert existing.job_id is not None
        if existing.state == SUBMITTED:
            self.track(existing)
        return Accepted(existing.job_id, existing.workflow, existing.delivery_id, True, existing.key)

    def _resume_claim(self, existing: Delivery, workflow: Workflow) -> Accepted:
        """A twin is in flight; if it has been silent too long, its instance died: reconcile and resume."""
        now = self.clock()
        if now - existing.updated_at < self.claim_stale_s:
            raise DeliveryInFlight("the same delivery is still being processed", retry_after=2)
        token = secrets.token_hex(16)
        if not self.ledger.take_over(existing.key, existing.claim_token, token, now):
            raise DeliveryInFlight("the same delivery is still being processed", retry_after=2)
        mine = replace(existing, claim_token=token, updated_at=now)
        job_id = self.find_submitted_job(mine)
        if job_id is not None:
            return self._record_job(mine, job_id, duplicate=True)
        return self._submit(mine, workflow)

    def adopt(self, delivery: Delivery, job_id: str) -> Accepted:
        """Record a job found in CARTO's list for a claimed delivery, and start tracking it."""
        return self._record_job(delivery, job_id, duplicate=True)

    def find_submitted_job(self, delivery: Delivery) -> str | None:
        """The id of the job CARTO ran for this delivery: by the gateway's `metadata` first (in the job list,
        then on each listed job of the connection that the list shows without it), by the marker comment
        in the query second."""
        jobs = self.carto.list_jobs(delivery.api_base_url, workflow=delivery.workflow)
        found = find_by_metadata(jobs, delivery.key)
        if found is None:
            found = self._find_on_each_job(delivery, jobs)
        return found if found is not None else find_by_marker(jobs, delivery.key)

    def _find_on_each_job(self, delivery: Delivery, jobs: list[dict[str, Any]]) -> str | None:
        """A job list that drops `metadata`: ask for the jobs of this connection one by one (a bounded number)."""
        unlabelled = [job for job in jobs if "metadata" not in job and job_id_of(job)
                      and connection_of(job) in (None, delivery.connection)]
        for job in unlabelled[:RECONCILE_FETCHES]:
            job_id = job_id_of(job)
            assert job_id is not None
            try:
                body = self.carto.job(delivery.api_base_url, delivery.connection, job_id, workflow=delivery.workflow)
            except NotFound:
                continue
            if find_by_metadata([{**body, "externalId": job_id}], delivery.key):
                return job_id
        return None

