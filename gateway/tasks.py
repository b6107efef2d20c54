"""Scheduling status checks as Cloud Tasks: the `Scheduler` of gateway/poller.py (docs/architecture.md, "One job").

Each check is one task on `GATEWAY_TASKS_QUEUE`, due at the check's time, whose HTTP target is the
`poll` function (`GATEWAY_POLL_URL`) with an OIDC token of `GATEWAY_TASKS_SERVICE_ACCOUNT` (audience:
that URL). The request is a CloudEvent in HTTP binary mode (`ce-*` headers, the check's JSON as
the body), so `poll` stays one CloudEvent function for both of its triggers and tells a check
from a Pub/Sub push by `ce-type`.

The task name is a hash of the delivery key plus the check's index on the schedule: a retried
invocation that schedules the same check gets ALREADY_EXISTS, which counts as done. The hash
comes first, so names spread over Cloud Tasks' key space instead of sharing a prefix.

google-cloud-tasks is imported on the first schedule only, never on `webhook`'s cold start. With
`CLOUD_TASKS_EMULATOR_HOST` set, the client talks plain gRPC to the local emulator.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime
from typing import Any

from gateway.errors import TasksUnavailable
from gateway.events import CHECK_TYPE, SUBMIT_TYPE, Check, Handoff, check_body, handoff_body

CREATE_TIMEOUT_S = 10.0


def task_id(key: str, index: int | str) -> str:
    """The task's id: 32 hex digits of sha256(delivery key), then the check's index on the schedule
    (or `s{attempt}` for a submit hand-off)."""
    return f"{hashlib.sha256(key.encode()).hexdigest()[:32]}-{index}"


def task_request(check: Check, *, queue: str, poll_url: str, service_account: str | None,
                 source: str) -> dict[str, Any]:
    """The CreateTaskRequest of one check, as plain data (google-cloud-tasks accepts it as is)."""
    name = task_id(check.key, check.index)
    return _request(name, CHECK_TYPE, check.job_id, check_body(check), check.due_at, queue=queue,
                    poll_url=poll_url, service_account=service_account, source=source)


def handoff_request(handoff: Handoff, *, queue: str, poll_url: str, service_account: str | None,
                    source: str) -> dict[str, Any]:
    """The CreateTaskRequest of one submit hand-off (ce-type com.carto.workflows.job.submit)."""
    name = task_id(handoff.key, f"s{handoff.attempt}")
    return _request(name, SUBMIT_TYPE, name, handoff_body(handoff), handoff.due_at, queue=queue,
                    poll_url=poll_url, service_account=service_account, source=source)


def _request(name: str, ce_type: str, subject: str, body: bytes, due_at: float, *, queue: str, poll_url: str,
             service_account: str | None, source: str) -> dict[str, Any]:
    headers = {"ce-specversion": "1.0", "ce-type": ce_type, "ce-source": source, "ce-id": name,
               "ce-subject": subject, "content-type": "application/json"}
    http_request: dict[str, Any] = {"url": poll_url, "http_method": "POST", "headers": headers, "body": body}
    if service_account:
        http_request["oidc_token"] = {"service_account_email": service_account, "audience": poll_url}
    return {"parent": queue,
            "task": {"name": f"{queue}/tasks/{name}",
                     "schedule_time": datetime.fromtimestamp(due_at, tz=UTC),
                     "http_request": http_request}}


class CloudTasksScheduler:
    """Creates check tasks through google-cloud-tasks; ALREADY_EXISTS is success, any other failure
    is TasksUnavailable (the invocation fails and its own trigger retries it)."""

    def __init__(self, *, queue: str | None, poll_url: str | None, service_account: str | None, source: str,
                 emulator_host: str | None = None, timeout_s: float = CREATE_TIMEOUT_S):
        self.queue, self.poll_url, self.service_account = queue, poll_url, service_account
        self.source, self.emulator_host, self.timeout_s = source, emulator_host, timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def schedule(self, check: Check) -> None:
        self._create(lambda queue, url: task_request(check, queue=queue, poll_url=url,
                                                     service_account=self.service_account, source=self.source))

    def hand_off(self, handoff: Handoff) -> None:
        """Schedule the submit hand-off of a queued delivery (the same queue and target as the checks)."""
        self._create(lambda queue, url: handoff_request(handoff, queue=queue, poll_url=url,
                                                        service_account=self.service_account, source=self.source))

    def _create(self, build: Any) -> None:
        if not (self.queue and self.poll_url):
            raise TasksUnavailable("GATEWAY_TASKS_QUEUE and GATEWAY_POLL_URL must be set to schedule tasks")
        from google.api_core import exceptions

        try:
            self.client().create_task(request=build(self.queue, self.poll_url), timeout=self.timeout_s)
        except exceptions.AlreadyExists:
            return  # the same task, scheduled by an earlier try of this invocation (or a twin)
        except (exceptions.GoogleAPIError, OSError) as exc:
            raise TasksUnavailable(f"could not schedule a task: {type(exc).__name__}: {exc}") from None

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import tasks_v2

                if self.emulator_host:
                    import grpc
                    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

                    channel = grpc.insecure_channel(self.emulator_host)
                    self._client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
                else:
                    self._client = tasks_v2.CloudTasksClient()
            return self._client
