"""The poller's schedule, one check per invocation with the next one scheduled as a task, and its
one-event guarantee, with a fixed clock, the real local CARTO job API (whose clock is the same fake
clock) and the recording Scheduler seam (Cloud Tasks' naming rule: a name is created once)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import jsonschema
import pytest

from gateway.errors import CartoUnavailable, PublishUnavailable, TasksUnavailable
from gateway.events import parse_check, parse_tracking
from gateway.ledger.sqlite import SqliteLedger
from gateway.poller import Schedule
from tests.apptools import RecordingPublisher, RecordingScheduler, build_app, settings_env
from tests.constants import CARTO_TOKEN, ROOT, load_json
from tests.rigs import BODY

pytestmark = pytest.mark.sandbox(token=CARTO_TOKEN, default_duration_s=10.0, on_clock=True)

EVENT_SCHEMA = load_json(ROOT / "schemas" / "job-event.schema.json")


@pytest.mark.parametrize("duration", [0.5, 2, 30, 300, 3600, 21600])
def test_the_schedule_sees_a_job_end_within_a_quarter_of_its_run_time(duration):
    schedule = Schedule(first_s=1.0, factor=1.25)
    checks, t = 0, -1.0
    while True:
        t = schedule.next_after(t)
        checks += 1
        if t >= duration:
            break
    assert t - duration <= max(1.0, 0.25 * duration)
    assert checks <= math.ceil(math.log(max(duration, 1.0), 1.25)) + 3


def test_next_after_is_strictly_later_and_on_the_grid():
    schedule = Schedule(first_s=1.0, factor=1.25)
    assert schedule.next_after(-1) == 1.0
    assert schedule.next_after(1.0) == 1.25
    assert schedule.next_after(1.3) == pytest.approx(1.5625)


class CountingLedger(SqliteLedger):
    """A SQLite ledger that counts its writes by method."""

    WRITES = ("claim", "release", "take_over", "mark_submitted", "mark_tracked", "finish", "note_checks",
              "mark_published")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes: dict[str, int] = {}

    def __getattribute__(self, name):
        attribute = super().__getattribute__(name)
        if name in CountingLedger.WRITES:
            writes = super().__getattribute__("writes")

            def counted(*args, **kwargs):
                writes[name] = writes.get(name, 0) + 1
                return attribute(*args, **kwargs)
            return counted
        return attribute


def make_app(test_schemas, sandbox, tmp_path, clock, *, ledger=None, **extra):
    publisher, scheduler = RecordingPublisher(), RecordingScheduler()
    env = settings_env(test_schemas, sandbox.url, tmp_path, GATEWAY_POLL_FIRST_S="1", **extra)
    from gateway.app import App
    from gateway.settings import Settings

    if ledger is not None:
        app = App.build(Settings.from_env(env), publisher=publisher, clock=clock, scheduler=scheduler,
                        ledger=ledger)
    else:
        app = build_app(env, publisher=publisher, clock=clock, scheduler=scheduler)
    return app, publisher, scheduler


def submit(app, workflow="store-clusters", body=BODY, key="k1"):
    import json

    from gateway.intake import Inbound

    raw = json.dumps(body).encode()
    accepted = app.intake.accept(Inbound(app.registry.get(workflow), raw, body, {}, key, key))
    tracking = [m for t, m in app.publisher.messages if t == "workflow-jobs"][-1]
    return accepted, parse_tracking(tracking.data)


def run_next(app, scheduler, clock):
    """Cloud Tasks' part: the first pending task, at its due time; what `poll` returned."""
    request = scheduler.take_next()
    assert request is not None, "no check is scheduled"
    due = request["task"]["schedule_time"].timestamp()
    clock.advance(max(0.0, due - clock.now()))
    check = parse_check(request["task"]["http_request"]["body"])
    return app.poller.handle(check), request


