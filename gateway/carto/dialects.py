"""Reading CARTO's answers in either documented dialect (pure: no I/O).

CARTO documents two shapes for the same SQL job API:

    workflows   the "Executing workflows via API" page
                (https://docs.carto.com/carto-user-manual/workflows/executing-workflows-via-api):
                create answers `externalId` (plus the echoed `token`); a job reads
                `{"status": {"state": "PENDING"|"RUNNING"|"DONE", "errorResult": {reason, location, message}}}`
    sql-api     the CARTO 3 SQL API reference (CartoDB/documentation,
                app/content/carto3-api/sql-api/overview.md): create answers `jobId`; a job reads a flat
                `"status": "pending"|"running"|"success"|"failure"` with `"error": {"code", "msg"}`

Other warehouses and other public clients use more words for the same states (`done`, `failed`,
`cancelled`…): every word is compared case-insensitively. A failed job's error always keeps the
warehouse's own message (`errorResult.message` or `error.msg`) with its `reason` or `code`; when that
message says the procedure does not exist, the likely causes are added to it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SUCCEEDED, FAILED, TIMED_OUT, CANCELLED = "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"
OUTCOMES = (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED)
WORKFLOWS, SQL_API = "workflows", "sql-api"
DIALECTS = (WORKFLOWS, SQL_API)

RUNNING_WORDS = frozenset({"pending", "running", "queued", "submitted", "started", "executing", "in_progress",
                           "created", "scheduled"})
SUCCEEDED_WORDS = frozenset({"done", "success", "succeeded", "successful", "complete", "completed", "finished",
                             "finished_with_success"})
FAILED_WORDS = frozenset({"failed", "failure", "error", "errored", "aborted", "finished_with_error"})
CANCELLED_WORDS = frozenset({"cancelled", "canceled", "cancelling", "canceling", "killed"})
_SECRET_KEYS = frozenset({"token", "access_token", "accesstoken", "apikey", "api_key", "authorization", "client_secret"})
_ID_KEYS = ("externalId", "jobId", "id")
# BigQuery marks a job cancelled by the user as DONE with reason "stopped"
# (https://cloud.google.com/bigquery/docs/error-messages): that is a cancel, not a failure.
_STOPPED = "stopped"

# How each warehouse says "this procedure does not exist" (BigQuery, Snowflake, PostgreSQL and Redshift).
_PROCEDURE_GONE = re.compile(
    r"Not found: (Procedure|Routine)\b"
    r"|Unknown (user-defined )?(function|procedure)\b"
    r"|(Procedure|Function) .{0,300}? does not exist"
    r"|\b(procedure|function) \S+ does not exist",
    re.IGNORECASE | re.DOTALL)
PROCEDURE_GONE_HINT = ("likely cause: API access to the workflow was disabled, or the workflow was updated and "
                       "now runs under another procedure name; `python -m gateway check --live` shows which")
GATEWAY_METADATA = "carto-workflows-gateway"


@dataclass(frozen=True)
class JobStatus:
    """What CARTO says of one job; `outcome` is None while it is not over."""

    job_id: str
    state: str | None
    outcome: str | None
    error: dict[str, Any] | None
    output_table: str | None = None  # jobMetadata.workflowOutputTableName: where the run wrote its answer


def strip_secrets(value: Any) -> Any:
    """A copy of a CARTO answer without the echoed token (or any other credential-named field)."""
    if isinstance(value, dict):
        return {k: strip_secrets(v) for k, v in value.items() if str(k).lower() not in _SECRET_KEYS}
    if isinstance(value, list):
        return [strip_secrets(v) for v in value]
    return value


def job_id_of(body: Any) -> str | None:
    """The job id of a create answer or a listed job: `externalId` (workflows), `jobId` (sql-api) or `id`."""
    if not isinstance(body, Mapping):
        return None
    for key in _ID_KEYS:
        if body.get(key):
            return str(body[key])
    return None


def dialect_of(body: Any) -> str | None:
    """Which documented dialect a job body speaks: `workflows`, `sql-api`, or None when it shows neither."""
    if not isinstance(body, Mapping):
        return None
    if isinstance(body.get("status"), Mapping) or "externalId" in body:
        return WORKFLOWS
    if isinstance(body.get("status"), str) or "jobId" in body:
        return SQL_API
    return None


def jobs_of(body: Any) -> list[dict[str, Any]]:
    """The jobs of a `GET /v3/sql/jobs` answer, whose shape CARTO does not publish: a list, or a list
    under `jobs`, `rows`, `data` or `results`."""
    jobs = body
    if isinstance(body, Mapping):
        jobs = next((body[key] for key in ("jobs", "rows", "data", "results") if isinstance(body.get(key), list)), [])
    return [job for job in jobs if isinstance(job, dict)] if isinstance(jobs, list) else []


def parse_status(job_id: str, body: Mapping[str, Any]) -> JobStatus:
    """Apply CARTO's terminal-state rules to a job body in either dialect, tolerant of other words."""
    status = body.get("status")
    raw = status.get("state") if isinstance(status, Mapping) else status
    if raw is None:
        raw = body.get("state")
    state = str(raw) if raw is not None and not isinstance(raw, (Mapping, list)) else None
    error = _error_of(body, status)
    word = (state or "").strip().lower()
    stopped = error is not None and (error.get("reason") or "").lower() == _STOPPED
    if word in CANCELLED_WORDS or ((word in SUCCEEDED_WORDS or word in FAILED_WORDS) and stopped):
        return JobStatus(job_id, state, CANCELLED, error)
    if word in FAILED_WORDS or (word in SUCCEEDED_WORDS and error is not None):
        return JobStatus(job_id, state, FAILED, explain(error or {"reason": None, "location": None,
                                                                   "message": f"the job ended with status {state}"}))
    if word in SUCCEEDED_WORDS:
        return JobStatus(job_id, state, SUCCEEDED, None, output_table_of(body))
    return JobStatus(job_id, state, None, None)


