"""The delivery ledger in Firestore: the contract of `SqliteLedger` for the cloud (docs/architecture.md, "Invariants").

One document per delivery in one collection. The document id is the sha256 hex of
`Delivery.key` (keys hold ':' and arbitrary sender text, and document ids may not hold '/'
nor exceed 1500 bytes); the key itself is the field `key`.

- `claim` is `DocumentReference.create()`: Firestore's atomic create-if-absent.
- Every conditional change (release, take_over, mark_submitted, finish, …) is one write guarded by
  a precondition on the document's update time
  (https://cloud.google.com/firestore/docs/reference/rpc/google.firestore.v1#precondition): the
  condition is checked on the record as it stood at that update time, and the write fails if
  anything wrote the document since, so it cannot interleave with another instance. The instance
  remembers the record and update time of every document it created, wrote or read (a bounded
  cache), so the change that follows its own write or read — the job id after the claim, `tracked`
  after the job id, the outcome after the poll's read — is one RPC, not a transaction's begin, read
  and commit. A failed precondition (someone else wrote) reads the record again and decides anew.
- One document's calls (create, get, the guarded update and delete) go over Firestore's REST API
  (gateway/ledger/firestore_rest.py): 0.37 ms of CPU per write here against 0.6 ms through
  google-cloud-firestore, and no 0.35 s import of that library (grpc, protobuf) on the first request
  of a new instance. The queries (`find_job`, `stale`, `recent`, `find_delivery`) use the library's
  client, built on first use: the console and the sweeper, never a webhook's path.
- `parameters` and `error` are stored as JSON text, as in SQLite: Firestore cannot hold arrays
  of arrays nor integers beyond int64 (NUMERIC values), and the text round-trips exactly.
- `expires_at` is a timestamp so a TTL policy deletes records after the retention window
  (https://cloud.google.com/firestore/docs/ttl); it round-trips to the microsecond. TTL deletes
  within about a day after expiry, not at it: nothing here relies on the moment of deletion.
- `sweep_at` mirrors `updated_at` while a record still needs the sweeper and is removed once it
  is finished and published. A query on a field only sees documents that have it, so `stale`
  is one single-field range query: no composite index, and finished records cost no reads.

Indexes for production (the emulator needs none): the automatic single-field indexes serve
`job_id` (find_job), `sweep_at` (stale), `delivery_id` (find_delivery) and `created_at` (the
console's unfiltered list). The console's filtered list (`recent`: equality on some of
`workflow`, `outcome`, `state`, newest first by `created_at`, then document id) needs one composite
index per combination of those equality fields, each followed by `created_at` descending:
`CONSOLE_INDEXES` below; deploy/deploy.sh creates them.
Exempt the rest from indexing — the other timestamps because an indexed field whose values only
grow limits writes to the collection to about 500 per second (`expires_at` below; deploy/deploy.sh
also exempts `updated_at`, `submitted_at`, `deadline_at`, `last_check_at`, `finished_at`), and
`parameters`, `query` and `error` because they are large:

    {"indexes": [], "fieldOverrides": [
      {"collectionGroup": "deliveries", "fieldPath": "expires_at", "ttl": true, "indexes": []},
      {"collectionGroup": "deliveries", "fieldPath": "parameters", "indexes": []},
      {"collectionGroup": "deliveries", "fieldPath": "query", "indexes": []},
      {"collectionGroup": "deliveries", "fieldPath": "error", "indexes": []}]}

or `gcloud firestore fields ttls update expires_at --collection-group=deliveries --enable-ttl`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import gateway.ledger.firestore_rest as rest
import gateway.ledger.moves as moves
from gateway.errors import ConfigError, LedgerUnavailable
from gateway.ledger.moves import Workspace
from gateway.ledger.records import CLAIMED, FINISHED, SUBMITTED, TRACKED, Admitted, Claim, Delivery, DeliveryQuery
from gateway.ledger.slots import Line, Rule

if TYPE_CHECKING:
    from google.cloud import firestore

T = TypeVar("T")
_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DATABASE = re.compile(r"\(default\)|[a-z][a-z0-9-]{3,62}")
# JSON text: key order kept
_JSON_FIELDS = {"parameters", "error", "actions", "result", "last_answer", "handed_to", "parameter_sources"}
_LINES_SUFFIX = "-admission"  # the collection of the workflows' admission lines, beside the deliveries
_FILTERS = ("workflow", "outcome", "state")
# The composite indexes `recent` needs: each non-empty combination of equality filters (in this
# order), then created_at descending. deploy/deploy.sh keeps its list equal to this one
# (tests/test_deploy.py checks).
CONSOLE_INDEXES = tuple(
    tuple(f for n, f in enumerate(_FILTERS) if mask >> n & 1) + ("created_at",) for mask in range(1, 2 ** len(_FILTERS)))
_SWEEP_AT = "sweep_at"
_CLAIM_ATTEMPTS = 3
_STRIPES = 64
_WRITE_ATTEMPTS = 10  # guarded writes that lost to another writer, each after a fresh read
_MOVE_ATTEMPTS = 50  # optimistic admission moves that lost to another writer, each on fresh reads
_KNOWN = 4096  # records remembered with their update time (a few MiB at most)



class FirestoreLedger:
    """The cloud ledger: one Firestore document per delivery, same semantics as SqliteLedger."""

    def __init__(self, collection: str, *, project: str | None = None, database: str | None = None,
                 timeout_s: float = 10.0):
        if not _COLLECTION.fullmatch(collection) or collection.startswith("__"):
            raise ConfigError(f"invalid Firestore collection name {collection!r}")
        if database is not None and not _DATABASE.fullmatch(database):
            raise ConfigError(f"invalid Firestore database name {database!r}")
        self.collection, self.project, self.database = collection, project, database
        self.timeout_s = timeout_s
        self._call: dict[str, Any] = {}  # the client library's retry and timeout, set with the client
        self._client: firestore.Client | None = None
        self._documents: rest.DocumentsRest | None = None
        self._lock = threading.Lock()
        # Transactions on one document contend: Firestore aborts and retries the losers (the emulator
        # even waits out a lock timeout per conflict), so the threads of one instance queue here first.
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        # key -> (record, update time) as this instance last wrote or read it.
        self._known: OrderedDict[str, tuple[Delivery, Any]] = OrderedDict()
        self._known_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, project: str | None = None) -> FirestoreLedger:
        """`firestore://collection` or `firestore://collection?database=name` (GATEWAY_LEDGER)."""
        parts = urlsplit(url)
        options = parse_qs(parts.query, keep_blank_values=True)
        if parts.scheme != "firestore" or parts.path not in ("", "/") or set(options) - {"database"}:
            raise ConfigError(f"GATEWAY_LEDGER must be firestore://COLLECTION[?database=NAME], got {url!r}")
        database = options["database"][-1] if "database" in options else None
        return cls(parts.netloc, project=project, database=database)

    @property
    def client(self) -> firestore.Client:
        """The client library's Firestore client (queries), built once on first use; it honours
        FIRESTORE_EMULATOR_HOST itself."""
        with self._lock:
            if self._client is None:
                from google.api_core import retry as api_retry
                from google.cloud import firestore

                # Queries are safe to retry; the whole call, retries included, stays within timeout_s.
                retried = api_retry.if_exception_type(*_library_errors()[:4])
                retry = api_retry.Retry(predicate=retried, initial=0.1, maximum=1.0, multiplier=2.0,
                                        timeout=self.timeout_s)
                self._call = {"retry": retry, "timeout": self.timeout_s}
                self._client = firestore.Client(project=self.project, database=self.database)
            return self._client

    @property
    def documents(self) -> rest.DocumentsRest:
        """One document's calls over REST, built once on first use."""
        with self._lock:
            if self._documents is None:
                self._documents = rest.DocumentsRest(self._project(), self.database, self.collection,
                                                     timeout_s=self.timeout_s)
            return self._documents

    def _project(self) -> str:
        project = self.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
        if not project:
            import google.auth

            try:
                project = google.auth.default()[1]
            except Exception as exc:
                raise ConfigError(f"no Google Cloud project for the Firestore ledger ({type(exc).__name__})") from None
        if not project:
            raise ConfigError("no Google Cloud project for the Firestore ledger: set GOOGLE_CLOUD_PROJECT")
        return project

    def _ref(self, key: str) -> firestore.DocumentReference:
        return self.client.collection(self.collection).document(document_id(key))

    def claim(self, delivery: Delivery) -> Claim:
        stored = replace(delivery, updated_at=delivery.created_at)
        for _ in range(_CLAIM_ATTEMPTS):
            with _unavailable():
                try:
                    self._remember(stored, self.documents.create(document_id(delivery.key), _to_doc(stored)))
                    return Claim(True, stored)
                except rest.AlreadyExists:
                    existing = self.get(delivery.key)
            if existing is not None:
                # Our own create, retried after its answer was lost, finds itself: still ours.
                return Claim(existing.claim_token == delivery.claim_token, existing)
        raise LedgerUnavailable("the ledger record kept vanishing while being claimed")

    def get(self, key: str) -> Delivery | None:
        return self._read(key)[0]

    def _read(self, key: str) -> tuple[Delivery | None, Any]:
        """The record as stored now and its update time (remembered for the next guarded write)."""
        with _unavailable():
            found = self.documents.get(document_id(key))
        if found is None:
            self._forget(key)
            return None, None
        record = _from_doc(found[0])
        self._remember(record, found[1])
        return record, found[1]

    def _remember(self, record: Delivery, update_time: Any) -> None:
        with self._known_lock:
            self._known[record.key] = (record, update_time)
            self._known.move_to_end(record.key)
            if len(self._known) > _KNOWN:
                self._known.popitem(last=False)

    def _forget(self, key: str) -> None:
        with self._known_lock:
            self._known.pop(key, None)

    def _recall(self, key: str) -> tuple[Delivery, Any] | None:
        with self._known_lock:
            return self._known.get(key)

    def find_job(self, job_id: str) -> Delivery | None:
        query = self.client.collection(self.collection).where(filter=_filter("job_id", "==", job_id)).limit(1)
        with _unavailable():
            found = [s.to_dict() for s in query.stream(**self._call)]
        return _from_doc(found[0]) if found else None

    def release(self, key: str, claim_token: str) -> bool:
        record, released = self._guarded(key, lambda d: _holds(d, claim_token) and not d.capped, None)
        if not released and record is not None and record.capped and _holds(record, claim_token):
            return self._move(record.workflow, lambda ws: moves.release(ws, key, claim_token))  # its slot with it
        return released

    def take_over(self, key: str, claim_token: str, new_token: str, now: float) -> bool:
        return self._update(key, lambda d: _holds(d, claim_token), claim_token=new_token, updated_at=now)[1]

    def mark_submitted(self, key: str, claim_token: str, job_id: str, submitted_at: float,
                       deadline_at: float, now: float) -> bool:
        return self._update(key, lambda d: _holds(d, claim_token), state=SUBMITTED, job_id=job_id,
                            submitted_at=submitted_at, deadline_at=deadline_at, updated_at=now,
                            hand_off_at=None, unknown=False)[1]

    def purge_expired(self, now: float) -> int:
        """Nothing to do: Firestore's TTL policy on `expires_at` deletes expired records."""
        return 0

    def mark_tracked(self, key: str, now: float) -> None:
        # Also refreshes a tracked record, so a re-drive by the sweeper is not repeated every sweep.
        self._update_with(key, lambda d: d.state in (SUBMITTED, TRACKED),
                          lambda d: {"state": TRACKED, "updated_at": now, "tracked_at": d.tracked_at or now})

    def finish(self, key: str, outcome: str, carto_state: str | None, error: dict[str, Any] | None,
               checks: int, finished_at: float, result: dict[str, Any] | None = None) -> Delivery:
        # First writer wins: a redelivered tracking message gets the outcome already recorded.
        record, _ = self._update(key, lambda d: d.outcome is None and not d.capped, state=FINISHED, outcome=outcome,
                                 carto_state=carto_state, error=error, checks=checks,
                                 finished_at=finished_at, updated_at=finished_at, result=result)
        if record is not None and record.capped and record.outcome is None:  # its slot is handed on with it
            record = self._move(record.workflow, lambda ws: moves.finish(ws, key, outcome, carto_state, error,
                                                                          checks, finished_at, result))
        if record is None:
            raise LedgerUnavailable(f"ledger record {key} vanished")
        return record

    def note_checks(self, key: str, checks: int, last_check_at: float, next_check_at: float | None = None) -> None:
        self._update(key, lambda d: d.outcome is None and d.checks <= checks, checks=checks, last_check_at=last_check_at,
                     updated_at=last_check_at if next_check_at is None else next_check_at)

    def mark_published(self, key: str, now: float) -> None:
        self._update_with(key, lambda d: True,
                          lambda d: {"published": True, "updated_at": now, "published_at": d.published_at or now})

    # Admission: each move reads records and the workflow's line, then writes them in one guarded commit.

    def claim_admitted(self, delivery: Delivery, rule: Rule, now: float) -> Admitted:
        return self._move(delivery.workflow, lambda ws: moves.claim_admitted(ws, delivery, rule, now))

    def queue(self, key: str, claim_token: str, *, reason: str, hand_off_at: float, answer: dict[str, Any] | None,
              unknown: bool, now: float) -> bool:
        return self._move(key, lambda ws: moves.queue(ws, key, claim_token, reason=reason, hand_off_at=hand_off_at,
                                                      answer=answer, unknown=unknown, now=now))

    def dequeue(self, key: str, attempt: int, new_token: str, now: float) -> Delivery | None:
        return self._move(key, lambda ws: moves.dequeue(ws, key, attempt, new_token, now))

    def reschedule(self, key: str, attempt: int, hand_off_at: float, now: float) -> Delivery | None:
        return self._move(key, lambda ws: moves.reschedule(ws, key, attempt, hand_off_at, now))

    def end_queued(self, key: str, outcome: str, error: dict[str, Any] | None, now: float, *,
                   claim_token: str | None = None) -> Delivery | None:
        return self._move(key.partition(":")[0],
                          lambda ws: moves.end_queued(ws, key, outcome, error, now, claim_token=claim_token))

    def refill(self, workflow: str, rule: Rule, now: float) -> list[str]:
        return self._move(workflow, lambda ws: moves.refill(ws, workflow, rule, now))

    def line(self, workflow: str) -> Line | None:
        with _unavailable():
            found = self.documents.read(self.collection + _LINES_SUFFIX, workflow)
        return Line.from_dict(found[0]) if found else None

    def _move(self, stripe_of: str, move: Callable[[Workspace], T]) -> T:
        """Run a move of gateway/ledger/moves.py as an optimistic transaction: read what it reads (each
        document with its update time), then commit every write at once, each guarded by the update time
        it was read at (or by its absence). Another writer in between fails a guard, and the move runs
        again on fresh reads. Firestore's own transactions lock what they read and, on one hot document
        (a busy workflow's line), queue and abort each other for seconds; guarded commits do not wait."""
        stripe = self._stripes[int(hashlib.sha256(stripe_of.encode()).hexdigest()[:8], 16) % _STRIPES]
        with stripe, _unavailable():
            for attempt in range(_MOVE_ATTEMPTS):
                try:
                    return self._move_once(move)
                except rest.Conflict:
                    time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise LedgerUnavailable("the ledger is busy (an admission line kept changing)")

    def _move_once(self, move: Callable[[Workspace], T]) -> T:
        """One try of `_move`; rest.Conflict when another writer came first."""
        lines = self.collection + _LINES_SUFFIX
        seen: dict[tuple[str, str], str | None] = {}

        def read(collection: str, doc_id: str) -> dict[str, Any] | None:
            found = self.documents.read(collection, doc_id)
            seen[(collection, doc_id)] = found[1] if found else None
            return found[0] if found else None

        def read_record(key: str) -> Delivery | None:
            doc = read(self.collection, document_id(key))
            return _from_doc(doc) if doc is not None else None

        def read_line(workflow: str) -> Line | None:
            doc = read(lines, workflow)
            return Line.from_dict(doc) if doc is not None else None

        workspace = Workspace(read_record, read_line)
        result = move(workspace)
        writes = [self._write(self.collection, document_id(key), record and _to_doc(record), seen)
                  for key, record in workspace.records.items()]
        writes += [self._write(lines, line.workflow, line.as_dict(), seen) for line in workspace.lines.values()]
        if writes:
            self.documents.commit(writes)
            for key in workspace.records:
                self._forget(key)
        return result

    def _write(self, collection: str, doc_id: str, fields: dict[str, Any] | None,
               seen: dict[tuple[str, str], str | None]) -> dict[str, Any]:
        update_time = seen.get((collection, doc_id))
        if fields is None:
            assert update_time is not None, "a move deletes only what it read"
            return self.documents.drop(collection, doc_id, update_time)
        return self.documents.put(collection, doc_id, fields, update_time)

    def recent(self, query: DeliveryQuery) -> list[Delivery]:
        found = self.client.collection(self.collection)
        for name in _FILTERS:
            if getattr(query, name) is not None:
                found = found.where(filter=_filter(name, "==", getattr(query, name)))
        if query.since is not None:
            found = found.where(filter=_filter("created_at", ">=", query.since))
        if query.until is not None:
            found = found.where(filter=_filter("created_at", "<", query.until))
        found = (found.order_by("created_at", direction="DESCENDING")
                 .order_by("__name__", direction="DESCENDING"))
        if query.after is not None:
            found = found.start_after({"created_at": query.after[0], "__name__": document_id(query.after[1])})
        with _unavailable():
            return [_from_doc(s.to_dict()) for s in found.limit(query.limit).stream(**self._call)]

    def find_delivery(self, delivery_id: str, limit: int = 20) -> list[Delivery]:
        query = self.client.collection(self.collection).where(filter=_filter("delivery_id", "==", delivery_id))
        with _unavailable():
            found = [_from_doc(s.to_dict()) for s in query.limit(limit).stream(**self._call)]
        return sorted(found, key=lambda d: (d.created_at, d.key), reverse=True)

    def note_action(self, key: str, action: dict[str, Any]) -> bool:
        return self._update_with(key, lambda d: True, lambda d: {"actions": [*d.actions, action]})[1]

    def stale(self, updated_before: float, limit: int = 100) -> list[Delivery]:
        query = (self.client.collection(self.collection)
                 .where(filter=_filter(_SWEEP_AT, "<", updated_before)).order_by(_SWEEP_AT).limit(limit))
        with _unavailable():
            return [_from_doc(s.to_dict()) for s in query.stream(**self._call)]

    def close(self) -> None:
        # The client has no public close; dropping it lets its gRPC channel be collected.
        with self._lock:
            self._client = self._documents = None

    def _update(self, key: str, when: Callable[[Delivery], bool], **changes: Any) -> tuple[Delivery | None, bool]:
        """Apply `changes` if the record exists and `when` holds, atomically: (record as it stands, applied)."""
        return self._update_with(key, when, lambda _: changes)

    def _update_with(self, key: str, when: Callable[[Delivery], bool],
                     changes_of: Callable[[Delivery], dict[str, Any]]) -> tuple[Delivery | None, bool]:
        """`_update` with changes computed from the record the condition was checked on."""
        return self._guarded(key, when, changes_of)

    def _guarded(self, key: str, when: Callable[[Delivery], bool],
                 changes_of: Callable[[Delivery], dict[str, Any]] | None) -> tuple[Delivery | None, bool]:
        """If the record exists and `when` holds, apply `changes_of(record)` (or delete it, when None) in one
        write guarded by the update time the condition was checked at; (record as it stands, applied).

        The first attempt trusts the remembered record; a record whose condition fails there, and any
        write that lost its precondition, is read again. A write whose answer was lost and whose retry
        then failed its precondition is recognised on that read: the record already shows its changes."""
        doc_id = document_id(key)
        known = self._recall(key)
        attempted: dict[str, Any] | None = None
        for _ in range(_WRITE_ATTEMPTS):
            fresh = known is None
            current, update_time = known if known is not None else self._read(key)
            known = None
            if current is None:
                return None, attempted is not None and changes_of is None  # our delete landed, or nothing there
            if attempted is not None and changes_of is not None and all(
                    getattr(current, k) == v for k, v in attempted.items()):
                return current, True
            if not when(current):
                if fresh:
                    return current, False
                continue  # the remembered record may be out of date: decide on what is stored
            with _unavailable():
                try:
                    if changes_of is None:
                        attempted = {}
                        self.documents.delete(doc_id, update_time)
                        self._forget(key)
                        return current, True
                    attempted = changes_of(current)
                    updated = replace(current, **attempted)
                    written = self.documents.update(doc_id, *_patch(updated, attempted), update_time)
                except rest.Conflict:
                    continue  # written by someone else since (or gone): read it again
            self._remember(updated, written)
            return updated, True
        raise LedgerUnavailable("the ledger is busy (the record kept changing under a guarded write)")

    def _transact(self, key: str, step: Callable[[firestore.Transaction, firestore.DocumentReference,
                                                    Delivery | None], T]) -> T:
        """Run `step` on the current record inside a transaction (retried by the library on contention);
        for changes that must read more than the one record (a single record's changes use `_guarded`)."""
        from google.cloud import firestore

        ref = self._ref(key)
        stripe = self._stripes[int(ref.id[:8], 16) % _STRIPES]

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> T:
            snapshot = ref.get(transaction=transaction, **self._call)
            return step(transaction, ref, _from_doc(snapshot.to_dict()) if snapshot.exists else None)

        with stripe, _unavailable():
            return run(self.client.transaction())


