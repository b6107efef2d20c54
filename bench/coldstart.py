"""Cold start: process start to the first `202` of `webhook`, and to the first `200`
of the bare function, each a fresh functions-framework process started the same way; peak RSS of both.

The first request is sent as soon as the port accepts connections (the way Cloud Functions holds the
request that woke the instance), so the time covers interpreter start, imports, gunicorn's fork, the
instance's lazy set-up on the first request and that request itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from bench import procs
from bench.load import BODY, signed_headers
from bench.stacks import http_status
from gateway.local import emulators


@dataclass(frozen=True)
class ColdStart:
    """One cold start: seconds to the first answer, its status, peak RSS (KiB) per process of the tree."""

    target: str
    seconds: float
    status: int
    peak_rss_kib: int
    peak_rss_kib_by_process: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def signed_request(path: str, secret: str, body: Any = BODY) -> bytes:
    """A raw HTTP/1.1 request for one fresh webhook, signed with the official standardwebhooks package."""
    data = json.dumps(body)
    headers = {**signed_headers(Webhook(secret), data), "Content-Length": str(len(data.encode()))}
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{lines}\r\n".encode() + data.encode()


def measure(target: str, source: Path, path: str, expect: int, env: Mapping[str, str], secret: str,
            log_dir: Path, timeout_s: float = 60.0) -> ColdStart:
    """Start a fresh server, time process start → first answer, read its peak RSS, stop it."""
    port = emulators.free_port()
    raw = signed_request(path, secret)
    started = time.perf_counter()
    process = procs.spawn_function(target, source, port, env, log_dir / f"cold-{target}.log")
    try:
        status = None
        while status is None:
            if time.perf_counter() - started > timeout_s or process.poll() is not None:
                raise RuntimeError(f"{target} gave no answer within {timeout_s} s (exit code {process.poll()})")
            status = http_status(port, raw)
            if status is None:
                time.sleep(0.005)
        seconds = time.perf_counter() - started
        peaks = procs.peak_rss_kib(process.pid)
    finally:
        procs.terminate(process)
    if status != expect:
        raise RuntimeError(f"{target}: first answer was {status}, expected {expect} (see {log_dir})")
    roles = {pid: ("arbiter" if pid == process.pid else "worker") for pid in peaks}
    return ColdStart(target, round(seconds, 4), status, max(peaks.values()),
                     {roles[pid]: kib for pid, kib in peaks.items()})
