"""Throughput, latency and CPU per request under a separate load-generator process.

Every request is a webhook pre-signed with the official `standardwebhooks` package and a fresh
`webhook-id` (a replay would be a duplicate delivery, answered 200, not a new job). The bare function
gets the very same bytes and ignores them. CPU is user+sys from /proc of each process tree, read just
before the load generator starts and just after it exits.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from bench import procs

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}


@dataclass(frozen=True)
class Target:
    """One server route under load: `expect` is the status that counts as served (202 accepted, 200)."""

    name: str
    url: str
    pid: int
    expect: int


@dataclass(frozen=True)
class LoadRun:
    """One timed run against one target, with the CPU every process spent meanwhile."""

    target: str
    generator: str
    connections: int
    duration_s: float
    requests: int
    served: int
    served_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    wrapped: int
    statuses: dict[str, int]
    server_cpu_s: float
    server_cpu_ms_per_request: float
    observers_cpu_s: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def signed_headers(signer: Webhook, data: str, now: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for one fresh delivery of `data`, from the official signer."""
    msg_id, now = f"msg_{uuid.uuid4().hex}", now or datetime.now(tz=UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(msg_id, now, data), "Content-Type": "application/json"}


def write_requests(path: Path, secret: str, count: int, body: Any = BODY) -> Path:
    """`count` signed deliveries of `body`, one line each: webhook-id, timestamp, signature, body."""
    signer, data = Webhook(secret), json.dumps(body)
    now = datetime.now(tz=UTC)
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(count):
            headers = signed_headers(signer, data, now)
            out.write(f"{headers['webhook-id']}\t{headers['webhook-timestamp']}\t{headers['webhook-signature']}\t"
                      f"{data}\n")
    return path


def generator() -> str:
    """`wrk` when installed (Debian's wrk, C, cheap on CPU), else the Python client in bench/loadgen.py."""
    return "wrk" if shutil.which("wrk") else "python"


def _command(kind: str, url: str, requests_file: Path, connections: int, duration_s: float) -> list[str]:
    if kind == "wrk":
        threads = min(2, connections)
        return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "30s",
                "-s", str(Path(__file__).with_name("wrk.lua")), url, "--", str(requests_file), str(threads)]
    return [sys.executable, "-m", "bench.loadgen", url, str(requests_file), "--connections", str(connections),
            "--duration", str(duration_s)]


def _summary(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[len("BENCH "):])
    raise RuntimeError(f"the load generator printed no summary:\n{output[-2000:]}")


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _self_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def run(target: Target, requests_file: Path, *, connections: int = 16, duration_s: float = 5.0,
        kind: str | None = None, observers: Mapping[str, int] | None = None) -> LoadRun:
    """Load `target` for `duration_s` and measure it; `observers` are other pids whose CPU is reported."""
    kind = kind or generator()
    observers = dict(observers or {})
    before = procs.usage(target.pid)
    seen = {name: procs.usage(pid) for name, pid in observers.items()}
    harness, children = _self_cpu(), _children_cpu()
    done = subprocess.run(_command(kind, target.url, requests_file, connections, duration_s), cwd=procs.ROOT,
                          capture_output=True, text=True, timeout=duration_s + 120)
    server = (procs.usage(target.pid) - before).cpu_s
    spent = {name: round((procs.usage(pid) - seen[name]).cpu_s, 3) for name, pid in observers.items()}
    spent["harness (local CARTO API)"] = round(_self_cpu() - harness, 3)
    spent["load generator"] = round(_children_cpu() - children, 3)
    summary = _summary(done.stdout)
    served = int(summary["statuses"].get(str(target.expect), 0))
    return LoadRun(target.name, kind, connections, round(summary["duration_s"], 3), summary["requests"], served,
                   round(served / summary["duration_s"], 1), round(summary["p50_ms"], 3),
                   round(summary["p99_ms"], 3), round(summary["max_ms"], 3), summary["errors"], summary["wrapped"],
                   summary["statuses"], round(server, 3), round(1000 * server / served, 4) if served else float("nan"),
                   spent)
