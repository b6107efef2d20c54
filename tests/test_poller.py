"""The poller's schedule and its one-event guarantee, with a fixed clock and the real local CARTO
job API (whose clock is the same fake clock)."""

from __future__ import annotations

import math

import jsonschema
import pytest

from gateway.events import parse_tracking
from gateway.local.sandbox import serve
from gateway.poller import RetryLater, Schedule
from tests.apptools import FakeClock, RecordingPublisher, build_app, settings_env
from tests.conftest import CARTO_TOKEN, ROOT, load_json
from tests.rigs import BODY

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


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sandbox(clock):
    server = serve(token=CARTO_TOKEN, default_duration_s=10.0, clock=clock.now)
    yield server
    server.stop()


def make_app(test_schemas, sandbox, tmp_path, clock, **extra):
    publisher = RecordingPublisher()
    env = settings_env(test_schemas, sandbox.url, tmp_path, GATEWAY_POLL_FIRST_S="1", **extra)
    return build_app(env, publisher=publisher, clock=clock.as_clock()), publisher


def submit(app, workflow="store-clusters", body=BODY, key="k1"):
    import json

    from gateway.intake import Inbound

    raw = json.dumps(body).encode()
    accepted = app.intake.accept(Inbound(app.registry.get(workflow), raw, body, {}, key, key))
    tracking = [m for t, m in app.publisher.messages if t == "workflow-jobs"][-1]
    return accepted, parse_tracking(tracking.data)


def test_a_job_is_followed_to_its_end_and_one_valid_event_is_published(test_schemas, sandbox, tmp_path, clock):
    app, publisher = make_app(test_schemas, sandbox, tmp_path, clock)
    accepted, tracking = submit(app)

    record = app.poller.handle(tracking)

    events = publisher.events()
    assert len(events) == 1 and record.outcome == "SUCCEEDED"
    jsonschema.validate(events[0]["data"], EVENT_SCHEMA)
    assert events[0]["attributes"]["ce-id"] == f"{accepted.job_id}:SUCCEEDED"
    assert 10.0 <= clock.now() - tracking.submitted_at <= 12.5  # seen within 25 % of the 10 s run
    assert record.checks <= math.ceil(math.log(10, 1.25)) + 3


def test_a_far_next_check_asks_pubsub_to_redeliver_and_keeps_the_count(test_schemas, sandbox, tmp_path, clock):
    app, publisher = make_app(test_schemas, sandbox, tmp_path, clock, GATEWAY_POLL_INLINE_S="3")
    _, tracking = submit(app)

    with pytest.raises(RetryLater):
        app.poller.handle(tracking)
    checks = app.ledger.get(tracking.key).checks
    clock.advance(20)
    record = app.poller.handle(tracking)

    assert checks >= 2 and record.checks > checks and record.outcome == "SUCCEEDED"
    assert len(publisher.events()) == 1


def test_a_redelivered_message_after_the_end_publishes_the_same_event_id_only(test_schemas, sandbox, tmp_path, clock):
    app, publisher = make_app(test_schemas, sandbox, tmp_path, clock)
    _, tracking = submit(app)
    app.poller.handle(tracking)

    for _ in range(3):
        app.poller.handle(tracking)

    assert len(publisher.events()) == 1


def test_a_publish_failure_after_the_end_is_retried_with_the_same_outcome(test_schemas, sandbox, tmp_path, clock):
    from gateway.errors import PublishUnavailable

    app, publisher = make_app(test_schemas, sandbox, tmp_path, clock)
    accepted, tracking = submit(app)
    publisher.fail_next = 1

    with pytest.raises(PublishUnavailable):
        app.poller.handle(tracking)
    clock.advance(3600)  # whatever CARTO would say now, the recorded outcome stands
    app.poller.handle(tracking)

    assert [e["attributes"]["ce-id"] for e in publisher.events()] == [f"{accepted.job_id}:SUCCEEDED"]


def test_a_job_past_its_deadline_yields_one_timed_out_event(test_schemas, sandbox, tmp_path, clock):
    app, publisher = make_app(test_schemas, sandbox, tmp_path, clock)
    sandbox.faults.never_finish()
    _, tracking = submit(app, "slow-report", {"region": "emea"})

    record = app.poller.handle(tracking)

    assert record.outcome == "TIMED_OUT"
    assert clock.now() == pytest.approx(tracking.deadline_at)
    assert [e["attributes"]["outcome"] for e in publisher.events()] == ["TIMED_OUT"]


def test_carto_down_during_polling_does_not_end_the_job(test_schemas, sandbox, tmp_path, clock):
    app, publisher = make_app(test_schemas, sandbox, tmp_path, clock)
    _, tracking = submit(app)
    sandbox.faults.error("status", status=503, count=12)

    record = app.poller.handle(tracking)

    assert record.outcome == "SUCCEEDED" and len(publisher.events()) == 1
