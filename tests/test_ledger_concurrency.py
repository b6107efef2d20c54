"""Racing claims and final transitions: one winner, however many threads or instances (docs/architecture.md, "Invariants")."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.errors import LedgerUnavailable
from gateway.ledger import Delivery
from gateway.ledger.firestore import FirestoreLedger
from gateway.ledger.sqlite import SqliteLedger
from tests.constants import PROJECT

T0 = 1_700_000_000.0
RACERS = 50


def delivery(token: str, key: str = "store-clusters:evt-1") -> Delivery:
    return Delivery(key=key, workflow="store-clusters", idempotency_key="evt-1", fingerprint="f" * 64,
                    claim_token=token, created_at=T0, updated_at=T0, expires_at=T0 + 72 * 3600)


def race(ledgers: list, action: Callable, count: int = RACERS) -> list:
    """Run `action(ledger, n)` from `count` threads released together, spread over the ledgers."""
    barrier = threading.Barrier(count)

    def run(n: int):
        barrier.wait()
        return action(ledgers[n % len(ledgers)], n)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def sqlite_ledgers(tmp_path, instances: int) -> list[SqliteLedger]:
    return [SqliteLedger(tmp_path / "ledger.db") for _ in range(instances)]


def firestore_ledgers(collection: str, instances: int) -> list[FirestoreLedger]:
    return [FirestoreLedger(collection, project=PROJECT) for _ in range(instances)]


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.stack)])
def make_ledgers(request, tmp_path):
    """Builds N ledger instances over one store (one file, or one collection through N clients)."""
    if request.param == "firestore":
        request.getfixturevalue("firestore_emulator")
    collection = f"deliveries-{uuid.uuid4().hex}"
    built: list = []

    def make(instances: int) -> list:
        ledgers = (sqlite_ledgers(tmp_path, instances) if request.param == "sqlite"
                   else firestore_ledgers(collection, instances))
        built.extend(ledgers)
        return ledgers

    yield make
    for ledger in built:
        ledger.close()


def claim(ledger, n: int):
    return ledger.claim(delivery(f"token-{n}"))


def test_fifty_threads_claiming_one_key_create_it_once(make_ledgers):
    claims = race(make_ledgers(1), claim)
    winners = [c.delivery.claim_token for c in claims if c.created]
    assert len(winners) == 1
    assert {c.delivery.claim_token for c in claims} == set(winners)


def test_two_instances_claiming_one_key_create_it_once(make_ledgers):
    ledgers = make_ledgers(2)
    claims = race(ledgers, claim)
    winners = [c.delivery.claim_token for c in claims if c.created]
    assert len(winners) == 1
    assert [ledger.get(delivery("x").key).claim_token for ledger in ledgers] == winners * 2


def test_racing_finishes_all_see_the_first_outcome(make_ledgers):
    ledgers = make_ledgers(2)
    ledgers[0].claim(delivery("token-0"))
    outcomes = ["SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"]
    finals = race(ledgers, lambda ledger, n: ledger.finish(delivery("x").key, outcomes[n % 4], "DONE", None, n,
                                                           T0 + n), count=8)
    assert len({(f.outcome, f.checks) for f in finals}) == 1


def test_racing_take_overs_let_one_instance_win(make_ledgers):
    ledgers = make_ledgers(2)
    ledgers[0].claim(delivery("token-0"))
    won = race(ledgers, lambda ledger, n: ledger.take_over(delivery("x").key, "token-0", f"new-{n}", T0 + 90),
               count=8)
    assert won.count(True) == 1


def test_a_sqlite_file_locked_by_another_writer_raises_ledger_unavailable(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.db", busy_timeout_s=0.05)
    other = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(LedgerUnavailable):
            ledger.claim(delivery("token-a"))
    finally:
        other.execute("ROLLBACK")
        other.close()
        ledger.close()


def test_a_sqlite_ledger_recovers_once_the_lock_is_gone(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.db", busy_timeout_s=0.05)
    other = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(LedgerUnavailable):
        ledger.claim(delivery("token-a"))
    other.execute("ROLLBACK")
    other.close()
    assert ledger.claim(delivery("token-a")).created
    ledger.close()
