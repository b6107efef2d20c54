"""Processes under measurement: start a function like LocalStack does, read CPU time and peak RSS from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.local.emulators import stop_process_group

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + sys) of a process tree at one instant."""

    user_s: float
    sys_s: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.user_s - other.user_s, self.sys_s - other.sys_s)


def compile_bytecode(*sources: Path) -> None:
    """Compile `sources` as deploy/deploy.sh ships the gateway (checked-hash .pyc files beside them), so the
    cold starts read bytecode as a deployed instance does, the bare function's and the gateway's alike."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-f", "--invalidation-mode", "checked-hash",
                    "-x", "/gateway/(local|cli)/", *map(str, sources)], check=True, stdout=subprocess.DEVNULL)


def function_command(target: str, source: Path, port: int) -> list[str]:
    """The functions-framework command LocalStack uses (gateway/devstack.py); only target/source differ."""
    return [sys.executable, "-m", "functions_framework", "--target", target, "--source", str(source),
            "--signature-type", "http", "--host", "127.0.0.1", "--port", str(port)]


def spawn_function(target: str, source: Path, port: int, env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """Start one function server in its own session (so the whole tree can be stopped)."""
    with open(log, "ab") as out:
        return subprocess.Popen(function_command(target, source, port), cwd=ROOT, env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def terminate(process: subprocess.Popen) -> None:
    """Stop a process group started by `spawn_function` (SIGTERM, then SIGKILL)."""
    stop_process_group(process)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on; the name may hold spaces


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    """`pid` and every live descendant (gunicorn's arbiter and its worker; a launcher and its JVM)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue.extend(_children(current))
    return pids


def usage(pid: int) -> Usage:
    """CPU time of `pid` and its live descendants, all threads included."""
    user = system = 0
    for member in tree(pid):
        fields = _stat(member)
        if fields:
            user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime (man 5 proc)
    return Usage(user / TICKS, system / TICKS)


def peak_rss_kib(pid: int) -> dict[int, int]:
    """VmHWM (peak resident set) of each process of the tree, in KiB."""
    peaks = {}
    for member in tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[member] = int(line.split()[1])
        except OSError:
            pass
    return peaks
