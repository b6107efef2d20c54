"""Structured JSON log lines for Cloud Logging (https://cloud.google.com/logging/docs/structured-logging).

Each line carries `severity`, `message`, the trace (`logging.googleapis.com/trace`) and, where known,
the workflow, delivery id and job id. Fields come from a per-request context and from `extra=`.
Values that look like credentials are never logged: only whitelisted fields are emitted.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

CONTEXT_FIELDS = ("workflow", "delivery_id", "job_id", "key", "outcome", "route", "status")
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


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to every log line of the current request (or message)."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def reset(token: contextvars.Token) -> None:
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, in the shape Cloud Logging parses."""

    def __init__(self, project: str | None = None):
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"severity": record.levelname, "message": record.getMessage(),
                                 "logger": record.name, "time": self.formatTime(record)}
        fields = {**_context.get(), **{k: getattr(record, k) for k in CONTEXT_FIELDS + ("trace",) if hasattr(record, k)}}
        trace = fields.pop("trace", None)
        if trace and self.project:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{trace}"
        elif trace:
            entry["trace"] = trace
        entry.update({k: v for k, v in fields.items() if k in CONTEXT_FIELDS})
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure(project: str | None = None, level: int = logging.INFO) -> None:
    """Send the gateway's logs to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("gateway")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(project))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
