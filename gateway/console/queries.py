"""What the console's pages read from the ledger: the filtered list, the search, one delivery's timeline,
and each workflow's last 24 hours. The parsing of the list's URL is pure; the rest takes the ledger."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from gateway.carto import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT
from gateway.errors import FieldError, MalformedRequest
from gateway.ledger import FINISHED, QUEUED, STATES, SUPERSEDED, TRACKED, Delivery, DeliveryQuery, Ledger
from gateway.poller import Schedule
from gateway.warehouses import COLON, DOLLAR, scan
from gateway.workflows import Workflow

OUTCOMES = (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, SUPERSEDED)
RUNNING = "RUNNING"  # how the pictures name deliveries that have no outcome yet
PAGE_SIZE, MAX_PAGE_SIZE = 50, 200
ERROR_CLIP = 140  # characters of CARTO's error message on a list row (the delivery's page shows all of it)
DAY_S = 86400.0
SUMMARY_LIMIT = 1000
_WORKFLOW = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_MAX_SEARCH = 500


@dataclass(frozen=True)
class Filters:
    """The list's state, as it stands in the URL (so a link can be shared)."""

    workflow: str | None = None
    outcome: str | None = None
    state: str | None = None
    since: str | None = None  # as typed: YYYY-MM-DDTHH:MM[:SS], UTC
    until: str | None = None
    q: str | None = None
    per_page: int = PAGE_SIZE
    after: tuple[float, str] | None = None

    def query(self) -> DeliveryQuery:
        return DeliveryQuery(workflow=self.workflow, outcome=self.outcome, state=self.state,
                             since=_moment(self.since) if self.since else None,
                             until=_moment(self.until) if self.until else None,
                             after=self.after, limit=self.per_page)

    def url(self, **changes: Any) -> str:
        """The list's URL with these filters (and `changes`), empty ones left out."""
        state = replace(self, **changes)
        params = {name: getattr(state, name) for name in ("workflow", "outcome", "state", "since", "until", "q")}
        pairs = [(k, v) for k, v in params.items() if v]
        if state.per_page != PAGE_SIZE:
            pairs.append(("per_page", str(state.per_page)))
        if state.after is not None:
            pairs += [("after_t", repr(state.after[0])), ("after_k", state.after[1])]
        return "/?" + urlencode(pairs) if pairs else "/"


def parse_filters(args: Mapping[str, str]) -> Filters:
    """The filters of a list URL; MalformedRequest (400) naming every bad parameter."""
    errors: list[FieldError] = []

    def one_of(name: str, allowed: tuple[str, ...]) -> str | None:
        value = args.get(name) or None
        if value is not None and value not in allowed:
            errors.append(FieldError(name, f"must be one of {', '.join(allowed)}"))
            return None
        return value

    workflow = args.get("workflow") or None
    if workflow is not None and not _WORKFLOW.fullmatch(workflow):
        errors.append(FieldError("workflow", "is not a workflow name"))
        workflow = None
    times = {}
    for name in ("since", "until"):
        times[name] = args.get(name) or None
        if times[name] is not None and _moment(times[name]) is None:
            errors.append(FieldError(name, "must be a time YYYY-MM-DDTHH:MM (UTC)"))
            times[name] = None
    per_page = _per_page(args.get("per_page"), errors)
    after = _cursor(args.get("after_t"), args.get("after_k"), errors)
    q = (args.get("q") or "").strip() or None
    if q is not None and len(q) > _MAX_SEARCH:
        errors.append(FieldError("q", f"is longer than {_MAX_SEARCH} characters"))
    filters = Filters(workflow, one_of("outcome", OUTCOMES), one_of("state", STATES), times["since"],
                      times["until"], q, per_page, after)
    if errors:
        raise MalformedRequest("the list's filters are not valid", errors=errors)
    return filters


def _per_page(text: str | None, errors: list[FieldError]) -> int:
    if not text:
        return PAGE_SIZE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        errors.append(FieldError("per_page", f"must be a whole number from 1 to {MAX_PAGE_SIZE}"))
        return PAGE_SIZE
    return int(text)


def _cursor(at: str | None, key: str | None, errors: list[FieldError]) -> tuple[float, str] | None:
    if not at and not key:
        return None
    try:
        moment = float(at or "")
    except ValueError:
        moment = float("nan")
    if not key or moment != moment or moment in (float("inf"), float("-inf")):
        errors.append(FieldError("after_t", "is not a page cursor (use the list's own links)"))
        return None
    return moment, key


