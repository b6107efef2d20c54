"""Failure injection: what the next requests of a route suffer, queued by tests or a soak script.

Routes: `submit` (create a job), `status` (get a job), `cancel`, `list`, `query` (the synchronous
`/query`). Kinds:

    error         answer `status` (5xx; on `query` a 4xx too, e.g. 403) with a CARTO-style error body
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

Standing conditions (`Conditions`) last for a time or until cleared, whatever the number of requests,
the way CARTO misbehaves in production:

    outage        for N seconds every CARTO route answers 503 (`error`), or the port refuses
                  connections (`refuse`: the listening socket is closed and open connections are cut)
    rate limit    at most N job creations in any 60 s (CARTO's window; tests may shorten it); beyond it
                  429 with `Retry-After` (the seconds until the oldest creation in the window leaves it)
    slow creation every job creation takes N s to answer; the job exists from the moment the request
                  arrived, so a client that gives up early finds it in the job list
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
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
        if not 500 <= self.status <= 599 and not (self.route == "query" and 400 <= self.status <= 499):
            raise ValueError("status must be a 5xx (a 4xx too on the query route: a read CARTO refuses)")
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


OUTAGE_KINDS = ("error", "refuse")
RATE_WINDOW_S = 60.0


class Conditions:
    """Standing conditions (module docstring), safe to use from tests while the server's threads read them.

    Times are the monotonic `clock`'s (the jobs' own clock may be a test's fake one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._outage_until = 0.0
        self._outage_kind = "error"
        self._outage_status = 503
        self._per_minute: int | None = None
        self._window_s = RATE_WINDOW_S
        self._created: deque[float] = deque()
        self._submit_delay_s = 0.0

    def outage(self, seconds: float, kind: str = "error", status: int = 503) -> None:
        """For `seconds` from now every CARTO route answers `status` (`error`) or is refused (`refuse`;
        the server closes its port, see `SandboxServer.outage`)."""
        if kind not in OUTAGE_KINDS:
            raise ValueError(f"outage kind must be one of {OUTAGE_KINDS}")
        if not 500 <= status <= 599:
            raise ValueError("status must be a 5xx")
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError("an outage lasts a positive, finite number of seconds")
        with self._lock:
            self._outage_until = self._clock() + seconds
            self._outage_kind, self._outage_status = kind, status

    def outage_fault(self) -> Fault | None:
        """What a CARTO request suffers during an outage (a 5xx, or its connection cut when the port is
        refusing: one still open from before); None outside one."""
        with self._lock:
            if self._clock() >= self._outage_until:
                return None
            if self._outage_kind == "refuse":
                return Fault("submit", "drop")
            return Fault("submit", "error", status=self._outage_status)

    def rate_limit(self, per_minute: int | None, window_s: float = RATE_WINDOW_S) -> None:
        """At most `per_minute` job creations in any `window_s` seconds (None: no limit). The window is
        CARTO's minute unless a test scales it down: the 429s then carry that window's Retry-After."""
        if per_minute is not None and (isinstance(per_minute, bool) or not isinstance(per_minute, int)
                                       or per_minute < 1):
            raise ValueError("per_minute must be a positive integer or null")
        if isinstance(window_s, bool) or not 0 < window_s < math.inf:
            raise ValueError("window_s must be a positive, finite number of seconds")
        with self._lock:
            self._per_minute, self._window_s = per_minute, float(window_s)
            self._created.clear()

    def admit_creation(self) -> int | None:
        """Count one job creation; None when it is admitted, else the Retry-After (whole seconds) of its 429."""
        with self._lock:
            now = self._clock()
            while self._created and self._created[0] <= now - self._window_s:
                self._created.popleft()
            if self._per_minute is not None and len(self._created) >= self._per_minute:
                return max(1, math.ceil(self._created[0] + self._window_s - now))
            self._created.append(now)
            return None

    def slow_creation(self, seconds: float) -> None:
        """Every job creation answers `seconds` after it arrived (0: at once)."""
        if not 0 <= seconds < math.inf:
            raise ValueError("seconds must be zero or positive")
        with self._lock:
            self._submit_delay_s = seconds

    @property
    def creation_delay_s(self) -> float:
        with self._lock:
            return self._submit_delay_s

    def clear(self) -> None:
        """No outage, no limit, no slowness."""
        with self._lock:
            self._outage_until, self._per_minute, self._submit_delay_s = 0.0, None, 0.0
            self._window_s = RATE_WINDOW_S
            self._created.clear()

    def state(self) -> dict[str, Any]:
        """What holds now, for stats."""
        with self._lock:
            left = max(0.0, self._outage_until - self._clock())
            return {"outage": {"kind": self._outage_kind, "seconds_left": round(left, 3)} if left else None,
                    "submit_per_minute": self._per_minute, "submit_window_s": self._window_s,
                    "submit_delay_s": self._submit_delay_s}


def apply_conditions(conditions: Conditions, raw: Any) -> float | None:
    """Apply the admin endpoint's JSON body: `{"outage_s", "outage": "error|refuse", "status",
    "submit_per_minute", "submit_window_s", "submit_delay_s"}` (each optional; the window, 60 s unless given,
    goes with a limit). Returns the seconds of a `refuse` outage to start (the server closes its port), else
    None; ValueError when malformed."""
    if not isinstance(raw, Mapping):
        raise ValueError("expected a JSON object")
    allowed = {"outage_s", "outage", "status", "submit_per_minute", "submit_window_s", "submit_delay_s"}
    if set(raw) - allowed:
        raise ValueError(f"fields: {sorted(allowed)}")
    numbers = {name: raw[name] for name in ("outage_s", "submit_delay_s", "submit_window_s", "status") if name in raw}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
    if "submit_window_s" in raw and "submit_per_minute" not in raw:
        raise ValueError("submit_window_s goes with submit_per_minute")
    if "submit_per_minute" in raw:
        conditions.rate_limit(raw["submit_per_minute"], float(raw.get("submit_window_s", RATE_WINDOW_S)))
    if "submit_delay_s" in raw:
        conditions.slow_creation(float(raw["submit_delay_s"]))
    if "outage_s" in raw:
        kind = raw.get("outage", "error")
        conditions.outage(float(raw["outage_s"]), kind, int(raw.get("status", 503)))
        return float(raw["outage_s"]) if kind == "refuse" else None
    return None
