"""Following jobs on the real emulators: functions-framework serving `webhook` and `poll`, the Pub/Sub
emulator pushing the tracking messages, the Cloud Tasks emulator calling `poll` for every later check,
the local CARTO job API running each job in real time.

Long jobs being followed never hold anything a short job needs: each of their checks is one short
invocation, and waiting is a task in the queue. A restarted Cloud Tasks emulator (every pending task
lost) delays a job only until the sweeper schedules its next check again.
"""

from __future__ import annotations

import time
import uuid

import pytest

from bench.stacks import completion_schemas
from gateway.app import App
from gateway.events import CHECK_TYPE
from gateway.local import emulators
from gateway.local.demos import DEV_SECRET
from gateway.local.devstack import LocalStack
from gateway.settings import Settings
from tests.stackutil import EventInbox, emulator_unavailable, post_hook

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

PROJECT = "follow-project"
BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
DURATIONS = {"long-job": 600.0, "short-job": 2.0, "mid-job": 4.0}
PUBLISHED_ONCE_WINDOW_S = 3.0  # after a job's event, how long the suite watches for another publish of it


@pytest.fixture(scope="module")
def stack(pubsub_emulator, tmp_path_factory):
    state = tmp_path_factory.mktemp("follow")
    schemas, overrides = completion_schemas(state / "schemas", DURATIONS)
    stack = LocalStack(state_dir=state, project=PROJECT, schemas_dir=schemas, pubsub_host=pubsub_emulator.host,
                       sandbox_procedures=overrides,
                       env={"GATEWAY_POLL_INLINE_S": "1", "GATEWAY_SWEEP_GRACE_S": "1"})
    try:
        stack.start()
    except (emulators.EmulatorMissing, RuntimeError, TimeoutError) as exc:
        stack.stop()
        emulator_unavailable("Cloud Tasks", exc)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def inbox(stack):
    return EventInbox(PROJECT, stack.topics["events"], f"follow-events-{uuid.uuid4().hex[:8]}")


def submit(stack: LocalStack, workflow: str) -> str:
    answer = post_hook(stack.url("webhook"), workflow, BODY, DEV_SECRET)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def pending_checks(stack: LocalStack) -> list[str]:
    """The job ids of the check tasks waiting in the emulator's queue."""
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(stack.tasks_host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        tasks = client.list_tasks(parent=stack.tasks_queue, timeout=10)
        return [t.http_request.headers["ce-subject"] for t in tasks
                if t.http_request.headers.get("ce-type") == CHECK_TYPE]
    finally:
        channel.close()


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)


def done_at(stack: LocalStack, job_id: str) -> float:
    return next(job.done_at for job in stack.sandbox.jobs() if job.external_id == job_id)


def test_the_emulator_restarted_mid_run_delays_a_job_only_until_the_sweeper_schedules_it_again(stack, inbox):
    job_id = submit(stack, "mid-job")
    wait_until(lambda: job_id in pending_checks(stack), 30, "the job's next check is a task")

    stack.restart_tasks()  # the emulator keeps tasks in memory: this one is gone
    lost = job_id not in pending_checks(stack)
    sweeper = App.build(Settings.from_env(stack.function_env())).sweeper
    reports = []

    def swept_and_done() -> bool:
        reports.append(sweeper.sweep().as_dict())
        inbox.drain(return_immediately=True)
        return any(e.attributes.get("job_id") == job_id for e in inbox.events)

    wait_until(swept_and_done, 60, "the job's event after the restart")
    time.sleep(1.0)  # room for a second, wrong event to show up
    inbox.drain(return_immediately=True)

    assert lost and sum(r["rescheduled"] for r in reports) >= 1
    events = [e for e in inbox.events if e.attributes.get("job_id") == job_id]
    assert {e.attributes["ce-id"] for e in events} == {f"{job_id}:SUCCEEDED"}


def test_ten_long_jobs_being_followed_do_not_delay_a_short_jobs_event(stack, inbox):
    long_jobs = [submit(stack, "long-job") for _ in range(10)]
    wait_until(lambda: set(long_jobs) <= set(pending_checks(stack)), 90,
               "every long job is past its first trigger, waiting as a task")

    started = time.time()
    job_id = submit(stack, "short-job")
    submission_s = time.time() - started
    event = inbox.wait_for(lambda e: e.attributes.get("job_id") == job_id, timeout_s=60)
    latency = time.time() - done_at(stack, job_id)  # job end → event received here (pulls every 0.2 s)

    bound = max(2.0, 0.25 * DURATIONS["short-job"]) + submission_s
    assert event.attributes["outcome"] == "SUCCEEDED"
    assert latency <= bound, f"the short job's event came {latency:.2f} s after it ended (bound {bound:.2f} s)"
    # still being followed, none finished: each one's next check is a task again (a check that is running
    # right now is out of the queue for that moment, on a loaded machine long enough to be listed without it)
    wait_until(lambda: set(long_jobs) <= set(pending_checks(stack)), 30, "every long job still followed")
    time.sleep(PUBLISHED_ONCE_WINDOW_S)  # a second publish of the short job's event would arrive by then
    inbox.drain(return_immediately=True)
    assert not [e for e in inbox.events if e.attributes.get("job_id") in long_jobs]
    assert len({e.message_id for e in inbox.events if e.attributes.get("job_id") == job_id}) == 1, "published twice"
