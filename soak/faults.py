"""The soak's fault schedule: one fault every few seconds, cycling through CARTO's own failures (the
local job API's fault queue) and the network's (tests/faultproxy.py in front of it); and CARTO's
longer troubles, each once at its point of the run (`Episodes`): an outage answering 503, an outage
refusing connections (behind the proxy the gateway sees its connection reset), a burst against a
limit of 15 job creations a minute, and a CARTO taking 10 s to create each job."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.faultproxy import Fault

JOB_POST = {"method": "POST", "path": r"/v3/sql/[^/]+/job$"}
STATUS_GET = {"method": "GET", "path": r"/v3/sql/[^/]+/job/"}


@dataclass(frozen=True)
class Step:
    """One scheduled fault: its name in the table and how to inject it."""

    name: str
    inject: Callable[[Any, Any], None]  # (sandbox, proxy)


SCHEDULE = (
    Step("CARTO 503 on the job POST (every attempt)", lambda s, p: s.faults.error("submit", status=503, count=3)),
    Step("CARTO 429 + Retry-After on the job POST", lambda s, p: s.faults.rate_limit("submit", retry_after=1, count=2)),
    Step("CARTO 500 on the job POST", lambda s, p: s.faults.error("submit", status=500)),
    Step("CARTO drops the job POST after creating the job", lambda s, p: s.faults.drop("submit", after=True)),
    Step("CARTO 502/drop on status checks", lambda s, p: (s.faults.error("status", status=502, count=2),
                                                          s.faults.drop("status"))),
    Step("connection reset before CARTO reads the POST", lambda s, p: p.inject(Fault(**JOB_POST, kind="reset",
                                                                                    forward=False))),
    Step("connection reset after CARTO created the job", lambda s, p: p.inject(Fault(**JOB_POST, kind="reset"))),
    Step("answer cut inside its headers", lambda s, p: p.inject(Fault(**JOB_POST, kind="truncate", after_bytes=30))),
    Step("latency spike (2 s) on POSTs and status checks", lambda s, p: (
        p.inject(Fault(**JOB_POST, kind="delay", delay_s=2.0), 3), p.inject(Fault(**STATUS_GET, kind="delay",
                                                                                   delay_s=2.0), 3))),
    Step("no answer until the read timeout", lambda s, p: p.inject(Fault(**JOB_POST, kind="blackhole"))),
    Step("balancer 503 + Retry-After 2", lambda s, p: p.inject(Fault(**JOB_POST, kind="respond", status=503,
                                                                      headers=(("Retry-After", "2"),)), 3)),
    Step("status check reset", lambda s, p: p.inject(Fault(**STATUS_GET, kind="reset"), 2)),
)


class Injector:
    """Injects the next step of the schedule each time it is called; counts what it injected."""

    def __init__(self, sandbox: Any, proxy: Any):
        self.sandbox, self.proxy = sandbox, proxy
        self.injected: Counter[str] = Counter()
        self._next = 0

    def tick(self) -> None:
        step = SCHEDULE[self._next % len(SCHEDULE)]
        self._next += 1
        step.inject(self.sandbox, self.proxy)
        self.injected[step.name] += 1

    def note(self, name: str) -> None:
        self.injected[name] += 1

    def clear(self) -> None:
        """Nothing pending any more, so the drain runs on a healthy CARTO."""
        self.proxy.clear()
        self.sandbox.faults.clear()


OUTAGE_S = (30.0, 90.0)  # an outage lasts this long (drawn from the run's seed), at most a fifth of a short run
RATE_LIMIT_PER_MINUTE, RATE_LIMIT_S = 15, 60.0
SLOW_CREATION_S, SLOW_S = 10.0, 30.0


class Episodes:
    """CARTO's longer troubles at set fractions of the run; `tick()` starts those that are due."""

    def __init__(self, sandbox: Any, run_s: float, rng: random.Random, note: Callable[[str], None],
                 say: Callable[[str], None]):
        self.sandbox, self._note, self._say = sandbox, note, say
        self._started = time.monotonic()
        self._timers: list[threading.Timer] = []
        longest = max(OUTAGE_S[0], min(OUTAGE_S[1], run_s / 5))
        self._plan: list[tuple[float, str, Callable[[], None]]] = [
            (0.05 * run_s, "CARTO outage: every call answered 503", lambda s=rng.uniform(OUTAGE_S[0], longest):
                self._outage(s, "error")),
            (0.27 * run_s, "CARTO outage: connections refused", lambda s=rng.uniform(OUTAGE_S[0], longest):
                self._outage(s, "refuse")),
            (0.60 * run_s, f"CARTO rate limit: {RATE_LIMIT_PER_MINUTE} job creations a minute for "
                           f"{RATE_LIMIT_S:.0f} s (429 + Retry-After beyond)", self._rate_limit),
            (0.80 * run_s, f"slow CARTO: {SLOW_CREATION_S:.0f} s per job creation for {SLOW_S:.0f} s", self._slow),
        ]

    def tick(self) -> None:
        elapsed = time.monotonic() - self._started
        while self._plan and self._plan[0][0] <= elapsed:
            _, name, start = self._plan.pop(0)
            start()
            self._note(name)

    def _outage(self, seconds: float, kind: str) -> None:
        self._say(f"CARTO outage ({kind}) for {seconds:.0f} s")
        self.sandbox.outage(seconds, kind=kind)

    def _rate_limit(self) -> None:
        self.sandbox.conditions.rate_limit(RATE_LIMIT_PER_MINUTE)
        self._later(RATE_LIMIT_S, lambda: self.sandbox.conditions.rate_limit(None))

    def _slow(self) -> None:
        self.sandbox.conditions.slow_creation(SLOW_CREATION_S)
        self._later(SLOW_S, lambda: self.sandbox.conditions.slow_creation(0.0))

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def clear(self) -> None:
        """No episode left pending or running, so the drain runs on a healthy CARTO."""
        for timer in self._timers:
            timer.cancel()
        self._plan.clear()
        self.sandbox.conditions.clear()