def follow(app, tracking, scheduler, clock, limit=200):
    """The first trigger, then every task until the job is over; the final record and the invocations."""
    record, invocations = app.poller.handle(tracking), 1
    while record is None and invocations < limit:
        record, _ = run_next(app, scheduler, clock)
        invocations += 1
    return record, invocations


def test_a_job_is_followed_to_its_end_and_one_valid_event_is_published(test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    accepted, tracking = submit(app)

    record, invocations = follow(app, tracking, scheduler, clock)

    events = publisher.events()
    assert len(events) == 1 and record.outcome == "SUCCEEDED"
    jsonschema.validate(events[0]["data"], EVENT_SCHEMA)
    assert events[0]["attributes"]["ce-id"] == f"{accepted.job_id}:SUCCEEDED"
    assert 10.0 <= clock.now() - tracking.submitted_at <= 12.5  # seen within 25 % of the 10 s run
    assert record.checks <= math.ceil(math.log(10, 1.25)) + 3 and events[0]["data"]["checks"] == record.checks
    assert invocations > 1 and not scheduler.pending  # tasks did the later checks; none is left


def test_the_first_trigger_checks_inline_only_within_its_budget_then_schedules_one_task(
        test_schemas, sandbox, tmp_path, clock):
    app, _, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="3")
    _, tracking = submit(app)

    assert app.poller.handle(tracking) is None

    assert clock.now() - tracking.submitted_at <= 3.0  # no sleep past the inline budget
    [request] = scheduler.requests
    check = parse_check(request["task"]["http_request"]["body"])
    assert check.checks == len([s for s in clock.slept if s > 0]) and check.last_check_at == clock.now()
    assert request["task"]["schedule_time"].timestamp() == pytest.approx(
        tracking.submitted_at + Schedule().next_after(clock.now() - tracking.submitted_at))


def test_a_first_trigger_while_another_waits_inline_answers_at_once_with_its_first_check_a_task(
        test_schemas, sandbox, tmp_path, clock):
    app, _, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    _, waiting = submit(app, key="k1")
    _, behind = submit(app, key="k2")
    inside, release = threading.Event(), threading.Event()

    wait = clock.sleep

    def sleep(seconds):  # the first trigger on the other thread waits inline until released
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            release.wait(30)
        wait(seconds)

    clock.sleep = sleep  # the app's clock
    first = threading.Thread(target=app.poller.handle, args=(waiting,))
    first.start()
    try:
        assert inside.wait(30)
        slept = len(clock.slept)
        assert app.poller.handle(behind) is None
        assert len(clock.slept) == slept  # answered without waiting
    finally:
        release.set()
        first.join(30)
    [request] = [r for r in scheduler.requests if parse_check(r["task"]["http_request"]["body"]).key == behind.key]
    check = parse_check(request["task"]["http_request"]["body"])
    assert (check.checks, check.index) == (0, 0)  # its first check, due 1 s after submission, is a task
    assert request["task"]["schedule_time"].timestamp() == pytest.approx(behind.submitted_at + 1.0)


def test_the_next_first_trigger_waits_inline_again_once_the_other_has_answered(test_schemas, sandbox, tmp_path, clock):
    app, _, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="3")
    _, one = submit(app, key="k1")
    _, two = submit(app, key="k2")

    assert app.poller.handle(one) is None
    slept = len(clock.slept)
    assert app.poller.handle(two) is None

    assert len(clock.slept) > slept  # the second job's first checks were made inline too
    second = [parse_check(r["task"]["http_request"]["body"]) for r in scheduler.requests][-1]
    assert second.key == two.key and second.checks > 0


