"""A local CARTO SQL job API for development, tests, benchmarks and soak runs.

Dev-only: keep `gateway/sandbox/` out of the deployed source (`.gcloudignore`).

Wire format (what the gateway's CARTO client can rely on; CARTO's SQL API reference,
https://docs.carto.com/carto-for-developers/reference/carto-api/sql-api, and "Executing workflows
via API", https://docs.carto.com/carto-user-manual/workflows/executing-workflows-via-api):

Auth: `Authorization: Bearer <token>` (or CARTO's `?access_token=`). With a token configured
(`CARTO_API_TOKEN` for `main`, `token=` for `serve`) a missing or different token is
`401 {"error": "Unauthorized", "status": 401}`; with none configured every caller is accepted.

`POST {base}/v3/sql/{connection}/job`
    body  `{"query": "CALL `p.d.proc`(@a,@b)", "queryParameters": {"a": 2, "b": "x"},
           "metadata": {...}}`   -- `metadata` (optional object) is on the job request of the CARTO 3
          SQL API reference; it is stored and answered back (unless a `drop_metadata` fault says
          otherwise). Whether real CARTO answers it back is not documented: `doctor` tells.
          Positional warehouses (`:1`, `$1`) take `queryParameters` as an array.
    200   the job object (below) as accepted: `status.state` PENDING, plus `"token": "<the caller's token>"`
          echoed like the real API (the gateway must strip it).
    400   `{"error": ..., "status": 400}` for a body that is not a JSON object, no `query`,
          `queryParameters` / `metadata` not objects.
    A CALL whose parameters do not bind is still ACCEPTED (200 + externalId); the job then reads
    DONE with an errorResult, exactly as BigQuery fails it while compiling.
    CARTO's GET variant `GET .../job?query=...&queryParameters=<json>` creates a job too.

`GET {base}/v3/sql/{connection}/job/{externalId}`  -> 200 job object (+ echoed `token`) | 404
`DELETE {base}/v3/sql/{connection}/job/{externalId}` -> 200 job object after cancelling | 404
    A job not yet DONE becomes DONE with errorResult
    `{"reason": "stopped", "message": "Job execution was cancelled: User requested cancellation"}`
    (BigQuery's); a DONE job is returned unchanged.
`GET {base}/v3/sql/jobs[?connection=c&limit=n]` -> 200 `{"jobs": [job object, ...]}` newest first,
    without `token`.

Dialects (`--dialect`, GATEWAY_SANDBOX_DIALECT): `workflows` (below, the default) or `sql-api`, the
CARTO 3 SQL API reference's: `{"jobId", "connection", "user", "query", "status":
"pending|running|success|failure", "error": {"code", "msg"}, "createdAt", "updatedAt", "provider"}`;
its `GET /v3/sql/jobs` is a bare array of the jobs not yet ended. Snowflake, PostgreSQL and Redshift
procedures (`"warehouse"` in GATEWAY_SANDBOX_PROCEDURES) bind and fail in their own words (families.py).
`POST /v3/sql/{connection}/query` answers `{rows, schema, meta}` for `SELECT 1` and the INFORMATION_SCHEMA
queries of `check --live` (catalog.py). With `connections=` given, any other connection is a 404.

Job object:
    {"externalId": "job_…", "connectionName": "carto_dw", "query": "...", "queryParameters": {...},
     "createdAt": "2025-01-01T00:00:00.000Z", "metadata": {...}?,   # only when submitted
     "status": {"state": "PENDING" | "RUNNING" | "DONE",
                "errorResult": {"reason", "message", "location"?}}}  # only when DONE and failed
    A job is PENDING for the first fifth of its run time, RUNNING until it ends, then DONE.
    errorResult (BigQuery's ErrorProto, inside `status` as in BigQuery's JobStatus):
      mistyped parameter  {"reason": "invalidQuery", "location": "query", "message":
                           "Query error: Cannot coerce expression @n to type INT64 at [1:82]"}
                          ([line:column] = 1-based position of the `@n` in the submitted query)
      missing parameter   invalidQuery, "Query error: Query parameter 'n' not found at [1:c]"
      arity / unknown @   invalidQuery, "Query error: No matching signature for procedure ..."
      unused parameter    invalidQuery, "... is not used in the query (sandbox check)"  -- stricter
                          than BigQuery on purpose, to catch mapping bugs
      unknown procedure   {"reason": "notFound", "location": "query",
                           "message": "Not found: Procedure project:dataset.procedure"}
      injected / override {"reason": "invalidQuery", "location": "query", "message": <given>}
Other errors: `{"error": message, "status": code}` -- 404 unknown path or job, 405 bad method,
    injected 5xx, 429 with `Retry-After`.

Admin (never authenticated, never faulted): `POST /_sandbox/faults` (a fault object or a list:
`{"route": "submit|status|cancel|list", "kind": "error|rate_limit|delay|drop|fail_job|never_finish",
"count": 1, "after": false, "status": 503, "retry_after": 1, "delay_s": 0.0, "message": "..."}`),
`DELETE /_sandbox/faults`, `GET /_sandbox/stats` (jobs, requests, faults, conditions and `peak_running`:
per procedure the most jobs running at once), `POST /_sandbox/reset`. Standing conditions:
`POST /_sandbox/conditions` `{"outage_s": 30, "outage": "error|refuse", "status": 503,
"submit_per_minute": 15, "submit_window_s": 60, "submit_delay_s": 12}` (each optional), `DELETE
/_sandbox/conditions`.
See `faults.py`.
"""

from __future__ import annotations

from gateway.local.sandbox.faults import Conditions, Fault, Faults
from gateway.local.sandbox.jobs import SandboxJob
from gateway.local.sandbox.procedures import Procedure, load_procedures
from gateway.local.sandbox.run import main
from gateway.local.sandbox.server import SandboxServer, serve

__all__ = ["Conditions", "Fault", "Faults", "Procedure", "SandboxJob", "SandboxServer", "load_procedures", "main", "serve"]