def _moment(text: str) -> float | None:
    """A UTC time typed in the list's form (an <input type=datetime-local>), as a Unix time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class Page:
    """One page of the list and the cursor of the next (None on the last)."""

    rows: list[Delivery]
    next_after: tuple[float, str] | None
    searched: bool = False


def list_page(ledger: Ledger, filters: Filters) -> Page:
    """The deliveries the filters select, newest first; with a search, whatever the text names."""
    if filters.q:
        return Page(search(ledger, filters.q), None, searched=True)
    query = filters.query()
    rows = ledger.recent(replace(query, limit=query.limit + 1))  # one more tells whether a next page exists
    if len(rows) > query.limit:
        rows = rows[:query.limit]
        return Page(rows, (rows[-1].created_at, rows[-1].key))
    return Page(rows, None)


def search(ledger: Ledger, text: str) -> list[Delivery]:
    """Every delivery whose key, job id or delivery id is `text`, newest first, each once."""
    found: dict[str, Delivery] = {}
    candidates = [ledger.get(text), ledger.find_job(text), *ledger.find_delivery(text)]
    for record in candidates:
        if record is not None:
            found.setdefault(record.key, record)
    return sorted(found.values(), key=lambda d: (d.created_at, d.key), reverse=True)


def duration_s(record: Delivery) -> float | None:
    """How long the job ran, from submission to the end CARTO reported (None while it runs)."""
    if record.finished_at is None or record.submitted_at is None:
        return None
    return max(0.0, record.finished_at - record.submitted_at)


def running(record: Delivery) -> bool:
    """Whether the delivery has yet to end (claimed, queued, submitted or tracked): its page may still change."""
    return record.state != FINISHED


def error_message(record: Delivery, limit: int | None = None) -> str | None:
    """CARTO's error message (its reason when it gave no message), clipped to `limit` characters with "…"."""
    error = record.error or {}
    text = str(error.get("message") or error.get("reason") or "").strip()
    if not text:
        return None
    return text if limit is None or len(text) <= limit else text[:limit - 1].rstrip() + "…"


def error_details(record: Delivery) -> dict[str, Any]:
    """The error's other fields (reason, location, …) that say something, for beside its message."""
    return {name: value for name, value in (record.error or {}).items()
            if name != "message" and value not in (None, "")}


@dataclass(frozen=True)
class Progress:
    """A job CARTO runs: how long since it was submitted, when the poller checks it next, its deadline,
    and by how much its checks are overdue (None while they are on time)."""

    elapsed_s: float
    next_check_at: float
    deadline_at: float | None
    overdue_s: float | None = None


def progress(record: Delivery, schedule: Schedule, grace_s: float, now: float) -> Progress | None:
    """The running job's progress; None for a delivery without a running job.

    Checks fall on fixed points of the schedule counted from submission (gateway/poller.py), and the
    ledger's progress is written only now and then, so the next check is the schedule's next point after
    now, never past the deadline (where the last check is made). A tracked record's `updated_at` is its
    next check's due time, rewritten before it falls more than `grace_s` behind: past that, the check is
    overdue (its task lost), as the sweeper sees it too before it schedules the check again."""
    if record.job_id is None or record.outcome is not None or record.submitted_at is None:
        return None
    elapsed = max(0.0, now - record.submitted_at)
    next_at = record.submitted_at + schedule.next_after(elapsed)
    if record.deadline_at is not None:
        next_at = min(next_at, max(now, record.deadline_at))
    late = now - record.updated_at - grace_s
    return Progress(elapsed, next_at, record.deadline_at, late if record.state == TRACKED and late > 0 else None)


@dataclass(frozen=True)
class Parameter:
    """One parameter as the CALL names it: `@name`, or `:k` / `$k` of a positional warehouse with its name."""

    label: str
    name: str
    value: Any


def parameters(record: Delivery, workflow: Workflow | None) -> list[Parameter]:
    """The parameters that went to CARTO, labelled by their placeholders in the CALL; a positional
    warehouse's in placeholder order, each number from the workflow's `position` (the bare name when the
    workflow no longer names it)."""
    style = scan(record.query).style
    if style not in (COLON, DOLLAR):
        return [Parameter(f"@{name}", name, value) for name, value in record.parameters.items()]
    specs = workflow.parameters if workflow is not None else {}
    positions = {name: specs[name].position if name in specs else None for name in record.parameters}
    ordered = sorted(record.parameters.items(), key=lambda item: (positions[item[0]] is None, positions[item[0]] or 0))
    return [Parameter(name if positions[name] is None else f"{style[0]}{positions[name]}", name, value)
            for name, value in ordered]


