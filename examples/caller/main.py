"""A Cloud Function that runs a workflow through the gateway: POST it a JSON body, get the job back.

Settings: GATEWAY_URL (the webhook function's URL) and WORKFLOW. Its service account must be one
the workflow's `google-id-token` scheme lists; the ID token comes from the metadata server.
"""

from __future__ import annotations

import os

import functions_framework
from workflow_gateway_client import GatewayError, trigger


@functions_framework.http
def run_workflow(request):
    """Trigger WORKFLOW with the request's JSON body; the caller's Idempotency-Key, if any, is passed on."""
    payload = request.get_json(silent=True)
    if payload is None:
        return {"error": "send a JSON body"}, 400
    try:
        run = trigger(os.environ["GATEWAY_URL"], os.environ["WORKFLOW"], payload,
                      idempotency_key=request.headers.get("Idempotency-Key"))
    except GatewayError as exc:
        # Retryable (the gateway stayed busy past the retries): 503, so this function's own caller retries.
        status = 503 if exc.retryable else exc.status if exc.status and 400 <= exc.status < 500 else 502
        return {"error": str(exc), "code": exc.code, "errors": [vars(e) for e in exc.errors]}, status
    return {"job_id": run.job_id, "idempotency_key": run.idempotency_key, "duplicate": run.duplicate}, 202
