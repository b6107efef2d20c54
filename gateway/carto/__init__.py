"""CARTO's SQL API: the client (`gateway.carto.client`, I/O) and the rules that read its answers in
either documented dialect (`gateway.carto.dialects`, pure). Every name is importable from here."""

from __future__ import annotations

from gateway.carto.client import (
    MAX_RETRY_WAIT_S,
    CartoClient,
    ClientCredentials,
    QueryTimedOut,
    StaticToken,
    SubmitOutcomeUnknown,
    TokenSource,
)
from gateway.carto.dialects import (
    CANCELLED,
    DIALECTS,
    FAILED,
    OUTCOMES,
    SQL_API,
    SUCCEEDED,
    TIMED_OUT,
    WORKFLOWS,
    JobStatus,
    delivery_marker,
    delivery_metadata,
    dialect_of,
    job_id_of,
    jobs_of,
    key_hash,
    output_table_of,
    parse_status,
    strip_secrets,
)

__all__ = [
    "CANCELLED", "DIALECTS", "FAILED", "MAX_RETRY_WAIT_S", "OUTCOMES", "SQL_API", "SUCCEEDED", "TIMED_OUT",
    "WORKFLOWS", "CartoClient", "ClientCredentials", "JobStatus", "QueryTimedOut", "StaticToken", "SubmitOutcomeUnknown",
    "TokenSource", "delivery_marker", "delivery_metadata", "dialect_of", "job_id_of", "jobs_of", "key_hash",
    "output_table_of", "parse_status", "strip_secrets",
]
