"""Accepting a delivery: validate, map, claim, submit, track (docs/architecture.md, "One delivery").

Shared by the `webhook` (HTTP) and `submit` (Pub/Sub) entry points. The order of the steps is
the guarantee: a claim before the job, the job id in the ledger before the 202, and every way
out of the middle either releases the claim (nothing happened), leaves the delivery queued with
its submit hand-off (CARTO could not take it now: accepted all the same), or leaves a record the
sweeper can finish. A capped or paused workflow's deliveries claim through its admission line
(docs/architecture.md, "Admission").
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway import idempotency, logs
from gateway.carto import FAILED, CartoClient, delivery_marker, delivery_metadata
from gateway.carto.dialects import connection_of, find_by_marker, find_by_metadata, job_id_of
from gateway.clock import Clock
from gateway.errors import (
    ActionRefused,
    CartoUnavailable,
    DeliveryInFlight,
    FieldError,
    GatewayError,
    IdempotencyKeyReused,
    NotFound,
    PublishUnavailable,
    SubmitOutcomeUnknown,
    TasksUnavailable,
    Unavailable,
    UpstreamRejected,
    WorkflowBusy,
)
from gateway.events import Handoff, Publisher, queued_s, tracking_message
from gateway.ledger import BUSY, CLAIMED, QUEUED, SUBMITTED, WAIT, Admitted, Delivery, Ledger, Rule
from gateway.params import MISSING, ParamSpec
from gateway.poller import Poller
from gateway.sqltypes import BindError, bind
from gateway.validation import Rendered, render
from gateway.workflows import Workflow

log = logging.getLogger("gateway.intake")
CLAIM_MARGIN_S = 30.0  # beyond the longest CARTO submit (CartoClient.longest_submit_s) before a claim is stale
RECONCILE_FETCHES = 20  # listed jobs without metadata fetched one by one, newest first, before the marker is tried
BACKOFF_FIRST_S, BACKOFF_MAX_S = 2.0, 120.0  # a queued delivery's submit attempts: 2 s, 4 s, … at most 2 min apart


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
    """The answer to a delivery: its job (None while it is queued), and whether it was a replay."""

    job_id: str | None
    workflow: str
    delivery_id: str | None
    duplicate: bool
    key: str
    queued: bool = False

    def as_dict(self, status_url: str) -> dict[str, Any]:
        return {"job_id": self.job_id, "workflow": self.workflow, "status_url": status_url,
                "delivery_id": self.delivery_id, "duplicate": self.duplicate, "queued": self.queued}


def rule_of(workflow: Workflow) -> Rule:
    """The admission rule a workflow file states."""
    return Rule(workflow.max_concurrent_jobs, workflow.when_busy, workflow.paused)


def backoff_s(attempts: int, retry_after: float | None, key: str) -> float:
    """The wait before a queued delivery's next submit attempt: doubling from BACKOFF_FIRST_S up to BACKOFF_MAX_S,
    never sooner than CARTO's Retry-After, spread by up to a quarter by the key (deliveries queued in one
    burst do not all come back in the same second)."""
    base = max(min(BACKOFF_FIRST_S * 2 ** max(attempts - 1, 0), BACKOFF_MAX_S), float(retry_after or 0))
    spread = int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) / 0xFFFF
    return base * (1 + spread / 4)


class Intake:
    """Turns inbound deliveries into CARTO jobs exactly once."""

    def __init__(self, *, carto: CartoClient, ledger: Ledger, publisher: Publisher, jobs_topic: str,
                 default_base_url: str | None, retention_s: int, clock: Clock, poller: Poller,
                 inline_s: float, reconcile_after_s: float, claim_stale_s: float | None = None):
        self.carto, self.ledger, self.publisher, self.poller = carto, ledger, publisher, poller
        self.claim_stale_s = claim_stale_s if claim_stale_s is not None else carto.longest_submit_s + CLAIM_MARGIN_S
        self.jobs_topic, self.default_base_url = jobs_topic, default_base_url
        self.retention_s, self.clock = retention_s, clock
        # The inline budget; and how long after a POST of unknown outcome its job is looked for (the POST may
        # still be landing at CARTO until then).
        self.inline_s, self.reconcile_after_s = inline_s, reconcile_after_s

    def accept(self, inbound: Inbound) -> Accepted:
        """Validate, map, claim, submit and track one delivery; replays answer the original job. CARTO
        unable to take the job now, or the workflow at its cap or paused: accepted all the same, queued."""
        rendered = render(inbound.workflow, inbound.payload, inbound.headers)
        return self._claim(self._new_delivery(inbound, rendered), inbound.workflow)

    def rerun_plan(self, original: Delivery, workflow: Workflow) -> RerunPlan:
        """What a re-run of `original` sends with `workflow` as loaded now (ActionRefused: it cannot, see
        `rerun_call`)."""
        return RerunPlan(rerun_call(original, workflow), workflow.connection, self.base_url(workflow))

    def rerun(self, original: Delivery, workflow: Workflow, attempt: int, *, trace: str | None = None,
              confirmed: str | None = None) -> Accepted:
        """Run a delivery again as a new one, `{key}:rerun-{attempt}`: the parameters that went to CARTO the
        first time, in the CALL, to the connection and at the CARTO base URL of the workflow file as loaded
        now (`rerun_plan`), which names another procedure once the workflow was updated in CARTO. With
        `confirmed` (a plan's digest), ActionRefused unless that is still what the re-run sends. It takes the
        path of any delivery (claim, submit, track), so the same attempt asked twice is one job: the second
        answers the first's, `duplicate`; a paused or capped workflow's re-run claims through its line, as
        any delivery does (a paused one: accepted and queued, held until the flag goes)."""
        plan = self.rerun_plan(original, workflow)
        if confirmed is not None and plan.digest != confirmed:
            raise ActionRefused("the workflow file changed since this re-run was confirmed (its CALL, connection "
                                "or CARTO base URL): nothing was sent; open the confirmation page again")
        now = self.clock.now()
        key_part = idempotency.rerun_key(original.idempotency_key, attempt)
        delivery_id = idempotency.rerun_key(original.delivery_id or original.idempotency_key, attempt)
        return self._claim(workflow=workflow, delivery=Delivery(
            key=idempotency.ledger_key(original.workflow, key_part), workflow=original.workflow, idempotency_key=key_part,
            fingerprint=original.fingerprint, claim_token=secrets.token_hex(16), created_at=now, updated_at=now,
            expires_at=now + self.retention_s, delivery_id=delivery_id,
            trace=trace, connection=plan.connection, api_base_url=plan.api_base_url, query=plan.query,
            parameters=original.parameters, parameter_sources=parameter_sources(workflow),
            deadline_at=now + workflow.deadline_s, rerun_of=original.key))

    def _claim(self, delivery: Delivery, workflow: Workflow) -> Accepted:
        if workflow.admitted:
            return self._admit(delivery, workflow)
        claim = self.ledger.claim(delivery)  # the fast path: no line, no transaction beyond the claim
        if claim.created:
            return self._submit(claim.delivery, workflow)
        return self._replay(claim.delivery, delivery.fingerprint, workflow)

    def _admit(self, delivery: Delivery, workflow: Workflow) -> Accepted:
        """Claim through the workflow's line: a slot (submit now), a place (queued) or busy (refused)."""
        admitted = self.ledger.claim_admitted(delivery, rule_of(workflow), self.clock.now())
        self.after_arrival(admitted)
        if admitted.verdict == BUSY:
            raise WorkflowBusy(f"workflow {workflow.name} already runs {workflow.max_concurrent_jobs} job(s)")
        if not admitted.created:
            return self._replay(admitted.delivery, delivery.fingerprint, workflow)
        if admitted.verdict == WAIT:
            record = admitted.delivery
            log.info("delivery queued", extra=logs.event("delivery.queued", workflow=record.workflow,
                                                              reason=record.queue_reason, key=record.key))
            return self._accepted(record, duplicate=False)
        return self._submit(admitted.delivery, workflow)

    def after_arrival(self, admitted: Admitted) -> None:
        """The events of the deliveries an arrival replaced, and the hand-offs of those it let through.
        Neither may fail the arrival: the sweeper publishes and hands off whatever is left over."""
        for key in admitted.replaced:
            record = self.ledger.get(key)
            if record is None or record.outcome is None:
                continue
            log.info("delivery superseded", extra=logs.event("delivery.superseded", workflow=record.workflow,
                                                                  key=key))
            try:
                self.poller.publish(record)
            except PublishUnavailable as exc:
                log.warning("superseded event not published; the sweeper will: %s", exc.detail, extra={"key": key})
        self.poller.hand_off(admitted.granted)

    @staticmethod
    def _accepted(record: Delivery, *, duplicate: bool) -> Accepted:
        queued = record.job_id is None and record.outcome is None
        return Accepted(record.job_id, record.workflow, record.delivery_id, duplicate, record.key, queued)

    def _new_delivery(self, inbound: Inbound, rendered: Rendered) -> Delivery:
        now = self.clock.now()
        key_part = inbound.idempotency_key or idempotency.anonymous_key()
        return Delivery(
            key=idempotency.ledger_key(inbound.workflow.name, key_part), workflow=inbound.workflow.name,
            idempotency_key=key_part, fingerprint=idempotency.fingerprint(inbound.body),
            claim_token=secrets.token_hex(16), created_at=now, updated_at=now,
            expires_at=now + self.retention_s, delivery_id=inbound.delivery_id, trace=inbound.trace,
            connection=inbound.workflow.connection, api_base_url=self.base_url(inbound.workflow),
            query=rendered.query, parameters=rendered.parameters,
            parameter_sources=parameter_sources(inbound.workflow), deadline_at=now + inbound.workflow.deadline_s)

    def base_url(self, workflow: Workflow) -> str:
        base = workflow.api_base_url or self.default_base_url
        if not base:
            raise Unavailable("no CARTO_API_BASE_URL configured for this workflow")
        return base

    def _post(self, delivery: Delivery, workflow: Workflow, budget_s: float | None) -> str:
        query = f"{delivery.query}\n{delivery_marker(delivery.key)}"
        return self.carto.submit(delivery.api_base_url, delivery.connection, query,
                                 workflow.wire(delivery.parameters or {}), workflow=delivery.workflow,
                                 metadata=delivery_metadata(delivery.key, delivery.workflow, delivery.delivery_id),
                                 budget_s=budget_s)

    def _submit(self, delivery: Delivery, workflow: Workflow) -> Accepted:
        """The inline try, within the budget; CARTO unable to take the job now → queued (202 all the same)."""
        try:
            job_id = self._post(delivery, workflow, self.inline_s)
        except SubmitOutcomeUnknown as exc:
            # The job may exist: it is looked for (metadata, then marker) before anything is posted again.
            log.warning("job submission outcome unknown; queued",
                        extra=logs.event("carto.failed", kind="submit_unknown", key=delivery.key))
            return self._queue(delivery, exc, unknown=True)
        except CartoUnavailable as exc:
            log.warning("job not submitted: %s; queued", exc.detail, extra=logs.event("carto.failed", kind="submit"))
            return self._queue(delivery, exc, unknown=False)
        except GatewayError:  # refused before any job exists: undo the claim (and hand its slot on)
            self.ledger.release(delivery.key, delivery.claim_token)
            if delivery.capped and (workflow := self._workflow_of(delivery, workflow)) is not None:
                self.poller.hand_off(self.ledger.refill(delivery.workflow, rule_of(workflow), self.clock.now()))
            raise
        return self._record_job(delivery, job_id, duplicate=False)

    @staticmethod
    def _workflow_of(delivery: Delivery, workflow: Workflow | None) -> Workflow | None:
        return workflow if workflow is not None and workflow.name == delivery.workflow else None

    def _queue(self, delivery: Delivery, exc: CartoUnavailable, *, unknown: bool) -> Accepted:
        """Record that CARTO could not take the job now and hand the delivery to a submit task due later."""
        now = self.clock.now()
        slow = unknown and "Timeout" in exc.detail  # ReadTimeoutError: CARTO is slow, not down
        reason = "carto_slow" if slow else "carto_unavailable"
        delay = self.reconcile_after_s if unknown else backoff_s(delivery.attempts + 1, exc.retry_after, delivery.key)
        answer = {"status": _status_in(exc.detail), "message": exc.detail[:300]}
        if not self.ledger.queue(delivery.key, delivery.claim_token, reason=reason, hand_off_at=now + delay,
                                 answer=answer, unknown=unknown, now=now):
            raise DeliveryInFlight("the same delivery is being resumed elsewhere", retry_after=2)
        due = now + delay if delivery.deadline_at is None else min(now + delay, delivery.deadline_at)
        if delivery.queued_at is None:
            log.info("delivery queued", extra=logs.event("delivery.queued", workflow=delivery.workflow,
                                                              reason=reason, key=delivery.key))
        self.hand_off(Handoff(delivery.key, delivery.workflow, delivery.attempts + 1, due))
        return Accepted(None, delivery.workflow, delivery.delivery_id, False, delivery.key, queued=True)

    def hand_off(self, handoff: Handoff) -> None:
        """Schedule a submit task; when Cloud Tasks cannot take it now the delivery stays queued with its
        hand-off due, and the sweeper re-drives it."""
        try:
            self.poller.scheduler.hand_off(handoff)
        except TasksUnavailable as exc:
            log.warning("submit hand-off not scheduled; the sweeper will re-drive it: %s", exc.detail,
                        extra={"key": handoff.key})

    def submit_queued(self, delivery: Delivery, workflow: Workflow) -> Delivery:
        """A submit task's work on a queued delivery it has dequeued (claimed under its own token): find
        the job of a POST whose outcome was unknown, else post (no budget: a task may wait for CARTO).
        CARTO unable → queued again, with backoff; refused for good → one FAILED event, no job."""
        try:
            job_id = self.find_submitted_job(delivery) if delivery.unknown else None
            if job_id is None:
                job_id = self._post(delivery, workflow, None)
        except SubmitOutcomeUnknown as exc:
            self._queue(delivery, exc, unknown=True)
            return self.ledger.get(delivery.key) or delivery
        except CartoUnavailable as exc:
            self._queue(delivery, exc, unknown=delivery.unknown)
            return self.ledger.get(delivery.key) or delivery
        except (UpstreamRejected, NotFound) as exc:
            ended = self.ledger.end_queued(delivery.key, FAILED, {"reason": "notAccepted", "location": None,
                                                                   "message": exc.detail[:1000]},
                                           self.clock.now(), claim_token=delivery.claim_token)
            return self.poller.publish(ended) if ended is not None else (self.ledger.get(delivery.key) or delivery)
        self._record_job(delivery, job_id, duplicate=False)
        submitted = self.ledger.get(delivery.key) or delivery
        log.info("queued delivery submitted", extra=logs.event("delivery.dequeued", workflow=delivery.workflow,
                                                                    key=delivery.key, job_id=job_id,
                                                                    queued_s=queued_s(submitted)))
        return submitted

    def _record_job(self, delivery: Delivery, job_id: str, *, duplicate: bool) -> Accepted:
        now = self.clock.now()
        if delivery.queued_at is not None and delivery.deadline_at is not None:
            deadline = delivery.deadline_at  # counted from acceptance
        else:
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
        self.ledger.mark_tracked(delivery.key, self.clock.now())
        return True

    def _replay(self, existing: Delivery, fingerprint: str, workflow: Workflow) -> Accepted:
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "this idempotency key was already used with a different body",
                errors=[FieldError("idempotency-key", "reused with a different body")])
        if existing.state == QUEUED or (existing.state == CLAIMED and existing.queued_at is not None):
            return self._accepted(existing, duplicate=True)  # accepted already: a submit task owns it
        if existing.state == CLAIMED:
            return self._resume_claim(existing, workflow)
        if existing.state == SUBMITTED:
            self.track(existing)
        return self._accepted(existing, duplicate=True)

    def _resume_claim(self, existing: Delivery, workflow: Workflow) -> Accepted:
        """A twin is in flight; if it has been silent too long, its instance died: reconcile and resume."""
        now = self.clock.now()
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


