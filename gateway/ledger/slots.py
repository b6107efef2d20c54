"""A workflow's admission line: who holds its slots, who waits, and the rules that move them. Pure.

Each store keeps one `Line` per capped or paused workflow and changes it only inside the same
transaction as the delivery records it names (SQLite BEGIN IMMEDIATE, a Firestore transaction), so
the line and the records never disagree, whichever instance writes (docs/architecture.md, "Admission").
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUEUE, REPLACE, REFUSE = "queue", "replace", "refuse"
WHEN_BUSY = (QUEUE, REPLACE, REFUSE)
RUN, WAIT, BUSY = "run", "wait", "busy"


@dataclass(frozen=True)
class Rule:
    """What the workflow file says: at most `cap` jobs at once (None: no cap), what a busy arrival
    gets, and whether the workflow is paused (every arrival waits, none is submitted)."""

    cap: int | None
    when_busy: str = QUEUE
    paused: bool = False


@dataclass
class Line:
    """One workflow's slots: the keys holding one (grant order) and the keys waiting (arrival order)."""

    workflow: str
    cap: int | None = None
    paused: bool = False
    running: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"workflow": self.workflow, "cap": self.cap, "paused": self.paused,
                "running": list(self.running), "waiting": list(self.waiting)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Line:
        cap = data.get("cap")
        return cls(str(data["workflow"]), cap if isinstance(cap, int) else None, bool(data.get("paused")),
                   [str(k) for k in data.get("running") or []],  # type: ignore[union-attr]
                   [str(k) for k in data.get("waiting") or []])  # type: ignore[union-attr]


@dataclass(frozen=True)
class Arrival:
    """What one arrival did to the line: its verdict (run now, wait, or busy: refused, nothing
    recorded), the waiting keys it replaced, and the older waiting keys granted a slot on the way."""

    verdict: str
    replaced: tuple[str, ...] = ()
    granted: tuple[str, ...] = ()


def _has_room(line: Line) -> bool:
    return not line.paused and (line.cap is None or len(line.running) < line.cap)


def fill(line: Line) -> list[str]:
    """Grant free slots to the oldest waiting keys; the keys granted, in order."""
    granted: list[str] = []
    while line.waiting and _has_room(line):
        key = line.waiting.pop(0)
        line.running.append(key)
        granted.append(key)
    return granted


def arrive(line: Line, key: str, rule: Rule) -> Arrival:
    """A new delivery `key` arrives: the line takes the file's current rule, older waiting ones go first."""
    line.cap, line.paused = rule.cap, rule.paused
    granted = tuple(fill(line))
    if _has_room(line):
        line.running.append(key)
        return Arrival(RUN, granted=granted)
    if rule.when_busy == REFUSE and not rule.paused:
        return Arrival(BUSY, granted=granted)
    replaced: tuple[str, ...] = ()
    if rule.when_busy == REPLACE:
        replaced, line.waiting = tuple(line.waiting), []
    line.waiting.append(key)
    return Arrival(WAIT, replaced, granted)


def leave(line: Line, key: str) -> list[str]:
    """`key` ends (its job ended, it was cancelled, replaced or timed out): its slot or its place is
    freed and handed to the oldest waiting keys; the keys granted."""
    if key in line.running:
        line.running.remove(key)
    if key in line.waiting:
        line.waiting.remove(key)
    return fill(line)
