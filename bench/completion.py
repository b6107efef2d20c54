"""Completion detection: for jobs of 2 s, 30 s and 5 min, the time from the job's end
(the local CARTO API knows its `done_at`) to the completion event's publish time on the emulator, and the
status checks `poll` made, under the polling settings the product ships (none overridden here).

All jobs run at once, in real time, on their own stacks (`bench.stacks.completion_stack`), while the
other benchmarks run; the result is read at the end.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from standardwebhooks.webhooks import Webhook

from bench import stacks
from bench.load import BODY, signed_headers

# job length (s) -> how many jobs of that length (at most 2: see CompletionRun).
JOBS = {2.0: 2, 30.0: 2, 300.0: 2}


def target_latency_s(duration_s: float) -> float:
    """The bound on job end → event: max(2 s, 25 % of the run time)."""
    return max(2.0, 0.25 * duration_s)


def target_checks(duration_s: float) -> int:
    """The bound on status checks: ⌈log₁.₂₅(duration / 1 s)⌉ + 3."""
    return math.ceil(math.log(max(duration_s, 1.0), 1.25)) + 3


def workflow_name(duration_s: float) -> str:
    """The bench workflow whose procedure runs `duration_s` seconds."""
    return f"bench-job-{duration_s:g}s"


@dataclass(frozen=True)
class Detection:
    """One job: its run time, how late its event was published after it ended, how many checks it took."""

    duration_s: float
    job_id: str
    latency_s: float
    checks: int
    target_latency_s: float
    target_checks: int
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompletionRun:
    """Jobs submitted through `webhook`, one stack per job length; `collect` waits for their events.

    One stack (and so one push subscription) per job length: the emulator pushes at most two messages
    of a subscription at a time, and a `poll` invocation holds its push for up to
    GATEWAY_POLL_INLINE_S (300 s) while it sleeps between checks, so on one subscription the short jobs
    would queue behind the 5-minute ones. Pub/Sub itself pushes far more at once.
    """

    stacks: list[Any] = field(default_factory=list)
    inboxes: list[tuple[Any, str]] = field(default_factory=list)
    jobs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, state_dir: Path, pubsub_host: str, jobs: Mapping[float, int] = JOBS) -> CompletionRun:
        run = cls()
        try:
            for duration, count in sorted(jobs.items(), reverse=True):
                run._start_stack(state_dir / f"{duration:g}s", pubsub_host, duration, count)
        except BaseException:
            run.stop()
            raise
        return run

    def _start_stack(self, state_dir: Path, pubsub_host: str, duration: float, count: int) -> None:
        from google.cloud import pubsub_v1

        name = workflow_name(duration)
        stack = stacks.completion_stack(state_dir, pubsub_host, {name: duration}, f"bench-completion-{duration:g}s")
        self.stacks.append(stack)
        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(stack.project, "bench-events")
        subscriber.create_subscription(request={"name": path, "ack_deadline_seconds": 60,
                                                "topic": f"projects/{stack.project}/topics/{stack.topics['events']}"})
        self.inboxes.append((subscriber, path))
        for _ in range(count):
            self.jobs[_submit(stack, name)] = duration

    def collect(self, timeout_s: float) -> list[Detection]:
        """Wait (up to `timeout_s`) for every job's event; one Detection per job that got one."""
        events: dict[str, tuple[float, dict[str, Any]]] = {}
        deadline = time.monotonic() + timeout_s
        while len(events) < len(self.jobs) and time.monotonic() < deadline:
            got = sum(_drain(subscriber, path, events) for subscriber, path in self.inboxes)
            if not got:
                time.sleep(1.0)
        done_at = {job.external_id: job.done_at for stack in self.stacks for job in stack.sandbox.jobs()}
        return [Detection(duration, job_id, round(events[job_id][0] - done_at[job_id], 3),
                          events[job_id][1]["checks"], target_latency_s(duration), target_checks(duration),
                          events[job_id][1]["outcome"])
                for job_id, duration in self.jobs.items() if job_id in events]

    def stop(self) -> None:
        for subscriber, path in self.inboxes:
            try:
                subscriber.delete_subscription(subscription=path)
            finally:
                subscriber.close()
        for stack in self.stacks:
            stack.stop()


def _submit(stack: Any, workflow: str) -> str:
    data = json.dumps(BODY)
    answer = requests.post(f"{stack.url('webhook')}/hooks/{workflow}", data=data.encode(),
                           headers=signed_headers(Webhook(stacks.SECRET), data), timeout=30)
    if answer.status_code != 202:
        raise RuntimeError(f"completion job for {workflow} was not accepted: {answer.status_code} {answer.text}")
    return answer.json()["job_id"]


def _drain(subscriber: Any, path: str, events: dict[str, tuple[float, dict[str, Any]]]) -> int:
    """Pull what is there into `events` (job id → publish time, data); how many arrived."""
    answer = subscriber.pull(request={"subscription": path, "max_messages": 100}, timeout=30)
    for received in answer.received_messages:
        message = received.message
        events[message.attributes["job_id"]] = (message.publish_time.timestamp(), json.loads(message.data))
    if answer.received_messages:
        subscriber.acknowledge(request={"subscription": path, "ack_ids": [r.ack_id for r in answer.received_messages]})
    return len(answer.received_messages)
