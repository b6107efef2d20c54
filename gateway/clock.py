"""The clock the core is given (`App.build` passes one to `Intake`, `Poller`, `Admission` and `Sweeper`):
the time now and a way to wait, so tests run a schedule of hours instantly on a fake one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch, and a wait (only a first trigger's inline checks and CARTO retries wait)."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The process's own clock: `time.time` and `time.sleep`."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