@dataclass(frozen=True)
class RerunPlan:
    """What a re-run of a delivery sends, from its workflow file as loaded now: the CALL, the connection and
    the CARTO base URL. `digest` names the three, so a confirmation can be held to what it showed."""

    query: str
    connection: str
    api_base_url: str

    @property
    def digest(self) -> str:
        text = json.dumps([self.query, self.connection, self.api_base_url], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def changes(self, original: Delivery) -> dict[str, tuple[str, str]]:
        """Each part that differs from what `original` sent: {"query"|"connection"|"api_base_url": (was, now)}."""
        parts = {"query": (original.query, self.query), "connection": (original.connection, self.connection),
                 "api_base_url": (original.api_base_url, self.api_base_url)}
        return {part: pair for part, pair in parts.items() if pair[0] != pair[1]}


def parameter_sources(workflow: Workflow) -> dict[str, dict[str, Any]]:
    """Each parameter's type and source as the workflow file states them (a delivery's `parameter_sources`)."""
    return {name: spec.source for name, spec in workflow.parameters.items()}


def rerun_call(original: Delivery, workflow: Workflow) -> str:
    """The CALL a re-run of `original` sends: the workflow file's as loaded now. ActionRefused when the file's
    parameters no longer take the values the delivery was mapped to (its body is not kept to map again): other
    names, another type or source than the delivery recorded, a constant that changed, or a type the value
    sent does not bind to as it was sent (all a record from before `parameter_sources` can tell)."""
    if set(workflow.parameters) != set(original.parameters):
        raise ActionRefused(f"the workflow file's parameters ({', '.join(sorted(workflow.parameters))}) are no "
                            f"longer this delivery's ({', '.join(sorted(original.parameters))}): it cannot be "
                            "re-run with the current file; send its body again instead")
    recorded = original.parameter_sources or {}
    for name, spec in workflow.parameters.items():
        was = recorded.get(name)
        problem = (f"is now {json.dumps(spec.source)}; the delivery's was {json.dumps(was)}"
                   if was is not None and was != spec.source else _parameter_change(spec, original.parameters[name]))
        if problem:
            raise ActionRefused(f"the workflow file's parameter {name} {problem}: this delivery cannot be re-run "
                                "with the current file; send its body again instead")
    return workflow.query


def _parameter_change(spec: ParamSpec, sent: Any) -> str | None:
    """Why the value `sent` the first time does not fit `spec` as the file states it now (None: it does)."""
    if spec.value is not MISSING:
        try:
            constant = bind(spec.type, spec.value, coerce=spec.coerce)
        except BindError:
            constant = MISSING
        if constant != sent:
            return f"is now the constant {json.dumps(spec.value)}; the delivery sent {json.dumps(sent)}"
        return None
    try:
        same = bind(spec.type, sent, coerce=False) == sent
    except BindError:
        same = False
    return None if same else f"is now {spec.type}; the delivery sent {json.dumps(sent)}, bound to another type"


def _status_in(detail: str) -> int | None:
    """The HTTP status a CartoUnavailable's detail names ("CARTO answered 503"), if any."""
    words = detail.replace("(", " ").replace(")", " ").split()
    return next((int(w) for w in words if w.isdigit() and len(w) == 3), None)