def document_id(key: str) -> str:
    """The Firestore document id of a ledger key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _holds(delivery: Delivery, claim_token: str) -> bool:
    return delivery.state == CLAIMED and delivery.claim_token == claim_token


def _settled(delivery: Delivery) -> bool:
    return delivery.state == FINISHED and delivery.published


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return json.dumps(value)
    if name == "expires_at":
        return datetime.fromtimestamp(value, tz=UTC)
    return value


def _to_doc(delivery: Delivery) -> dict[str, Any]:
    doc = {name: _encode(name, value) for name, value in delivery.as_dict().items()}
    if not _settled(delivery):
        doc[_SWEEP_AT] = delivery.updated_at
    return doc


def _patch(updated: Delivery, changes: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(fields to set, fields to remove) of a guarded update."""
    patch = {name: _encode(name, value) for name, value in changes.items()}
    if _settled(updated):
        return patch, (_SWEEP_AT,)
    patch[_SWEEP_AT] = updated.updated_at
    return patch, ()


def _filter(field: str, op: str, value: Any) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(field, op, value)


def _library_errors() -> tuple[type[BaseException], ...]:
    """What "Firestore is unavailable, try later" looks like from the client library (the first four are
    retried); anything else (permission, bad argument, missing database) is a deployment error and stays loud."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    return (api.ServiceUnavailable, api.DeadlineExceeded, api.InternalServerError, api.ResourceExhausted,
            api.Aborted, api.Unknown, api.RetryError, auth.TransportError, auth.RefreshError)


def _from_doc(doc: dict[str, Any]) -> Delivery:
    data = dict(doc)
    for name in _JSON_FIELDS:
        data[name] = json.loads(data[name]) if data.get(name) else _empty(name)
    if isinstance(data.get("expires_at"), datetime):
        data["expires_at"] = data["expires_at"].timestamp()
    return Delivery.from_dict(data)


def _empty(name: str) -> Any:
    return {} if name == "parameters" else [] if name in ("actions", "handed_to") else None


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn Firestore's "unavailable, try later" errors into an honest 503 (LedgerUnavailable)."""
    try:
        yield
    except rest.Unavailable as exc:
        raise LedgerUnavailable(f"the ledger is unavailable ({exc})") from None
    except (LedgerUnavailable, ConfigError, rest.AlreadyExists, rest.Conflict):
        raise
    except Exception as exc:
        if "google.api_core.exceptions" not in sys.modules:  # not the client library's: a bug
            raise
        library = _library_errors()
        if isinstance(exc, library):
            raise LedgerUnavailable(f"the ledger is unavailable ({type(exc).__name__})") from None
        if isinstance(exc, ValueError) and isinstance(exc.__cause__, library[4]):  # a transaction lost to contention
            raise LedgerUnavailable("the ledger is busy (transaction contention)") from None
        raise