@dataclass(frozen=True)
class Step:
    """One line of a delivery's timeline."""

    name: str
    at: float | None
    done: bool
    detail: str = ""


def timeline(record: Delivery) -> list[Step]:
    """Claimed, queued (when it waited), submitted, tracked, the checks, finished, event published: when each
    happened."""
    reached = {state: n for n, state in enumerate(STATES)}[record.state]
    submitted, tracked, finished = (STATES.index(state) for state in ("submitted", "tracked", "finished"))
    checks = f"{record.checks} status check{'' if record.checks == 1 else 's'}"
    steps = [Step("claimed", record.created_at, True, f"idempotency key {record.idempotency_key}")]
    if record.queued_at is not None:
        steps.append(Step("queued", record.queued_at, True, waiting_detail(record)))
    steps += [
        Step("submitted", record.submitted_at, reached >= submitted and record.job_id is not None,
             f"CARTO job {record.job_id}" if record.job_id else ""),
        Step("tracked", record.tracked_at, reached >= tracked and record.job_id is not None,
             "tracking message published"),
        Step("checks", record.last_check_at, record.checks > 0, checks + (", the last at" if record.last_check_at else "")),
        Step("finished", record.finished_at, reached >= finished, _ending(record)),
        Step("event published", record.published_at, record.published, "completion event on the events topic"),
    ]
    return steps


_REASONS = {"carto_unavailable": "CARTO could not take the job", "carto_slow": "CARTO did not answer in time",
            "busy": "the workflow was at its cap", "paused": "the workflow is paused"}


def waiting_detail(record: Delivery) -> str:
    """Why a delivery waited (or waits), and CARTO's last answer meanwhile."""
    parts = [_REASONS.get(record.queue_reason or "", record.queue_reason or "")]
    if record.last_answer:
        status = record.last_answer.get("status")
        parts.append(f"CARTO's last answer: {status if status is not None else 'none'} "
                     f"{record.last_answer.get('message') or ''}".strip())
    return "; ".join(part for part in parts if part)


def queued_detail(record: Delivery) -> str | None:
    """Why a queued delivery waits; None for one that does not."""
    return waiting_detail(record) if record.state == QUEUED else None


def _ending(record: Delivery) -> str:
    if not record.outcome:
        return ""
    if record.outcome == SUPERSEDED:
        return f"{SUPERSEDED} by {record.superseded_by}: a newer delivery took its place, no job"
    if record.job_id is None:
        return f"{record.outcome}, no job"
    return f"{record.outcome} (CARTO state {record.carto_state})"


@dataclass(frozen=True)
class Waiting:
    """A workflow's deliveries accepted and not yet submitted: how many, and how long the oldest has waited."""

    count: int
    oldest_s: float | None
    truncated: bool


def waiting(ledger: Ledger, workflow: str, now: float) -> Waiting:
    """The workflow's `queued` deliveries (waiting for CARTO or for a slot)."""
    rows = ledger.recent(DeliveryQuery(workflow=workflow, state=QUEUED, limit=SUMMARY_LIMIT))
    oldest = min((record.created_at for record in rows), default=None)
    return Waiting(len(rows), None if oldest is None else max(0.0, now - oldest), len(rows) >= SUMMARY_LIMIT)


@dataclass(frozen=True)
class Summary:
    """One workflow's last 24 hours."""

    workflow: str
    total: int
    by_outcome: dict[str, int]
    durations: list[float]
    p50: float | None
    p95: float | None
    truncated: bool


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """p50 and p95 (linear interpolation between closest ranks, as numpy's default does)."""
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94]


def workflow_summary(ledger: Ledger, workflow: str, now: float) -> Summary:
    """Deliveries of the last 24 h by outcome (RUNNING for those without one) and their job durations."""
    rows = ledger.recent(DeliveryQuery(workflow=workflow, since=now - DAY_S, limit=SUMMARY_LIMIT))
    counts = Counter(record.outcome or RUNNING for record in rows)
    by_outcome = {name: counts[name] for name in (*OUTCOMES, RUNNING) if counts[name]}
    durations = sorted(d for d in (duration_s(r) for r in rows) if d is not None)
    p50, p95 = percentiles(durations)
    return Summary(workflow, len(rows), by_outcome, durations, p50, p95, len(rows) >= SUMMARY_LIMIT)
