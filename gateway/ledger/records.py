"""What the ledger records and the contract every store keeps.

A delivery moves  claimed → submitted(job_id) → tracked → finished(outcome) → published.
`claim` is an atomic create-if-absent keyed by (workflow, idempotency key); the stored body
fingerprint tells a replay from a conflict. `finish` is first-writer-wins, so a redelivered
tracking message can never publish a second, different outcome. Both stores
(gateway/ledger/sqlite.py, gateway/ledger/firestore.py) pass tests/test_ledger_contract.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

CLAIMED, SUBMITTED, TRACKED, FINISHED = "claimed", "submitted", "tracked", "finished"
STATES = (CLAIMED, SUBMITTED, TRACKED, FINISHED)


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


class Ledger(Protocol):
    """Where deliveries are recorded. Every method is atomic; none holds a secret."""

    def claim(self, delivery: Delivery) -> Claim: ...
    def get(self, key: str) -> Delivery | None: ...
    def find_job(self, job_id: str) -> Delivery | None: ...
    def release(self, key: str, claim_token: str) -> bool: ...
    def take_over(self, key: str, claim_token: str, new_token: str, now: float) -> bool: ...
    def mark_submitted(self, key: str, claim_token: str, job_id: str, submitted_at: float,
                       deadline_at: float, now: float) -> bool: ...
    def mark_tracked(self, key: str, now: float) -> None: ...
    def finish(self, key: str, outcome: str, carto_state: str | None, error: dict[str, Any] | None,
               checks: int, finished_at: float, result: dict[str, Any] | None = None) -> Delivery:
        """Record the outcome (and the event's `result`, if any) unless one is recorded: first writer wins."""
    def note_checks(self, key: str, checks: int, last_check_at: float, next_check_at: float | None = None) -> None:
        """Record progress; `updated_at` moves to `next_check_at` (when given), so `stale` returns the record
        only once that check is overdue."""

    def mark_published(self, key: str, now: float) -> None: ...
    def stale(self, updated_before: float, limit: int = 100) -> list[Delivery]: ...
    def purge_expired(self, now: float) -> int: ...
    def recent(self, query: DeliveryQuery) -> list[Delivery]: ...
    def find_delivery(self, delivery_id: str, limit: int = 20) -> list[Delivery]: ...
    def note_action(self, key: str, action: dict[str, Any]) -> bool: ...
    def close(self) -> None: ...