def output_table_of(body: Mapping[str, Any]) -> str | None:
    """The full name of the table the run wrote its answer to, as CARTO names it at
    `jobMetadata.workflowOutputTableName` (a workflow whose "MCP Tool Output" component runs in Async
    mode; seen in CARTO's public agent demos, not on the Workflows page). None when the answer names none."""
    metadata = body.get("jobMetadata")
    name = metadata.get("workflowOutputTableName") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) and name else None


def _error_of(body: Mapping[str, Any], status: Any) -> dict[str, Any] | None:
    """The job's error as {reason, location, message}: Workflows' errorResult, or the SQL API's {code, msg}."""
    error = body.get("errorResult")
    if error is None and isinstance(status, Mapping):
        error = status.get("errorResult") or status.get("error")
    if error is None:
        error = body.get("error")
    if not error:
        return None
    if not isinstance(error, Mapping):
        return {"reason": None, "location": None, "message": str(error)}
    reason = error.get("reason", error.get("code"))
    message = next((error[key] for key in ("message", "msg", "detail", "error") if error.get(key)), None)
    return {"reason": _str_or_none(reason), "location": _str_or_none(error.get("location")),
            "message": str(message or reason or "job failed")}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def procedure_gone(message: str) -> bool:
    """Whether a warehouse's error message says the CALLed procedure does not exist."""
    return bool(_PROCEDURE_GONE.search(message or ""))


def explain(error: dict[str, Any]) -> dict[str, Any]:
    """The error, with the likely cause added to a message that says the procedure does not exist."""
    message = str(error.get("message") or "")
    if procedure_gone(message) and PROCEDURE_GONE_HINT not in message:
        return {**error, "message": f"{message} ({PROCEDURE_GONE_HINT})"}
    return error


# --- gateway metadata on each job -------------------------------------------------------------

def key_hash(key: str) -> str:
    """The delivery key's hash as jobs carry it (never the key, which may hold a sender's id)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def delivery_metadata(key: str, workflow: str, delivery_id: str | None) -> dict[str, Any]:
    """The `metadata` sent with each job: what finds it again after a crash. Never a secret."""
    return {"gateway": GATEWAY_METADATA, "delivery": key_hash(key), "workflow": workflow,
            "delivery_id": delivery_id}


def delivery_marker(key: str) -> str:
    """A comment appended to the CALL, the second way to find the job in CARTO's job list after a crash."""
    return f"/* carto-gateway:{key_hash(key)} */"


def carries_metadata(job: Mapping[str, Any], key: str) -> bool | None:
    """True/False when the job shows gateway metadata for this key or another; None when it shows none."""
    metadata = job.get("metadata")
    if not isinstance(metadata, Mapping) or "delivery" not in metadata:
        return None
    return metadata.get("delivery") == key_hash(key)


def carries_marker(job: Mapping[str, Any], key: str) -> bool:
    return delivery_marker(key) in str(job.get("query", ""))


def connection_of(job: Mapping[str, Any]) -> str | None:
    value = job.get("connectionName", job.get("connection"))
    return None if value is None else str(value)


def find_by_metadata(jobs: Iterable[Mapping[str, Any]], key: str) -> str | None:
    return next((job_id_of(job) for job in jobs if carries_metadata(job, key) and job_id_of(job)), None)


def find_by_marker(jobs: Iterable[Mapping[str, Any]], key: str) -> str | None:
    return next((job_id_of(job) for job in jobs if carries_marker(job, key) and job_id_of(job)), None)
