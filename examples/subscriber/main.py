"""A Cloud Function subscribed to the gateway's completion events: one JSON log line per outcome.

Deploy it with deploy/deploy-subscriber.sh (a push subscription on the events topic, filtered on the
`workflow` and `outcome` attributes). Pub/Sub delivers at least once, so a job's event may arrive
more than once; every copy has the same `ce-id` (`{job_id}:{outcome}`), and this function acts on
the first and skips the others. The memory of ids is per instance: a copy that lands on another
instance is acted on there too. For side effects that must happen once across instances, make
`ce_id` the key of the effect itself (a Firestore `create()` of a document named by it, an
upsert, a unique constraint).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import functions_framework
from workflow_gateway_client import MalformedEvent, parse_event

REMEMBERED = 10_000  # ids kept per instance; redeliveries come within minutes, not after thousands of events
_seen: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()
_stdout = threading.Lock()  # print() writes the text and its newline apart: two threads could share a line


@functions_framework.cloud_event
def on_job_event(cloud_event):
    """Log the outcome of one finished job, once per ce-id."""
    try:
        event = parse_event(cloud_event)
    except MalformedEvent as exc:  # returning acks it: a message that is not an event never will be
        _log("WARNING", f"not a completion event: {exc}")
        return
    if not _first_time(event.ce_id):
        _log("DEBUG", "duplicate delivery skipped", ce_id=event.ce_id)
        return
    _log("INFO" if event.succeeded else "ERROR", f"workflow {event.workflow} job {event.job_id}: {event.outcome}",
         ce_id=event.ce_id, job_id=event.job_id, workflow=event.workflow, outcome=event.outcome,
         delivery_id=event.delivery_id, duration_s=event.duration_s,
         error=event.error.message if event.error else None, **_answer(event))


def _answer(event) -> dict:
    """The workflow's output rows, when its file asks the gateway for them (`result`): here they are logged;
    a real subscriber acts on them (notify, store, route) without a CARTO token of its own."""
    if event.result is None:
        return {}
    if not event.result.ok:
        return {"result_table": event.result.table, "result_error": event.result.error.message}
    return {"result_table": event.result.table, "rows": [dict(row) for row in event.result.rows],
            "truncated": event.result.truncated}


def _first_time(ce_id: str) -> bool:
    with _lock:
        if ce_id in _seen:
            return False
        _seen[ce_id] = None
        if len(_seen) > REMEMBERED:
            _seen.popitem(last=False)
        return True


def _log(severity: str, message: str, **fields) -> None:
    """One structured line on stdout: Cloud Logging reads `severity` and `message` from it."""
    line = json.dumps({"severity": severity, "message": message, **fields})
    with _stdout:
        print(line, flush=True)
