"""Failure injection: what the next requests of a route suffer, queued by tests or a soak script.

Routes: `submit` (create a job), `status` (get a job), `cancel`, `list`, `query` (the synchronous
`/query`). Kinds:

    error         answer `status` (5xx) with a CARTO-style error body
    rate_limit    answer 429 with `Retry-After: retry_after`
    delay         wait `delay_s`, then answer normally
    drop          close the socket without any answer
    hold          (in-process only, `Faults.hold`) wait until the test releases it, then answer normally
    fail_job      (submit) the job is created and later ends DONE with an errorResult `message`
    never_finish  (submit) the job is created and stays RUNNING forever
    drop_metadata (list, status) the answer leaves out each job's `metadata`

`after: true` applies error / rate_limit / delay / drop AFTER the request took effect (the job was
created, the cancel applied): the case "CARTO accepted it but the client never heard".
Each request consumes at most one fault of its route, in the order they were queued.

A hold makes a race deterministic without sleeping: the test learns that the request has arrived
(`Hold.arrived`), does what must happen meanwhile, then lets the request go on (`Hold.release`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ROUTES = ("submit", "status", "cancel", "list", "query")
TRANSPORT_KINDS = ("error", "rate_limit", "delay", "drop", "hold")
JOB_KINDS = ("fail_job", "never_finish")
ANSWER_KINDS = ("drop_metadata",)


@dataclass(frozen=True)
class Fault:
    """One injected fault; see the module docstring for the meaning of each field."""

    route: str
    kind: str
    after: bool = False
    status: int = 503
    retry_after: int = 1
    delay_s: float = 0.0
    message: str = "Query error: injected failure (sandbox)"

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}")
        if self.kind not in TRANSPORT_KINDS + JOB_KINDS + ANSWER_KINDS:
            raise ValueError(f"kind must be one of {TRANSPORT_KINDS + JOB_KINDS + ANSWER_KINDS}")
        if self.kind in JOB_KINDS and self.route != "submit":
            raise ValueError(f"{self.kind} applies to the submit route only")
        if self.kind in ANSWER_KINDS and self.route not in ("list", "status"):
            raise ValueError(f"{self.kind} applies to the list and status routes only")
        if not 500 <= self.status <= 599:
            raise ValueError("status must be a 5xx")
        if self.delay_s < 0 or self.retry_after < 0:
            raise ValueError("delay_s and retry_after must not be negative")


class Hold:
    """One request kept waiting by a `hold` fault, until `release()` (or `timeout_s`, so no thread hangs)."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.arrived = threading.Event()  # set when the request starts waiting
        self._released = threading.Event()
        self.timeout_s = timeout_s

    def release(self) -> None:
        self._released.set()

    def wait(self) -> None:
        """Called by the server's request thread: say it is here, then wait for the release."""
        self.arrived.set()
        self._released.wait(self.timeout_s)


class Faults:
    """The queue of pending faults, safe to use from tests while the server's threads consume it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[list[Any]] = []  # [Fault, remaining count]
        self._holds: dict[str, list[Hold]] = {}  # per route, in the order their faults were queued

    def add(self, fault: Fault, count: int = 1) -> None:
        """Queue `fault` for the next `count` requests of its route."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._queue.append([fault, count])

    def error(self, route: str, status: int = 503, count: int = 1, after: bool = False) -> None:
        """The next `count` requests of `route` answer `status`."""
        self.add(Fault(route, "error", after=after, status=status), count)

    def rate_limit(self, route: str, retry_after: int = 1, count: int = 1, after: bool = False) -> None:
        """The next `count` requests of `route` answer 429 with Retry-After."""
        self.add(Fault(route, "rate_limit", after=after, retry_after=retry_after), count)

    def delay(self, route: str, seconds: float, count: int = 1, after: bool = False) -> None:
        """The next `count` requests of `route` answer only after `seconds`."""
        self.add(Fault(route, "delay", after=after, delay_s=seconds), count)

    def drop(self, route: str, count: int = 1, after: bool = False) -> None:
        """The next `count` requests of `route` get their connection closed without an answer."""
        self.add(Fault(route, "drop", after=after), count)

    def hold(self, route: str, timeout_s: float = 60.0) -> Hold:
        """The next request of `route` waits, before it takes effect, until the returned Hold is released."""
        hold = Hold(timeout_s)
        with self._lock:
            self._holds.setdefault(route, []).append(hold)
        self.add(Fault(route, "hold"))
        return hold

    def wait_held(self, route: str) -> None:
        """Wait on the oldest Hold of `route` (its `hold` fault was just taken)."""
        with self._lock:
            hold = self._holds[route].pop(0) if self._holds.get(route) else None
        if hold is not None:
            hold.wait()

    def fail_jobs(self, message: str = Fault.message, count: int = 1) -> None:
        """The next `count` submitted jobs end DONE with an errorResult carrying `message`."""
        self.add(Fault("submit", "fail_job", message=message), count)

    def never_finish(self, count: int = 1) -> None:
        """The next `count` submitted jobs never reach DONE."""
        self.add(Fault("submit", "never_finish"), count)

    def drop_metadata(self, route: str = "list", count: int = 1) -> None:
        """The next `count` answers of `route` (list or status) leave out each job's metadata."""
        self.add(Fault(route, "drop_metadata"), count)

    def take(self, route: str) -> Fault | None:
        """Consume the first pending fault of `route`, if any."""
        with self._lock:
            for entry in self._queue:
                if entry[0].route == route:
                    entry[1] -= 1
                    if entry[1] == 0:
                        self._queue.remove(entry)
                    return entry[0]
        return None

    def pending(self) -> list[dict[str, Any]]:
        """Pending faults with their remaining counts, for stats."""
        with self._lock:
            return [{**asdict(fault), "count": count} for fault, count in self._queue]

    def clear(self) -> None:
        """Drop every pending fault (and release every pending hold)."""
        with self._lock:
            self._queue.clear()
            holds = [hold for queued in self._holds.values() for hold in queued]
            self._holds.clear()
        for hold in holds:
            hold.release()


def fault_from_json(raw: Mapping[str, Any]) -> tuple[Fault, int]:
    """A fault and its count from the admin endpoint's JSON body; ValueError or TypeError when malformed."""
    if not isinstance(raw, Mapping):
        raise TypeError("expected a JSON object")
    options = dict(raw)
    if options.get("kind") == "hold":
        raise ValueError("hold is for tests in the sandbox's own process (Faults.hold)")
    count = options.pop("count", 1)
    allowed = set(Fault.__dataclass_fields__)
    if set(options) - allowed or not isinstance(count, int) or isinstance(count, bool):
        raise ValueError(f"fields: route, kind, count and {sorted(allowed - {'route', 'kind'})}")
    try:
        return Fault(**options), count
    except TypeError as exc:
        raise ValueError(str(exc)) from None
