"""What an operator can do from the console: cancel a running job or a delivery still waiting for one,
re-run a finished delivery.

Both take the gateway's own paths (admission's cancel: the poller's, as `DELETE /jobs/{id}` does, for a
job; for a delivery without one, its end without a job and its place handed on; the intake's claim,
submit and track for a re-run), are recorded on the delivery in the ledger (`note_action`) and are logged
with who did it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway import logs
from gateway.app import App
from gateway.errors import ActionRefused, NotFound
from gateway.intake import RerunPlan
from gateway.ledger import FINISHED, QUEUED, Delivery
from gateway.workflows import Workflow

log = logging.getLogger("gateway.console")
CANCEL, RERUN = "cancel", "rerun"


@dataclass(frozen=True)
class Done:
    """What an action did: the delivery to show next and which notice it gets (console.app.NOTICES)."""

    key: str
    notice: str


def delivery(app: App, key: str) -> Delivery:
    record = app.ledger.get(key)
    if record is None:
        raise NotFound(f"no delivery {key}")
    return record


def can_cancel(record: Delivery) -> bool:
    """A running job, or a delivery waiting (queued) for CARTO or for a slot of its workflow."""
    return record.outcome is None and (record.job_id is not None or record.state == QUEUED)


def can_rerun(record: Delivery) -> bool:
    return record.state == FINISHED


def next_attempt(record: Delivery) -> int:
    """The number of the next re-run of `record`: each confirmation page names one, so posting the same
    form twice is the same re-run (one job), and a new re-run needs a new confirmation."""
    return 1 + sum(1 for action in record.actions if action.get("action") == RERUN)


def cancel(app: App, key: str, operator: str) -> Done:
    """Cancel the job at CARTO, or the waiting delivery before it has one, and publish its one CANCELLED
    event (or the outcome it had already reached)."""
    record = delivery(app, key)
    if record.outcome is not None:
        raise ActionRefused(f"the job has already finished ({record.outcome}); there is nothing to cancel")
    if not can_cancel(record):
        raise ActionRefused("the delivery is being submitted to CARTO right now; open it again in a moment")
    with logs.bound(workflow=record.workflow, delivery_id=record.delivery_id, job_id=record.job_id,
                    key=record.key, operator=operator, action=CANCEL):
        final = app.admission.cancel(key)
        _note(app, key, CANCEL, operator, outcome=final.outcome)
        log.info("job cancelled from the console", extra=logs.event("console.cancelled", outcome=final.outcome))
    return Done(key, "cancelled")


def rerun_plan(app: App, record: Delivery) -> RerunPlan:
    """What a re-run of `record` would send (the intake's `rerun_plan`); ActionRefused when it cannot be re-run
    (not finished, its workflow gone, or the file's parameters no longer take its values)."""
    return app.intake.rerun_plan(record, _rerun_workflow(app, record))


def _rerun_workflow(app: App, record: Delivery) -> Workflow:
    if not can_rerun(record):
        raise ActionRefused(f"only a finished delivery can be re-run; this one is {record.state}")
    workflow = app.registry.get(record.workflow)
    if workflow is None:
        raise ActionRefused(f"the workflow {record.workflow} is no longer defined")
    return workflow


# What the re-run's record notes for each part of the plan that is not what the original sent.
_CHANGED = {"query": ("call_changed", "original_query"), "connection": ("connection_changed", "original_connection"),
            "api_base_url": ("base_url_changed", "original_api_base_url")}


def rerun(app: App, key: str, attempt: int, operator: str, confirmed: str) -> Done:
    """Run the delivery again as a new delivery linked to it (its parameters in the workflow file's CALL, on its
    connection and at its CARTO base URL, as the file is now; its own job and event), only if that is still
    what the operator confirmed (`confirmed`: the plan's digest on the confirmation page), else ActionRefused
    with nothing sent. The new record notes each part that is not what the original sent."""
    original = delivery(app, key)
    workflow = _rerun_workflow(app, original)  # one reading of the file for the plan and the re-run
    changes = app.intake.rerun_plan(original, workflow).changes(original)
    with logs.bound(workflow=original.workflow, delivery_id=original.delivery_id, key=original.key,
                    operator=operator, action=RERUN):
        accepted = app.intake.rerun(original, workflow, attempt, confirmed=confirmed)
        if not accepted.duplicate:
            noted: dict[str, Any] = {}
            for part, (was, _) in changes.items():
                flag, field = _CHANGED[part]
                noted.update({flag: True, field: was})
            _note(app, original.key, RERUN, operator, new_key=accepted.key, job_id=accepted.job_id)
            _note(app, accepted.key, "created as a re-run", operator, rerun_of=original.key, **noted)
        said = logs.event("console.rerun", job_id=accepted.job_id)
        if changes:
            log.info("delivery re-run from the console with the workflow file's %s, not the original's: %s",
                     ", ".join(changes), "; ".join(f"{part} {now} (was: {was})" for part, (was, now) in changes.items()),
                     extra=said)
        else:
            log.info("delivery re-run from the console with the original's CALL, connection and base URL", extra=said)
    return Done(accepted.key, "rerun-again" if accepted.duplicate else "rerun-queued" if accepted.queued else "rerun")


def _note(app: App, key: str, action: str, operator: str, **detail: Any) -> None:
    app.ledger.note_action(key, {"action": action, "by": operator, "at": app.clock.now(), **detail})
