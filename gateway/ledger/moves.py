"""The admission moves of the ledger, written once for both stores. Pure.

Each move reads records and lines through a `Workspace` and leaves its writes there; a store runs
the move inside one transaction (SQLite `BEGIN IMMEDIATE`, a Firestore transaction: every read
before the first write, which the workspace guarantees by buffering the writes) and then applies
them. So a slot is granted, freed and handed on in the same transaction as the records it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.ledger.records import CLAIMED, FINISHED, QUEUED, SUPERSEDED, Admitted, Delivery
from gateway.ledger.slots import BUSY, WAIT, Line, Rule, arrive, fill, leave


class Workspace:
    """The records and lines one transaction reads (each once) and the writes it leaves."""

    def __init__(self, read_record: Callable[[str], Delivery | None], read_line: Callable[[str], Line | None]):
        self._read_record, self._read_line = read_record, read_line
        self._records: dict[str, Delivery | None] = {}
        self._lines: dict[str, Line] = {}
        self.records: dict[str, Delivery | None] = {}  # written: the record, or None to delete it
        self.lines: dict[str, Line] = {}  # written

    def record(self, key: str) -> Delivery | None:
        if key in self.records:
            return self.records[key]
        if key not in self._records:
            self._records[key] = self._read_record(key)
        return self._records[key]

    def line(self, workflow: str) -> Line:
        if workflow not in self._lines:
            self._lines[workflow] = self._read_line(workflow) or Line(workflow)
        return self._lines[workflow]

    def put(self, record: Delivery) -> None:
        self.records[record.key] = record

    def delete(self, key: str) -> None:
        self.records[key] = None

    def put_line(self, line: Line) -> None:
        self.lines[line.workflow] = line

    def grant(self, keys: list[str] | tuple[str, ...], now: float) -> list[str]:
        """Records of keys just granted a slot: their hand-off is due now. Keys whose record is gone are
        dropped from the answer (the sweeper's `refill` frees their slots)."""
        granted = []
        for key in keys:
            record = self.record(key)
            if record is not None and record.state == QUEUED:
                self.put(replace(record, hand_off_at=now, updated_at=now))
                granted.append(key)
        return granted


def claim_admitted(ws: Workspace, delivery: Delivery, rule: Rule, now: float) -> Admitted:
    existing = ws.record(delivery.key)
    if existing is not None:
        return Admitted(False, existing, existing.state)
    line = ws.line(delivery.workflow)
    arrival = arrive(line, delivery.key, rule)
    granted = tuple(ws.grant(arrival.granted, now))
    if arrival.verdict == BUSY:
        if arrival.granted:
            ws.put_line(line)
        return Admitted(False, delivery, BUSY, granted=granted)
    stored = replace(delivery, updated_at=delivery.created_at, capped=True)
    if arrival.verdict == WAIT:
        stored = replace(stored, state=QUEUED, queued_at=now, queue_reason="paused" if rule.paused else "busy",
                         hand_off_at=None, updated_at=_wait_until(stored, now))
    ws.put(stored)
    by = delivery.delivery_id or delivery.key
    for key in arrival.replaced:
        old = ws.record(key)
        if old is not None and old.outcome is None:
            ws.put(_ended(old, SUPERSEDED, {"reason": "superseded", "message": f"replaced by delivery {by}"}, now,
                          superseded_by=by))
    ws.put_line(line)
    return Admitted(True, stored, arrival.verdict, arrival.replaced, granted)


def _wait_until(record: Delivery, now: float) -> float:
    """A waiting record's `updated_at`: its deadline, so the sweeper finds it only if it is still there then."""
    return record.deadline_at if record.deadline_at is not None else now


def _ended(record: Delivery, outcome: str, error: dict[str, Any] | None, now: float, **more: Any) -> Delivery:
    return replace(record, state=FINISHED, outcome=outcome, error=error, finished_at=now, updated_at=now,
                   hand_off_at=None, **more)


def _hand_on(ws: Workspace, record: Delivery, now: float) -> list[str]:
    """Free a capped record's slot or place; the keys granted in its stead."""
    if not record.capped:
        return []
    line = ws.line(record.workflow)
    granted = leave(line, record.key)
    ws.put_line(line)
    return ws.grant(granted, now)


def finish(ws: Workspace, key: str, outcome: str, carto_state: str | None, error: dict[str, Any] | None,
           checks: int, finished_at: float, result: dict[str, Any] | None = None) -> Delivery | None:
    record = ws.record(key)
    if record is None or record.outcome is not None:
        return record
    ended = replace(_ended(record, outcome, error, finished_at), carto_state=carto_state, checks=checks,
                    result=result)
    ended = replace(ended, handed_to=_hand_on(ws, record, finished_at))
    ws.put(ended)
    return ended


def release(ws: Workspace, key: str, claim_token: str) -> bool:
    """Delete a claim that got no job and free its slot; `refill` hands the slot on."""
    record = ws.record(key)
    if record is None or record.state != CLAIMED or record.claim_token != claim_token:
        return False
    if record.capped:
        line = ws.line(record.workflow)
        if key in line.running:
            line.running.remove(key)
            ws.put_line(line)
    ws.delete(key)
    return True


def queue(ws: Workspace, key: str, claim_token: str, *, reason: str, hand_off_at: float,
          answer: dict[str, Any] | None, unknown: bool, now: float) -> bool:
    record = ws.record(key)
    if record is None or record.state != CLAIMED or record.claim_token != claim_token:
        return False
    due = hand_off_at if record.deadline_at is None else min(hand_off_at, record.deadline_at)
    ws.put(replace(record, state=QUEUED, queued_at=record.queued_at or now, queue_reason=reason, hand_off_at=due,
                   attempts=record.attempts + 1, last_answer=answer or record.last_answer, unknown=unknown,
                   updated_at=due))
    return True


def dequeue(ws: Workspace, key: str, attempt: int, new_token: str, now: float) -> Delivery | None:
    record = ws.record(key)
    if record is None or record.state != QUEUED or record.hand_off_at is None or record.attempts != attempt:
        return None
    taken = replace(record, state=CLAIMED, claim_token=new_token, updated_at=now)
    ws.put(taken)
    return taken


def reschedule(ws: Workspace, key: str, attempt: int, hand_off_at: float, now: float) -> Delivery | None:
    record = ws.record(key)
    if record is None or record.state != QUEUED or record.hand_off_at is None or record.attempts != attempt:
        return None
    moved = replace(record, attempts=attempt + 1, hand_off_at=hand_off_at, updated_at=hand_off_at)
    ws.put(moved)
    return moved


def end_queued(ws: Workspace, key: str, outcome: str, error: dict[str, Any] | None, now: float, *,
               claim_token: str | None = None) -> Delivery | None:
    record = ws.record(key)
    if record is None or record.outcome is not None:
        return None
    if not (record.state == QUEUED or (record.state == CLAIMED and claim_token == record.claim_token)):
        return None
    ended = _ended(record, outcome, error, now)
    ended = replace(ended, handed_to=_hand_on(ws, record, now))
    ws.put(ended)
    return ended


def refill(ws: Workspace, workflow: str, rule: Rule, now: float) -> list[str]:
    line = ws.line(workflow)
    before = line.as_dict()
    line.cap, line.paused = rule.cap, rule.paused
    for key in list(line.running):  # a waiting key leaves the line in the same move as its record ends
        record = ws.record(key)
        if record is None or record.outcome is not None:
            leave(line, key)
    granted = ws.grant(fill(line), now)
    if line.as_dict() != before:
        ws.put_line(line)
    return granted
