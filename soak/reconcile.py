"""The reconciliation at the end of a soak: what the senders were told, against the jobs CARTO has and
the completion events the events topic delivered. Pure: it is handed the three lists."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway.intake import delivery_marker
from gateway.local.sandbox.jobs import peak_running
from soak.traffic import CAP, EXPECTED, NEVER_RETRIED, Delivery

OUTCOME_OF = {"valid": "SUCCEEDED", "once": "SUCCEEDED", "capped": "SUCCEEDED", "failing": "FAILED"}
CARTO_CAUSED = "carto-unavailable"  # the problem code of a 503 answered because CARTO could not take the job


@dataclass
class Reconciliation:
    """Counts of the run; `problems` lists every broken promise (empty when the run is clean)."""

    rows: list[tuple[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def row(self, name: str, value: Any) -> None:
        self.rows.append((name, value))

    def markdown(self) -> str:
        lines = ["| | count |", "|---|---:|"] + [f"| {name} | {value} |" for name, value in self.rows]
        return "\n".join(lines)


def reconcile(deliveries: list[Delivery], jobs: list[Any], events: list[dict[str, str]],
              capped_procedure: str | None = None) -> Reconciliation:
    """Every 202 has exactly one CARTO job and one distinct outcome; every 4xx has no job; no job is anyone else's;
    no 503 because of CARTO; the capped workflow never ran more than CAP jobs at once."""
    result = Reconciliation()
    jobs_by_marker: dict[str, list[Any]] = defaultdict(list)
    for job in jobs:
        marker = job.query[job.query.rfind("/* carto-gateway:"):]
        jobs_by_marker[marker].append(job)
    outcomes: dict[str, set[str]] = defaultdict(set)
    for event in events:
        outcomes[event.get("job_id") or ""].add(event["outcome"])
    _traffic(result, deliveries)
    _admission(result, deliveries, jobs, capped_procedure)
    owned = _accepted(result, deliveries, jobs_by_marker, outcomes)
    _refused(result, deliveries, jobs_by_marker)
    orphans = [job.external_id for job in jobs if job.external_id not in owned]
    result.row("CARTO jobs created", len(jobs))
    result.row("jobs no accepted delivery owns (orphans)", len(orphans))
    _events(result, events, outcomes)
    if orphans:
        result.problems.append(f"orphan jobs: {orphans[:5]}")
    return result


def _traffic(result: Reconciliation, deliveries: list[Delivery]) -> None:
    result.row("deliveries sent (distinct sends, replays and conflicts included)", len(deliveries))
    result.row("HTTP requests (with the senders' retries)", sum(len(d.statuses) for d in deliveries))
    for kind, count in sorted(Counter(d.kind for d in deliveries).items()):
        result.row(f"&nbsp;&nbsp;kind `{kind}`", count)
    result.row("503/409 answers retried by the senders", sum(s in (409, 503) for d in deliveries for s in d.statuses))
    finals = Counter(d.final for d in deliveries)
    for status, count in sorted(finals.items(), key=lambda kv: kv[0] or 0):
        result.row(f"final answer {status}", count)
    unexpected = [d for d in deliveries if d.final not in EXPECTED[d.kind]]
    result.row("final answer other than the kind's documented one", len(unexpected))
    result.row("senders that gave up (never answered 2xx/4xx)", sum(d.gave_up for d in deliveries))
    for delivery in unexpected[:10]:
        result.problems.append(f"{delivery.kind} {delivery.webhook_id}: answers {delivery.statuses}")


def _admission(result: Reconciliation, deliveries: list[Delivery], jobs: list[Any], capped: str | None) -> None:
    """CARTO's outages, rate limits and slowness are the gateway's to absorb: never a 503 to the sender."""
    carto_503 = sum(code == CARTO_CAUSED for d in deliveries for code in d.codes)
    once = [d for d in deliveries if d.kind in NEVER_RETRIED]
    result.row("503 answers caused by CARTO (carto-unavailable)", carto_503)
    result.row("answered 202 queued (accepted before CARTO had a job)", sum(d.queued for d in deliveries))
    result.row("deliveries from senders that never retry", len(once))
    result.row("&nbsp;&nbsp;answered 2xx", sum(d.accepted for d in once))
    result.row("&nbsp;&nbsp;answered 503 (the gateway could not record it: Pub/Sub or the ledger down)",
               sum(d.final == 503 for d in once))
    if carto_503:
        result.problems.append(f"{carto_503} answers were 503 because of CARTO")
    if capped is not None:
        peak = peak_running(jobs).get(capped, 0)
        result.row(f"capped workflow: most jobs running at CARTO at once (cap {CAP})", peak)
        if peak > CAP:
            result.problems.append(f"the capped workflow ran {peak} jobs at once (cap {CAP})")


def _accepted(result: Reconciliation, deliveries: list[Delivery], jobs_by_marker: dict[str, list[Any]],
              outcomes: dict[str, set[str]]) -> set[str]:
    accepted = [d for d in deliveries if d.accepted]
    owned: set[str] = set()
    lost, doubled, wrong_id, silent, twice, wrong_outcome = [], [], [], [], [], []
    for delivery in accepted:
        jobs = jobs_by_marker.get(delivery_marker(f"{delivery.workflow}:{delivery.webhook_id}"), [])
        owned.update(job.external_id for job in jobs)
        if not jobs:
            lost.append(delivery.webhook_id)
        elif len(jobs) > 1:
            doubled.append(delivery.webhook_id)
        elif delivery.job_id is not None and jobs[0].external_id != delivery.job_id:
            wrong_id.append(delivery.webhook_id)
        job_id = delivery.job_id or (jobs[0].external_id if len(jobs) == 1 else None)  # queued: its job came later
        if job_id and not outcomes.get(job_id):
            silent.append(job_id)
        if job_id and len(outcomes.get(job_id, ())) > 1:
            twice.append(job_id)
        expected = OUTCOME_OF.get(delivery.kind)
        if expected and outcomes.get(job_id or "") not in (None, {expected}):
            wrong_outcome.append(job_id)
    replays = [d for d in deliveries if d.kind == "replay" and d.accepted]
    result.row("accepted (202, or 200 for a replay)", len(accepted))
    result.row("replays answered with the original job", sum(d.job_id == d.original.job_id for d in replays if d.original))
    for name, broken in (("accepted with no CARTO job (lost)", lost), ("accepted with more than one job (duplicated)", doubled),
                         ("accepted, told a job id that is not its job", wrong_id),
                         ("accepted jobs without a completion event", silent),
                         ("jobs with more than one distinct outcome", twice),
                         ("valid jobs not SUCCEEDED, failing jobs not FAILED", wrong_outcome)):
        result.row(name, len(broken))
        if broken:
            result.problems.append(f"{name}: {sorted(set(broken))[:5]}")
    return owned


def _refused(result: Reconciliation, deliveries: list[Delivery], jobs_by_marker: dict[str, list[Any]]) -> None:
    refused = [d for d in deliveries if d.final is not None and 400 <= d.final < 500 and d.original is None]
    with_job = [d.webhook_id for d in refused if jobs_by_marker.get(delivery_marker(f"{d.workflow}:{d.webhook_id}"))]
    result.row("refused with a 4xx (new webhook-ids)", len(refused))
    result.row("refused with a 4xx that has a CARTO job", len(with_job))
    if with_job:
        result.problems.append(f"refused deliveries with a job: {with_job[:5]}")


def _events(result: Reconciliation, events: list[dict[str, str]], outcomes: dict[str, set[str]]) -> None:
    result.row("completion events received (redeliveries included)", len(events))
    result.row("distinct completion events (ce-id)", len({e["ce-id"] for e in events}))
    for outcome, count in sorted(Counter(next(iter(o)) for o in outcomes.values() if len(o) == 1).items()):
        result.row(f"&nbsp;&nbsp;jobs {outcome}", count)
