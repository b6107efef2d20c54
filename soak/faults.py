"""The soak's fault schedule: one fault every few seconds, cycling through CARTO's own failures (the
local job API's fault queue) and the network's (tests/faultproxy.py in front of it)."""

from __future__ import annotations

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