@pytest.mark.parametrize("duration", [30, 300, 3600, 21600])
def test_detection_and_checks_stay_within_bounds_for_long_jobs(test_schemas, tmp_path, clock, make_sandbox,
                                                                duration):
    sandbox = make_sandbox(token=CARTO_TOKEN, default_duration_s=float(duration), on_clock=True)
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    _, tracking = submit(app)
    record, invocations = follow(app, tracking, scheduler, clock, limit=500)

    ended = tracking.submitted_at + duration
    assert record.outcome == "SUCCEEDED" and len(publisher.events()) == 1
    assert 0 <= clock.now() - ended <= max(2.0, 0.25 * duration)
    assert record.checks <= math.ceil(math.log(duration, 1.25)) + 3
    assert invocations == len(scheduler.requests) + 1  # one task per later check, each scheduled once


def test_a_running_jobs_check_schedules_the_next_one_and_a_retry_of_it_schedules_nothing_new(
        test_schemas, sandbox, tmp_path, clock):
    app, _, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="1")
    _, tracking = submit(app)
    app.poller.handle(tracking)
    request = scheduler.take_next()
    check = parse_check(request["task"]["http_request"]["body"])
    clock.advance(check.due_at - clock.now())

    first = app.poller.handle(check)  # still running: the next check is scheduled
    retried = app.poller.handle(check)  # the queue delivers the same task again

    assert first is None and retried is None
    names = [r["task"]["name"] for r in scheduler.requests[1:]]
    assert len(names) == 2 and names[0] == names[1] and len(scheduler.pending) == 1
    assert scheduler.already_existed == 1
    following = parse_check(scheduler.requests[-1]["task"]["http_request"]["body"])
    assert following.checks == check.checks + 1 and following.index > check.index


def test_a_retried_task_reads_the_check_count_and_last_check_from_its_body(test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="1")
    _, tracking = submit(app)
    app.poller.handle(tracking)
    sandbox.faults.error("status", status=503, count=app.carto._attempts)  # every attempt of the next check

    request = scheduler.take_next()
    check = parse_check(request["task"]["http_request"]["body"])
    clock.advance(check.due_at - clock.now())
    with pytest.raises(CartoUnavailable):  # a 5xx: the queue retries this task
        app.poller.handle(check)
    clock.advance(30)
    record = app.poller.handle(check)

    assert record is not None and record.outcome == "SUCCEEDED"
    assert record.checks == check.checks + 1


def test_cloud_tasks_down_while_scheduling_fails_the_trigger_and_its_retry_follows_the_job(
        test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="1")
    _, tracking = submit(app)
    scheduler.fail_next = 1

    with pytest.raises(TasksUnavailable):  # a 5xx: Pub/Sub redelivers the tracking message
        app.poller.handle(tracking)
    record, _ = follow(app, tracking, scheduler, clock)

    assert record.outcome == "SUCCEEDED" and len(publisher.events()) == 1


