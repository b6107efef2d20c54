"""Structured JSON log lines for Cloud Logging (https://cloud.google.com/logging/docs/structured-logging).

Each line carries `severity`, `message`, the trace (`logging.googleapis.com/trace`) and, where known,
the workflow, delivery id and job id. Fields come from a per-request context and from `extra=`.
Values that look like credentials are never logged: only whitelisted fields are emitted.

Each line names what happened in `event`, a dotted name (`delivery.accepted`, `job.finished`,
`sweep.redrive`, ...; the list is `EVENTS`), passed as `extra=event(NAME, **fields)`. The log-based
metrics of deploy/metrics/ select lines by it and read the fields `EVENT_FIELDS` lists
(docs/operating.md): rename one and tests/test_metrics.py fails.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

CONTEXT_FIELDS = ("workflow", "delivery_id", "job_id", "key", "outcome", "route", "status", "operator", "action")
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "gateway_log_context", default=MappingProxyType({}))
_TRACE_CONTEXT = re.compile(r"^([0-9a-fA-F]{32})(?:/\d+)?(?:;o=\d)?$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The trace id of a request, from W3C `traceparent` or `X-Cloud-Trace-Context`."""
    match = _TRACEPARENT.match((headers.get("traceparent") or "").strip())
    if match:
        return match.group(1)
    match = _TRACE_CONTEXT.match((headers.get("X-Cloud-Trace-Context") or "").strip())
    return match.group(1).lower() if match else None


def bind(**fields: Any) -> None:
    """Add fields to every later log line of the current request (or message), until its `bound` block ends."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Fields on every log line of the block, and on none after it, however it ends: fields `bind`
    adds inside are dropped with them, so nothing leaks into the next request on the same thread."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


# What a line may say besides its context. invocation_s: how long one `poll` took; code, status: a
# refusal's problem code and HTTP status; kind: which step failed or was re-driven; duration_s and
# checks: a finished job's run time (submission to end) and status checks; reason, queued_s: why a
# delivery waits and how long it waited; rows, bytes, ms: a result read; incident: the id a 500 answered with.
EVENT_FIELDS = ("event", "code", "kind", "duration_s", "checks", "reason", "queued_s", "rows", "bytes", "ms",
                "incident")
_RECORD_FIELDS = CONTEXT_FIELDS + EVENT_FIELDS + ("trace", "invocation_s")
_EMITTED = frozenset(CONTEXT_FIELDS + EVENT_FIELDS + ("invocation_s",))

# Every event a line may name: what it means is in docs/operating.md.
EVENTS = frozenset({
    "delivery.accepted", "delivery.duplicate", "delivery.refused", "delivery.handshake",
    "delivery.queued", "delivery.dequeued", "delivery.superseded",
    "auth.refused", "operator.refused", "http.answered", "http.crashed",
    "job.finished", "job.checked", "check.failed", "tracking.dropped", "tracking.poison", "tracking.refused",
    "carto.failed", "publish.failed",
    "sweep.redrive", "sweep.failed", "sweep.done",
    "result.read", "result.failed",
    "console.cancelled", "console.rerun", "console.refused", "console.crashed",
    "function.failed", "function.crashed", "function.unconfigured",
})


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The `extra=` of a line naming event `name` (one of EVENTS) with its fields (EVENT_FIELDS or context)."""
    if name not in EVENTS:
        raise ValueError(f"unknown log event {name}")
    return {"event": name, **fields}


def _rfc3339(created: float) -> str:
    """The record's time as Cloud Logging's `time` field wants it: RFC 3339, UTC."""
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, in the shape Cloud Logging parses."""

    def __init__(self, project: str | None = None):
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"severity": record.levelname, "message": record.getMessage(),
                                 "logger": record.name, "time": _rfc3339(record.created)}
        extra = record.__dict__  # `extra=` fields land here; a dict lookup, not a failing getattr per field
        fields = {**_context.get(), **{k: extra[k] for k in _RECORD_FIELDS if k in extra}}
        trace = fields.pop("trace", None)
        if trace and self.project:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{trace}"
        elif trace:
            entry["trace"] = trace
        entry.update({k: v for k, v in fields.items() if k in _EMITTED})
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure(project: str | None = None, level: int = logging.INFO) -> None:
    """Send the gateway's logs to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("gateway")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    # The logging HOWTO's "Optimization" switches: our lines carry none of this, and collecting it
    # (a stack walk for the caller, thread and process names) is most of a record's cost.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    global _writer
    handler = _writer = LineWriter(sys.stderr)
    handler.setFormatter(JsonFormatter(project))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class LineWriter(logging.Handler):
    """Writes JSON lines to a stream, one write per batch of lines while invocations overlap.

    Each record is formatted in the caller's thread (its request context is there). Outside any
    invocation, and when the last running invocation ends with nothing written for `GATHER_S`, waiting
    lines are written at once, in the calling thread, so a quiet instance does not hold its last line
    back (Cloud Functions throttles the CPU between requests). Otherwise one writer thread writes what
    gathered, every `GATHER_S` at most.
    Under 16 connections that is the difference between 0.75 and 0.65 ms of CPU per `validate`
    (BENCHMARKS.md): every write releases the GIL, and with eight request threads each release is a
    contended hand-off. `flush` (called by logging at exit) writes whatever is still waiting.
    """

    GATHER_S = 0.05

    def __init__(self, stream: Any):
        super().__init__()
        self._stream = stream
        self._pending: list[str] = []
        self._active = 0
        self._ready = threading.Condition(threading.Lock())
        self._io = threading.Lock()
        self._writer_pid: int | None = None
        self._written_at = 0.0

    def begin(self) -> None:
        with self._ready:
            self._active += 1

    def end(self) -> None:
        with self._ready:
            self._active -= 1
            # The last invocation ended: write now, unless a write went out within GATHER_S (requests
            # are coming fast, so the writer thread gathers them; it writes within GATHER_S anyway).
            now = self._active <= 0 and time.monotonic() - self._written_at >= self.GATHER_S
        if now:
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._ready:
            self._pending.append(line)
            now = self._active <= 0  # outside any invocation (start-up, the CLI)
            if not now:
                if self._writer_pid != os.getpid():  # gunicorn forks after import: one writer per process
                    self._writer_pid = os.getpid()
                    threading.Thread(target=self._write_forever, name="gateway-log-writer", daemon=True).start()
                if len(self._pending) == 1:
                    self._ready.notify()
        if now:
            self.flush()

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: emit takes its own
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def flush(self) -> None:
        with self._io:
            with self._ready:
                lines, self._pending = self._pending, []
                if lines:
                    self._written_at = time.monotonic()
            self._write(lines)

    def _write_forever(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
            time.sleep(self.GATHER_S)
            self.flush()

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # nowhere left to say it


_writer: LineWriter | None = None


@contextlib.contextmanager
def invocation() -> Iterator[None]:
    """Around one request or message: its lines are written by the time it returns if it was the last
    one running and nothing was written within `GATHER_S`; otherwise the writer thread writes them
    within `GATHER_S`."""
    writer = _writer
    if writer is None:
        yield
        return
    writer.begin()
    try:
        yield
    finally:
        writer.end()
