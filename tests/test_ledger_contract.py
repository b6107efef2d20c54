"""One contract for every ledger store: SQLite and Firestore (on the real emulator) pass the same tests."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.errors import ConfigError, LedgerUnavailable
from gateway.ledger import CLAIMED, FINISHED, SUBMITTED, TRACKED, Delivery, DeliveryQuery, open_ledger
from gateway.ledger.firestore import FirestoreLedger, document_id
from tests.constants import PROJECT

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.stack)])
def ledger(request, tmp_path):
    """A fresh, empty ledger of each kind (a new file, or a new Firestore collection per test)."""
    if request.param == "sqlite":
        ledger = open_ledger(f"sqlite:///{tmp_path}/state/ledger.db")
    else:
        request.getfixturevalue("firestore_emulator")
        ledger = open_ledger(f"firestore://deliveries-{uuid.uuid4().hex}", project=PROJECT)
    yield ledger
    ledger.close()


def delivery(key: str = "store-clusters:evt-1", *, token: str = "token-a", at: float = T0, **fields) -> Delivery:
    workflow, _, idempotency_key = key.partition(":")
    return Delivery(key=key, workflow=workflow, idempotency_key=idempotency_key, fingerprint="f" * 64,
                    claim_token=token, created_at=at, updated_at=at, expires_at=at + 72 * 3600, **fields)


def submitted(ledger, key: str = "store-clusters:evt-1", *, job_id: str = "job-1", at: float = T0) -> Delivery:
    record = delivery(key, at=at)
    ledger.claim(record)
    assert ledger.mark_submitted(key, record.claim_token, job_id, at + 1, at + 3600, at + 1)
    return ledger.get(key)


# claim and get

def test_claim_of_a_new_key_creates_the_record(ledger):
    record = delivery()
    claim = ledger.claim(record)
    assert claim.created and claim.delivery == record
    assert ledger.get(record.key) == record


def test_claim_of_a_taken_key_returns_the_existing_record(ledger):
    first = delivery(token="token-a")
    ledger.claim(first)
    claim = ledger.claim(replace(first, claim_token="token-b", fingerprint="0" * 64))
    assert not claim.created
    assert claim.delivery == first


def test_get_of_an_unknown_key_is_none(ledger):
    assert ledger.get("store-clusters:nope") is None


def test_every_field_round_trips(ledger):
    record = delivery(
        state=FINISHED, delivery_id="msg_2Yh", trace="projects/p/traces/abc/1", connection="carto_dw",
        api_base_url="https://gcp-us-east1.api.carto.com", query="CALL `p.d.proc`(@a,@b,@c)",
        parameters={"a": 2, "b": 0.5, "c": "x", "d": [1, 2], "e": True, "f": None, "g": "{\"k\": [[1, 2]]}",
                    "big": 123456789012345678901234567890},
        job_id="job_42", submitted_at=T0 + 1.25, deadline_at=T0 + 21600.5, outcome="FAILED", carto_state="DONE",
        error={"reason": "invalidQuery", "location": "query", "message": "Cannot coerce @a to INT64 at [1:158]"},
        checks=7, last_check_at=T0 + 30.75, finished_at=T0 + 31.5, published=True,
        tracked_at=T0 + 1.5, published_at=T0 + 31.75, rerun_of="store-clusters:evt-0",
        actions=[{"action": "rerun", "by": "ops@example.com", "at": T0 + 40, "new_key": "store-clusters:x"}],
        parameter_sources={"a": {"type": "INT64", "from": "/a"}, "b": {"type": "FLOAT64", "header": "X-B"},
                           "c": {"type": "STRING", "value": "x"}})
    ledger.claim(record)
    assert ledger.get(record.key) == record


def test_defaults_and_none_values_round_trip(ledger):
    record = delivery()
    ledger.claim(record)
    stored = ledger.get(record.key)
    assert stored == record
    assert stored.parameters == {} and stored.error is None and stored.job_id is None and stored.published is False


def test_expires_at_round_trips_to_the_microsecond(ledger):
    record = replace(delivery(), expires_at=1_732_890_000.1234567)
    ledger.claim(record)
    assert ledger.get(record.key).expires_at == pytest.approx(record.expires_at, abs=1e-6)


def test_keys_with_separators_and_any_text_are_distinct_records(ledger):
    keys = ["w:a/b", "w:a%2Fb", "w:a:b", "w:ключ 🔑", "w:" + "x" * 2000, "w:."]
    for number, key in enumerate(keys):
        ledger.claim(delivery(key, token=f"t{number}"))
    assert [ledger.get(key).claim_token for key in keys] == [f"t{n}" for n in range(len(keys))]


# find_job

def test_find_job_returns_the_record_with_that_job(ledger):
    submitted(ledger, "w:one", job_id="job-1")
    submitted(ledger, "w:two", job_id="job-2")
    assert ledger.find_job("job-2").key == "w:two"


def test_find_job_of_an_unknown_job_is_none(ledger):
    submitted(ledger, "w:one", job_id="job-1")
    assert ledger.find_job("job-9") is None


# release

def test_release_with_the_claim_token_deletes_the_claim(ledger):
    record = delivery()
    ledger.claim(record)
    assert ledger.release(record.key, record.claim_token)
    assert ledger.get(record.key) is None


def test_release_with_another_token_keeps_the_claim(ledger):
    record = delivery()
    ledger.claim(record)
    assert not ledger.release(record.key, "someone-else")
    assert ledger.get(record.key) == record


def test_release_after_submission_keeps_the_record(ledger):
    record = submitted(ledger)
    assert not ledger.release(record.key, record.claim_token)
    assert ledger.get(record.key).state == SUBMITTED


def test_release_of_an_unknown_key_is_false(ledger):
    assert not ledger.release("w:nope", "token-a")


def test_a_released_key_can_be_claimed_again(ledger):
    record = delivery()
    ledger.claim(record)
    ledger.release(record.key, record.claim_token)
    assert ledger.claim(replace(record, claim_token="token-b")).created


# take_over

def test_take_over_swaps_the_token_and_touches_the_record(ledger):
    record = delivery()
    ledger.claim(record)
    assert ledger.take_over(record.key, record.claim_token, "token-b", T0 + 100)
    stored = ledger.get(record.key)
    assert (stored.claim_token, stored.updated_at, stored.state) == ("token-b", T0 + 100, CLAIMED)


def test_take_over_with_a_stale_token_fails(ledger):
    record = delivery()
    ledger.claim(record)
    ledger.take_over(record.key, record.claim_token, "token-b", T0 + 100)
    assert not ledger.take_over(record.key, record.claim_token, "token-c", T0 + 200)
    assert ledger.get(record.key).claim_token == "token-b"


def test_take_over_after_submission_fails(ledger):
    record = submitted(ledger)
    assert not ledger.take_over(record.key, record.claim_token, "token-b", T0 + 100)


# mark_submitted

def test_mark_submitted_records_the_job(ledger):
    record = delivery()
    ledger.claim(record)
    assert ledger.mark_submitted(record.key, record.claim_token, "job-1", T0 + 1, T0 + 3600, T0 + 2)
    stored = ledger.get(record.key)
    assert (stored.state, stored.job_id, stored.submitted_at, stored.deadline_at, stored.updated_at) == (
        SUBMITTED, "job-1", T0 + 1, T0 + 3600, T0 + 2)


def test_mark_submitted_with_a_taken_over_token_fails(ledger):
    record = delivery()
    ledger.claim(record)
    ledger.take_over(record.key, record.claim_token, "token-b", T0 + 100)
    assert not ledger.mark_submitted(record.key, record.claim_token, "job-1", T0 + 1, T0 + 3600, T0 + 101)
    assert ledger.get(record.key).job_id is None


def test_mark_submitted_a_second_time_fails_and_keeps_the_first_job(ledger):
    record = submitted(ledger, job_id="job-1")
    assert not ledger.mark_submitted(record.key, record.claim_token, "job-2", T0 + 5, T0 + 3600, T0 + 5)
    assert ledger.get(record.key).job_id == "job-1"


def test_mark_submitted_of_an_unknown_key_is_false(ledger):
    assert not ledger.mark_submitted("w:nope", "token-a", "job-1", T0, T0 + 1, T0)


# mark_tracked and note_checks

def test_mark_tracked_moves_a_submitted_record_to_tracked(ledger):
    record = submitted(ledger)
    ledger.mark_tracked(record.key, T0 + 10)
    stored = ledger.get(record.key)
    assert (stored.state, stored.updated_at) == (TRACKED, T0 + 10)


def test_mark_tracked_leaves_a_claimed_record_claimed(ledger):
    record = delivery()
    ledger.claim(record)
    ledger.mark_tracked(record.key, T0 + 10)
    assert ledger.get(record.key) == record


def test_mark_tracked_after_finish_keeps_it_finished(ledger):
    record = submitted(ledger)
    ledger.finish(record.key, "SUCCEEDED", "DONE", None, 3, T0 + 20)
    ledger.mark_tracked(record.key, T0 + 30)
    assert ledger.get(record.key).state == FINISHED


def test_note_checks_records_progress(ledger):
    record = submitted(ledger)
    ledger.note_checks(record.key, 4, T0 + 40)
    stored = ledger.get(record.key)
    assert (stored.checks, stored.last_check_at, stored.updated_at) == (4, T0 + 40, T0 + 40)


def test_note_checks_with_the_next_check_moves_updated_at_there_so_stale_waits_for_it(ledger):
    record = submitted(ledger)
    ledger.note_checks(record.key, 9, T0 + 40, next_check_at=T0 + 90)
    stored = ledger.get(record.key)
    assert (stored.checks, stored.last_check_at, stored.updated_at) == (9, T0 + 40, T0 + 90)
    assert record.key not in [d.key for d in ledger.stale(T0 + 89)]
    assert record.key in [d.key for d in ledger.stale(T0 + 91)]


def test_note_checks_never_moves_the_count_back(ledger):
    # The next check's task is scheduled before this invocation's count is written: it may land first.
    record = submitted(ledger)
    ledger.note_checks(record.key, 5, T0 + 50, next_check_at=T0 + 70)
    ledger.note_checks(record.key, 4, T0 + 40, next_check_at=T0 + 50)
    stored = ledger.get(record.key)
    assert (stored.checks, stored.last_check_at, stored.updated_at) == (5, T0 + 50, T0 + 70)
    ledger.note_checks(record.key, 5, T0 + 55, next_check_at=T0 + 75)  # the same count again (a resume): taken
    assert ledger.get(record.key).updated_at == T0 + 75


def test_note_checks_after_finish_changes_nothing(ledger):
    record = submitted(ledger)
    final = ledger.finish(record.key, "SUCCEEDED", "DONE", None, 3, T0 + 20)
    ledger.note_checks(record.key, 9, T0 + 90)
    assert ledger.get(record.key) == final


def test_updates_of_an_unknown_key_create_nothing(ledger):
    ledger.mark_tracked("w:nope", T0)
    ledger.note_checks("w:nope", 1, T0)
    ledger.mark_published("w:nope", T0)
    assert ledger.get("w:nope") is None


# finish and mark_published

def test_finish_records_the_outcome_and_returns_the_record(ledger):
    record = submitted(ledger)
    error = {"reason": "invalidQuery", "location": "query", "message": "Query error"}
    final = ledger.finish(record.key, "FAILED", "DONE", error, 5, T0 + 50)
    assert (final.state, final.outcome, final.carto_state, final.error, final.checks, final.finished_at,
            final.updated_at) == (FINISHED, "FAILED", "DONE", error, 5, T0 + 50, T0 + 50)
    assert ledger.get(record.key) == final


def test_the_result_is_recorded_with_the_outcome_and_reads_back_in_its_key_order(ledger):
    record = submitted(ledger)
    result = {"table": "p.d.t", "rows": [{"z": 1, "a": [[1, 2], {"y": None, "b": 0.1}]}],
              "schema": [{"name": "z", "type": "INT64"}, {"name": "a", "type": "JSON"}], "truncated": True}

    ledger.finish(record.key, "SUCCEEDED", "DONE", None, 2, T0 + 9, result=result)
    again = ledger.finish(record.key, "SUCCEEDED", "DONE", None, 3, T0 + 10, result={"table": "other", "error": {}})

    stored = ledger.get(record.key)
    assert stored.result == result and again.result == result  # first writer wins, rows included
    assert json.dumps(stored.result) == json.dumps(result)  # the same bytes when the event is built again


def test_a_second_finish_returns_the_first_outcome(ledger):
    record = submitted(ledger)
    first = ledger.finish(record.key, "SUCCEEDED", "DONE", None, 3, T0 + 20)
    second = ledger.finish(record.key, "TIMED_OUT", "RUNNING", {"message": "late"}, 9, T0 + 99)
    assert second == first
    assert ledger.get(record.key).outcome == "SUCCEEDED"


def test_finish_of_an_unknown_key_raises_ledger_unavailable(ledger):
    with pytest.raises(LedgerUnavailable):
        ledger.finish("w:nope", "SUCCEEDED", "DONE", None, 1, T0)


def test_mark_published_sets_the_flag(ledger):
    record = submitted(ledger)
    ledger.finish(record.key, "SUCCEEDED", "DONE", None, 3, T0 + 20)
    ledger.mark_published(record.key, T0 + 21)
    stored = ledger.get(record.key)
    assert (stored.published, stored.updated_at, stored.outcome) == (True, T0 + 21, "SUCCEEDED")


# stale

def test_stale_lists_records_not_updated_since_oldest_first(ledger):
    for key, at in [("w:b", T0 + 20), ("w:a", T0 + 10), ("w:c", T0 + 30), ("w:new", T0 + 100)]:
        ledger.claim(delivery(key, at=at))
    assert [d.key for d in ledger.stale(T0 + 50)] == ["w:a", "w:b", "w:c"]


def test_stale_honours_the_limit(ledger):
    for n in range(5):
        ledger.claim(delivery(f"w:{n}", at=T0 + n))
    assert [d.key for d in ledger.stale(T0 + 50, limit=2)] == ["w:0", "w:1"]


def test_stale_excludes_finished_and_published_records_only(ledger):
    for key in ("w:published", "w:unpublished", "w:tracked"):
        submitted(ledger, key, job_id=key)
    ledger.mark_tracked("w:tracked", T0 + 2)
    for key in ("w:published", "w:unpublished"):
        ledger.finish(key, "SUCCEEDED", "DONE", None, 1, T0 + 3)
    ledger.mark_published("w:published", T0 + 4)
    assert sorted(d.key for d in ledger.stale(T0 + 50)) == ["w:tracked", "w:unpublished"]


def test_stale_excludes_records_updated_since(ledger):
    record = submitted(ledger)
    ledger.mark_tracked(record.key, T0 + 60)
    assert ledger.stale(T0 + 50) == []


def test_stale_returns_whole_records(ledger):
    record = submitted(ledger)
    assert ledger.stale(T0 + 50) == [record]


# tracked_at and published_at: when each step first happened (the console's timeline)

def test_mark_tracked_records_when_it_was_first_tracked(ledger):
    record = submitted(ledger)
    ledger.mark_tracked(record.key, T0 + 10)
    ledger.mark_tracked(record.key, T0 + 70)  # a re-drive refreshes the record, not the time it was tracked
    stored = ledger.get(record.key)
    assert (stored.tracked_at, stored.updated_at) == (T0 + 10, T0 + 70)


def test_mark_published_records_when_it_was_first_published(ledger):
    record = submitted(ledger)
    ledger.finish(record.key, "SUCCEEDED", "DONE", None, 3, T0 + 20)
    ledger.mark_published(record.key, T0 + 21)
    ledger.mark_published(record.key, T0 + 99)
    assert ledger.get(record.key).published_at == T0 + 21


# recent, find_delivery, note_action: what the console reads and writes

def several(ledger) -> list[Delivery]:
    """Six deliveries of two workflows, one a second apart (w:0 oldest), in several states and outcomes."""
    made = []
    for n in range(6):
        workflow = "alpha" if n % 2 == 0 else "beta"
        key = f"{workflow}:evt-{n}"
        record = delivery(key, at=T0 + n, delivery_id=f"msg_{n}")
        ledger.claim(record)
        if n >= 2:
            ledger.mark_submitted(key, record.claim_token, f"job-{n}", T0 + n + 0.5, T0 + 3600, T0 + n + 0.5)
        if n >= 4:
            ledger.finish(key, "SUCCEEDED" if n == 4 else "FAILED", "DONE", None, 2, T0 + n + 0.75)
        made.append(ledger.get(key))
    return made


def test_recent_lists_newest_first(ledger):
    made = several(ledger)
    assert ledger.recent(DeliveryQuery()) == made[::-1]


@pytest.mark.parametrize(("query", "expected"), [
    (DeliveryQuery(workflow="alpha"), ["alpha:evt-4", "alpha:evt-2", "alpha:evt-0"]),
    (DeliveryQuery(outcome="FAILED"), ["beta:evt-5"]),
    (DeliveryQuery(state=SUBMITTED), ["beta:evt-3", "alpha:evt-2"]),
    (DeliveryQuery(state=CLAIMED, workflow="beta"), ["beta:evt-1"]),
    (DeliveryQuery(workflow="alpha", outcome="SUCCEEDED", state=FINISHED), ["alpha:evt-4"]),
    (DeliveryQuery(since=T0 + 2, until=T0 + 4), ["beta:evt-3", "alpha:evt-2"]),
    (DeliveryQuery(workflow="beta", since=T0 + 3), ["beta:evt-5", "beta:evt-3"]),
    (DeliveryQuery(workflow="gamma"), []),
], ids=["workflow", "outcome", "state", "state+workflow", "all three", "time range", "workflow+since", "none"])
def test_recent_filters(ledger, query, expected):
    several(ledger)
    assert [d.key for d in ledger.recent(query)] == expected


def test_recent_pages_through_every_record_once_with_its_cursor(ledger):
    several(ledger)
    for n in range(3):  # records that share a creation time are still each listed once
        ledger.claim(delivery(f"alpha:same-{n}", at=T0 + 2))
    seen, after = [], None
    while True:
        page = ledger.recent(DeliveryQuery(limit=4, after=after))
        if not page:
            break
        seen.extend(page)
        after = (page[-1].created_at, page[-1].key)
    assert len(seen) == 9 and len({d.key for d in seen}) == 9
    assert [d.created_at for d in seen] == sorted((d.created_at for d in seen), reverse=True)


def test_recent_honours_the_limit(ledger):
    made = several(ledger)
    assert ledger.recent(DeliveryQuery(limit=2)) == made[:-3:-1]


def test_find_delivery_finds_every_record_with_that_delivery_id(ledger):
    several(ledger)
    ledger.claim(delivery("beta:evt-again", at=T0 + 9, delivery_id="msg_1"))
    assert [d.key for d in ledger.find_delivery("msg_1")] == ["beta:evt-again", "beta:evt-1"]
    assert ledger.find_delivery("msg_nope") == []


def test_note_action_appends_to_the_record(ledger):
    record = submitted(ledger)
    first = {"action": "cancel", "by": "ops@example.com", "at": T0 + 5}
    second = {"action": "rerun", "by": "local operator", "at": T0 + 6, "new_key": "store-clusters:evt-1:rerun-1"}
    assert ledger.note_action(record.key, first)
    assert ledger.note_action(record.key, second)
    stored = ledger.get(record.key)
    assert stored.actions == [first, second]
    assert (stored.state, stored.job_id) == (SUBMITTED, "job-1")


def test_note_action_of_an_unknown_key_is_false(ledger):
    assert not ledger.note_action("w:nope", {"action": "cancel"})
    assert ledger.get("w:nope") is None


def test_a_ledger_file_from_before_the_console_gains_its_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SQLITE_SCHEMA)
    db.execute("INSERT INTO deliveries (key, workflow, idempotency_key, fingerprint, claim_token, created_at, "
               "expires_at, state, updated_at) VALUES ('w:old', 'w', 'old', 'f', 't', 1, 2, 'claimed', 1)")
    db.commit()
    db.close()
    ledger = open_ledger(f"sqlite:///{path}")
    old = ledger.get("w:old")
    assert (old.actions, old.tracked_at, old.rerun_of, old.parameter_sources) == ([], None, None, None)
    assert ledger.note_action("w:old", {"action": "cancel"})
    assert ledger.get("w:old").actions == [{"action": "cancel"}]


OLD_SQLITE_SCHEMA = """
CREATE TABLE deliveries (
    key TEXT PRIMARY KEY, workflow TEXT NOT NULL, idempotency_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    claim_token TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL,
    updated_at REAL NOT NULL, delivery_id TEXT, trace TEXT, connection TEXT, api_base_url TEXT, query TEXT,
    parameters TEXT, job_id TEXT, submitted_at REAL, deadline_at REAL, outcome TEXT, carto_state TEXT,
    error TEXT, checks INTEGER NOT NULL DEFAULT 0, last_check_at REAL, finished_at REAL, published INTEGER NOT NULL DEFAULT 0
);
"""


# What only the Firestore ledger has: its URL, its document layout and its TTL field.

def test_firestore_url_names_the_collection_and_database():
    ledger = FirestoreLedger.from_url("firestore://deliveries?database=gateway-ledger", project="p")
    assert (ledger.collection, ledger.database, ledger.project) == ("deliveries", "gateway-ledger", "p")


def test_firestore_url_without_database_uses_the_default_database():
    assert FirestoreLedger.from_url("firestore://deliveries").database is None


@pytest.mark.parametrize("url", ["firestore://", "firestore://a/b", "firestore://__x__",
                                 "firestore://deliveries?db=x", "firestore://deliveries?database=Bad_Name"])
def test_a_bad_firestore_url_is_a_config_error(url):
    with pytest.raises(ConfigError):
        FirestoreLedger.from_url(url)


def test_firestore_document_id_is_the_sha256_of_the_key():
    assert document_id("w:a/b") == hashlib.sha256(b"w:a/b").hexdigest()


@pytest.fixture
def firestore_ledger(firestore_emulator):
    ledger = FirestoreLedger(f"deliveries-{uuid.uuid4().hex}", project=PROJECT)
    yield ledger
    ledger.close()


def raw_document(ledger: FirestoreLedger, key: str) -> dict:
    from google.cloud import firestore

    client = firestore.Client(project=PROJECT)  # a second client: what is really stored
    return client.collection(ledger.collection).document(document_id(key)).get().to_dict()


def test_firestore_stores_the_key_and_a_timestamp_ttl_field(firestore_ledger):
    record = delivery("w:a/b")
    firestore_ledger.claim(record)
    doc = raw_document(firestore_ledger, record.key)
    assert doc["key"] == "w:a/b"
    assert doc["expires_at"] == datetime.fromtimestamp(record.expires_at, tz=UTC)


def test_firestore_drops_the_sweep_field_once_finished_and_published(firestore_ledger):
    record = submitted(firestore_ledger)
    firestore_ledger.finish(record.key, "SUCCEEDED", "DONE", None, 1, T0 + 3)
    firestore_ledger.mark_published(record.key, T0 + 4)
    assert "sweep_at" not in raw_document(firestore_ledger, record.key)


def test_firestore_unreachable_raises_ledger_unavailable(monkeypatch):
    from gateway.local.emulators import free_port

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    ledger = FirestoreLedger("deliveries", project=PROJECT, timeout_s=0.5)
    with pytest.raises(LedgerUnavailable):
        ledger.claim(delivery())
