"""Structured logs for Cloud Logging: JSON lines with severity, the trace of the request, and the
workflow, delivery id and job id; the trace travels from the webhook into the completion event."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import time

import flask
import pytest

from gateway import logs
from gateway.events import parse_tracking
from tests.apptools import FakeClock, RecordingPublisher, build_app, function_client, settings_env
from tests.constants import CARTO_TOKEN, SECRET
from tests.stackutil import signed_headers

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BODY = json.dumps({"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}).encode()


@pytest.mark.parametrize("headers, expected", [
    ({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}, TRACE),
    ({"X-Cloud-Trace-Context": f"{TRACE.upper()}/1;o=1"}, TRACE),
    ({"traceparent": "garbage"}, None),
    ({}, None),
])
def test_the_trace_id_comes_from_traceparent_or_the_cloud_header(headers, expected):
    assert logs.trace_id(headers) == expected


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("test-project"))
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_a_webhook_logs_json_lines_that_carry_trace_workflow_delivery_and_job(test_schemas, tmp_path, captured,
                                                                              make_sandbox):
    sandbox = make_sandbox(token=CARTO_TOKEN, default_duration_s=0.1)
    clock = FakeClock(start=time.time())  # signatures are checked against it
    publisher = RecordingPublisher()
    app = build_app(settings_env(test_schemas, sandbox.url, tmp_path), publisher=publisher, clock=clock)
    headers = {**signed_headers(SECRET, BODY, "msg_trace_1"), "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    answer = function_client(app).post("/hooks/store-clusters", data=BODY, headers=headers).get_json()
    tracking = parse_tracking(publisher.on("workflow-jobs")[0].data)
    time.sleep(0.3)  # the job (0.1 s of real time) is over: the first check sees its end
    clock.advance(1)
    app.poller.handle(tracking)

    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    answered = next(line for line in lines if line["message"].startswith("answered POST"))
    assert answered["severity"] == "INFO"
    assert answered["logging.googleapis.com/trace"] == f"projects/test-project/traces/{TRACE}"
    assert (answered["workflow"], answered["delivery_id"], answered["job_id"]) == (
        "store-clusters", "msg_trace_1", answer["job_id"])
    event = publisher.on("workflow-job-events")[0]
    assert tracking.trace == TRACE and json.loads(event.data)["trace"] == TRACE
    assert json.loads(event.data)["delivery_id"] == "msg_trace_1"


# --- LineWriter: batched while invocations overlap, never held back by an idle instance ----------------

@pytest.fixture
def writer(monkeypatch):
    stream = io.StringIO()
    handler = logs.LineWriter(stream)
    handler.setFormatter(logs.JsonFormatter("test-project"))
    logger = logging.getLogger("gateway.test-writer")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    monkeypatch.setattr(logs, "_writer", handler)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


def test_outside_any_invocation_a_line_is_written_at_once(writer):
    logger, stream = writer
    logger.info("starting")
    assert lines(stream) == ["starting"]


def test_an_invocation_has_its_lines_written_by_the_time_it_returns(writer):
    logger, stream = writer
    with logs.invocation():
        logger.info("answered")
    assert lines(stream) == ["answered"]


def test_overlapping_invocations_write_together_when_the_last_ends(writer, monkeypatch):
    monkeypatch.setattr(logs.LineWriter, "GATHER_S", 30.0)  # the writer thread stays out of the way
    logger, stream = writer
    with logs.invocation():
        with logs.invocation():
            logger.info("inner")
        logger.info("outer")
        assert lines(stream) == []  # another invocation is still running
    assert lines(stream) == ["inner", "outer"]


def test_while_invocations_keep_overlapping_the_writer_thread_writes_within_its_gathering_time(writer):
    logger, stream = writer
    with logs.invocation():
        logger.info("during a long poll")
        deadline = time.monotonic() + 10 * logs.LineWriter.GATHER_S + 5
        while not lines(stream) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lines(stream) == ["during a long poll"]


# --- the `event` field: what each line says happened ------------------------------------------------------

def test_a_line_names_its_event_and_carries_the_event_fields(captured):
    logging.getLogger("gateway.test").info("finished", extra=logs.event(
        "job.finished", workflow="w", outcome="FAILED", duration_s=1.5, checks=4, token="s3cr3t"))

    (line,) = [json.loads(text) for text in captured.getvalue().splitlines()]
    assert (line["event"], line["workflow"], line["outcome"], line["duration_s"], line["checks"]) == (
        "job.finished", "w", "FAILED", 1.5, 4)
    assert "token" not in line  # only the listed fields are ever written


def test_an_event_name_not_in_the_list_is_refused():
    with pytest.raises(ValueError, match="unknown log event"):
        logs.event("delivery.acepted")
# --- The per-request context ends with its request, however the request ends -------------------------

class Interrupted(BaseException):
    """What a worker timeout raises through a request (gunicorn's abort is a SystemExit): not an Exception."""


def context_of_next_line() -> dict:
    record = logging.LogRecord("gateway.test", logging.INFO, __file__, 1, "next request", None, None)
    return json.loads(logs.JsonFormatter().format(record))


@pytest.mark.parametrize("surface", ["webhook", "console"])
def test_a_request_interrupted_midway_leaks_no_log_context_into_the_next(surface, monkeypatch, test_schemas, tmp_path):
    from gateway import http
    from gateway.console import app as console_app

    module = http if surface == "webhook" else console_app
    app = build_app(settings_env(test_schemas, "http://127.0.0.1:9", tmp_path))

    def interrupted_route(*args):
        logs.bind(workflow="store-clusters", delivery_id="msg_interrupted", job_id="job-interrupted")
        raise Interrupted

    monkeypatch.setattr(module, "_route", interrupted_route)
    monkeypatch.setattr(console_app, "caller", lambda app, request: "local operator")
    with function_client(app, surface).application.test_request_context("/hooks/store-clusters", method="POST",
                                                                        headers={"Origin": "http://localhost"}):
        thread = contextvars.copy_context()  # a request thread of the server, apart from the suite's own context
        with pytest.raises(Interrupted):
            thread.run(module.handle, app, flask.request)
    line = thread.run(context_of_next_line)
    assert not {"route", "workflow", "delivery_id", "job_id"} & set(line), line
