"""What the ledger records and the contract every store keeps.

A delivery moves  claimed → submitted(job_id) → tracked → finished(outcome) → published, with
`queued` between claim and submission while CARTO cannot take the job now or its workflow is at
its cap or paused (gateway/ledger/slots.py holds the line of a capped workflow).
`claim` is an atomic create-if-absent keyed by (workflow, idempotency key); the stored body
fingerprint tells a replay from a conflict. `finish` is first-writer-wins, so a redelivered
tracking message can never publish a second, different outcome. Both stores
(gateway/ledger/sqlite.py, gateway/ledger/firestore.py) pass tests/test_ledger_contract.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from gateway.ledger.slots import Line, Rule

CLAIMED, QUEUED, SUBMITTED, TRACKED, FINISHED = "claimed", "queued", "submitted", "tracked", "finished"
STATES = (CLAIMED, QUEUED, SUBMITTED, TRACKED, FINISHED)
SUPERSEDED = "SUPERSEDED"  # the outcome of a waiting delivery a newer one replaced (when_busy: replace)


@dataclass(frozen=True)
class Delivery:
    """One ledger record. Never holds a secret: parameters are the mapped queryParameters."""

    key: str
    workflow: str
    idempotency_key: str
    fingerprint: str
    claim_token: str
    created_at: float
    expires_at: float
    state: str = CLAIMED
    updated_at: float = 0.0
    delivery_id: str | None = None
    trace: str | None = None
    connection: str = ""
    api_base_url: str = ""
    query: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    submitted_at: float | None = None
    deadline_at: float | None = None
    outcome: str | None = None
    carto_state: str | None = None
    error: dict[str, Any] | None = None
    checks: int = 0
    last_check_at: float | None = None
    finished_at: float | None = None
    published: bool = False
    tracked_at: float | None = None
    published_at: float | None = None
    rerun_of: str | None = None  # the key of the delivery this one re-runs (the console's re-run)
    actions: list[dict[str, Any]] = field(default_factory=list)  # operators' actions on it, oldest first
    result: dict[str, Any] | None = None  # the event's `result`, recorded with the outcome (gateway/results.py)
    # Admission (docs/architecture.md, "Admission"): a delivery accepted before it has a job.
    queued_at: float | None = None  # when it first waited; None: submitted inline
    queue_reason: str | None = None  # carto_unavailable | carto_slow | busy | paused
    hand_off_at: float | None = None  # when its next submit task is due; None while it waits for a slot
    attempts: int = 0  # submit attempts after acceptance: names the next submit task
    last_answer: dict[str, Any] | None = None  # CARTO's last answer while queued: {"status", "message"}
    unknown: bool = False  # a job POST whose outcome is unknown: find the job before posting again
    capped: bool = False  # it goes through its workflow's admission line (a cap, or paused)
    superseded_by: str | None = None  # outcome SUPERSEDED: the delivery that replaced it
    handed_to: list[str] = field(default_factory=list)  # keys its end handed a slot to
    # Each parameter's type and source ({"type", and "from", "header" or "value"}) as the workflow file stated
    # them when the delivery was mapped: a re-run refuses a file that now states another (None: not recorded).
    parameter_sources: dict[str, dict[str, Any]] | None = None

    @property
    def waiting(self) -> bool:
        """Queued for a slot of its workflow (no submit task due), rather than for CARTO."""
        return self.state == QUEUED and self.hand_off_at is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delivery:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class DeliveryQuery:
    """Which deliveries to list, newest first (by `created_at`, then key): the console's list.

    `after` is the cursor of the previous page: the (created_at, key) of its last record."""

    workflow: str | None = None
    outcome: str | None = None
    state: str | None = None
    since: float | None = None  # created_at >= since
    until: float | None = None  # created_at < until
    after: tuple[float, str] | None = None
    limit: int = 50


@dataclass(frozen=True)
class Claim:
    """The answer of `claim`: whether this caller created the record, and the record as it stands."""

    created: bool
    delivery: Delivery


@dataclass(frozen=True)
class Admitted:
    """The answer of `claim_admitted`: `claim` as for `claim`; `verdict` run (a slot: submit now), wait
    (recorded as queued) or busy (refused: nothing recorded); the waiting keys this arrival replaced
    (now finished SUPERSEDED, their events unpublished) and the older waiting keys it granted a slot."""

    created: bool
    delivery: Delivery
    verdict: str
    replaced: tuple[str, ...] = ()
    granted: tuple[str, ...] = ()


class Ledger(Protocol):
    """Where deliveries are recorded. Every method is atomic; none holds a secret."""

    def claim(self, delivery: Delivery) -> Claim: ...
    def get(self, key: str) -> Delivery | None: ...
    def find_job(self, job_id: str) -> Delivery | None: ...
    def release(self, key: str, claim_token: str) -> bool:
        """Delete a claim that got no job (its slot freed; call `refill` to hand it on)."""

    def take_over(self, key: str, claim_token: str, new_token: str, now: float) -> bool: ...
    def mark_submitted(self, key: str, claim_token: str, job_id: str, submitted_at: float,
                       deadline_at: float, now: float) -> bool: ...
    def mark_tracked(self, key: str, now: float) -> None: ...
    def finish(self, key: str, outcome: str, carto_state: str | None, error: dict[str, Any] | None,
               checks: int, finished_at: float, result: dict[str, Any] | None = None) -> Delivery:
        """Record the outcome (and the event's `result`, if any) unless one is recorded: first writer wins;
        a capped delivery's slot goes to the oldest waiting keys (`handed_to`)."""

    def note_checks(self, key: str, checks: int, last_check_at: float, next_check_at: float | None = None) -> None:
        """Record progress; `updated_at` moves to `next_check_at` (when given), so `stale` returns the record
        only once that check is overdue. Only forward: a count below the recorded one changes nothing (the next
        check's task may write its count before this one lands)."""

    def mark_published(self, key: str, now: float) -> None: ...
    def stale(self, updated_before: float, limit: int = 100) -> list[Delivery]: ...
    def purge_expired(self, now: float) -> int: ...
    def recent(self, query: DeliveryQuery) -> list[Delivery]: ...
    # Admission: each of these changes the delivery and its workflow's line in one transaction.
    def claim_admitted(self, delivery: Delivery, rule: Rule, now: float) -> Admitted:
        """`claim` through the workflow's line: a slot (claimed), a place (queued) or busy (nothing)."""

    def queue(self, key: str, claim_token: str, *, reason: str, hand_off_at: float, answer: dict[str, Any] | None,
              unknown: bool, now: float) -> bool:
        """A claimed delivery CARTO could not take now → queued, its next submit due at `hand_off_at`."""

    def dequeue(self, key: str, attempt: int, new_token: str, now: float) -> Delivery | None:
        """A queued delivery whose submit task `attempt` runs → claimed under `new_token` (None: not that task's)."""

    def reschedule(self, key: str, attempt: int, hand_off_at: float, now: float) -> Delivery | None:
        """A queued delivery whose hand-off `attempt` was lost → attempt + 1 due at `hand_off_at`."""

    def end_queued(self, key: str, outcome: str, error: dict[str, Any] | None, now: float, *,
                   claim_token: str | None = None) -> Delivery | None:
        """End a delivery that has no job (queued, or claimed under `claim_token`): finished with `outcome`,
        its slot or place handed on (`handed_to`). None when it is not in such a state."""

    def refill(self, workflow: str, rule: Rule, now: float) -> list[str]:
        """Take the file's rule, free the slots of keys whose record ended or vanished, grant free slots
        to the oldest waiting keys (their hand-off due now); the keys granted."""

    def line(self, workflow: str) -> Line | None: ...
    def find_delivery(self, delivery_id: str, limit: int = 20) -> list[Delivery]: ...
    def note_action(self, key: str, action: dict[str, Any]) -> bool: ...
    def close(self) -> None: ...