def test_a_redelivered_message_after_the_end_publishes_the_same_event_id_only(test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    _, tracking = submit(app)
    follow(app, tracking, scheduler, clock)

    for _ in range(3):
        app.poller.handle(tracking)

    assert len(publisher.events()) == 1 and not scheduler.pending


def test_a_publish_failure_after_the_end_is_retried_with_the_same_outcome(test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    accepted, tracking = submit(app)
    publisher.fail_next = 1

    with pytest.raises(PublishUnavailable):
        follow(app, tracking, scheduler, clock)
    clock.advance(3600)  # whatever CARTO would say now, the recorded outcome stands
    app.poller.handle(tracking)

    assert [e["attributes"]["ce-id"] for e in publisher.events()] == [f"{accepted.job_id}:SUCCEEDED"]


def test_a_job_past_its_deadline_yields_one_timed_out_event(test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    sandbox.faults.never_finish()
    _, tracking = submit(app, "slow-report", {"region": "emea"})

    record, _ = follow(app, tracking, scheduler, clock)

    assert record.outcome == "TIMED_OUT"
    assert clock.now() == pytest.approx(tracking.deadline_at)
    assert [e["attributes"]["outcome"] for e in publisher.events()] == ["TIMED_OUT"]


def test_carto_down_during_polling_is_retried_and_does_not_end_the_job(test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    _, tracking = submit(app)
    sandbox.faults.error("status", status=503, count=12)

    failures = 0
    while True:
        try:
            record, _ = follow(app, tracking, scheduler, clock)
            break
        except CartoUnavailable:
            failures += 1
            clock.advance(1)

    assert failures >= 1 and record.outcome == "SUCCEEDED" and len(publisher.events()) == 1


@pytest.mark.parametrize("duration", [10, 3600])
def test_following_a_job_writes_its_progress_once_per_invocation_that_leaves_it_running(
        test_schemas, tmp_path, clock, make_sandbox, duration):
    sandbox = make_sandbox(token=CARTO_TOKEN, default_duration_s=float(duration), on_clock=True)
    ledger = CountingLedger(tmp_path / "counted.sqlite3")
    app, _, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, ledger=ledger)
    _, tracking = submit(app)
    record, invocations = follow(app, tracking, scheduler, clock, limit=500)

    assert record.outcome == "SUCCEEDED"
    notes = ledger.writes.pop("note_checks", 0)
    assert ledger.writes == {"claim": 1, "mark_submitted": 1, "mark_tracked": 1, "finish": 1, "mark_published": 1}
    assert notes == invocations - 1  # the inline checks in one write, then one per task; the last one finishes


def test_the_ledger_counts_every_status_check_while_the_job_runs_and_a_cancel_reports_them_all(
        test_schemas, tmp_path, clock, make_sandbox):
    sandbox = make_sandbox(token=CARTO_TOKEN, default_duration_s=600.0, on_clock=True)
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock)
    _, tracking = submit(app)
    made = []  # (checks in the ledger, status checks CARTO answered) after each invocation
    assert app.poller.handle(tracking) is None
    while clock.now() - tracking.submitted_at < 90:
        made.append((app.ledger.get(tracking.key).checks, sandbox.stats()["requests"]["status"]))
        assert run_next(app, scheduler, clock)[0] is None
    record = app.poller.cancel(app.ledger.get(tracking.key))
    checked = sandbox.stats()["requests"]["status"]

    assert len(made) > 10 and all(noted == checked_then for noted, checked_then in made)
    assert record.outcome == "CANCELLED" and record.checks == checked > 20
    assert publisher.events()[0]["data"]["checks"] == checked


def test_a_check_naming_another_job_or_impossible_progress_is_refused_without_a_status_check(
        test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="1")
    _, tracking = submit(app)
    app.poller.handle(tracking)
    check = parse_check(scheduler.requests[-1]["task"]["http_request"]["body"])
    clock.advance(check.due_at - clock.now())
    sandbox.faults.error("status", status=500, count=100)  # any status check now would fail the invocation

    forged = [replace(check, job_id="job_of_another_delivery"), replace(check, index=10**6),
              replace(check, checks=10**6), replace(check, last_check_at=clock.now() + 3600),
              replace(check, last_check_at=tracking.submitted_at - 3600)]
    answers = [app.poller.handle(message) for message in forged]

    assert answers == [None] * len(forged) and len(scheduler.requests) == 1 and not publisher.events()
    assert app.ledger.get(tracking.key).outcome is None
    sandbox.faults.clear()
    record, _ = follow(app, tracking, scheduler, clock)
    assert record.outcome == "SUCCEEDED" and len(publisher.events()) == 1


def test_a_tracking_message_naming_another_job_is_refused_and_the_record_decides_the_rest(
        test_schemas, sandbox, tmp_path, clock):
    app, publisher, scheduler = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="1")
    _, tracking = submit(app)

    assert app.poller.handle(replace(tracking, job_id="job_of_another_delivery")) is None
    assert not scheduler.requests and not publisher.events()
    record, _ = follow(app, replace(tracking, api_base_url="http://127.0.0.1:9", deadline_at=1.0), scheduler, clock)
    assert record.outcome == "SUCCEEDED" and len(publisher.events()) == 1
