"""Each function builds its instance when its process starts, so a bad configuration stops the worker
instead of answering errors; and nothing any function answers is an HTML error page: what escapes a
handler is problem+json, a 500 carrying an incident id that its log line carries too."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import functions_framework
import pytest
import requests

from gateway import entrypoints, http
from gateway.console import app as console_app
from gateway.local import emulators
from tests.apptools import settings_env
from tests.constants import CARTO_TOKEN, ROOT

pytestmark = pytest.mark.stack  # starts functions-framework processes

SENTINEL = "value-SENTINEL-9c41"  # in the forced exception's message: never in an answer
TARGETS = ("webhook", "poll", "submit", "sweep", "console")
CLOUD_EVENT = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "//pubsub",
               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished", "Content-Type": "application/json"}


# --- a bad configuration stops the worker at start ---------------------------------------------------

def _start_webhook(env: dict[str, str], port: int, cwd=ROOT) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "functions_framework", "--target", "webhook",
                             "--source", str(ROOT / "main.py"), "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _answers_until_exit(process: subprocess.Popen, port: int, limit_s: float = 90) -> list[int]:
    """Every status the port answered while the process lived (a refused connection answers nothing)."""
    answered, deadline = [], time.monotonic() + limit_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            answered.append(requests.post(f"http://127.0.0.1:{port}/hooks/store-clusters", json={}, timeout=2).status_code)
        except requests.ConnectionError:
            time.sleep(0.05)
    return answered


@pytest.fixture
def deployed_env(test_schemas, tmp_path):
    """What the webhook gets deployed: its settings, every secret its workflows name, nothing of the test process."""
    env = settings_env(test_schemas, "http://127.0.0.1:9", tmp_path)
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env,
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{emulators.free_port()}"}


def test_a_workflow_naming_an_unset_secret_stops_the_webhook_at_start_naming_it(deployed_env):
    env = {k: v for k, v in deployed_env.items() if k != "STORE_CLUSTERS_SECRET"}
    port = emulators.free_port()
    process = _start_webhook(env, port)
    try:
        answered = _answers_until_exit(process, port)
        output = process.communicate(timeout=30)[0]
    finally:
        emulators.stop_process_group(process)

    assert process.returncode not in (0, None)
    assert "STORE_CLUSTERS_SECRET" in output and "function.unconfigured" in output
    assert answered == []  # it never served: no 500, no answer at all


def test_the_deployed_webhook_never_reads_a_local_dotenv(deployed_env, tmp_path):
    env = {k: v for k, v in deployed_env.items() if k != "STORE_CLUSTERS_SECRET"}
    (tmp_path / ".env").write_text(f"STORE_CLUSTERS_SECRET='{deployed_env['STORE_CLUSTERS_SECRET']}'\n")
    (tmp_path / "schemas").mkdir()  # the local secrets file sits beside a schemas directory, as `new` writes it
    port = emulators.free_port()
    process = _start_webhook(env, port, cwd=tmp_path)
    try:
        answered = _answers_until_exit(process, port)
        output = process.communicate(timeout=30)[0]
    finally:
        emulators.stop_process_group(process)
    assert process.returncode not in (0, None) and "STORE_CLUSTERS_SECRET" in output and answered == []


def test_the_same_webhook_with_the_secret_set_serves(deployed_env):
    port = emulators.free_port()
    process = _start_webhook(deployed_env, port)
    try:
        emulators.wait_for_port(port, 60, process)
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        emulators.stop_process_group(process)
    assert health.status_code == 200


# --- never an HTML error page ------------------------------------------------------------------------

class Recorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def functions(test_schemas, tmp_path, monkeypatch, make_sandbox):
    """target -> the real functions-framework app of main.py (its instance built at start from the
    environment, as deployed), and the gateway's log records."""
    sandbox = make_sandbox(token=CARTO_TOKEN)
    for name, value in settings_env(test_schemas, sandbox.url, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{emulators.free_port()}")
    recorder = Recorder()
    logging.getLogger("gateway").addHandler(recorder)
    signature = {"poll": "cloudevent", "submit": "cloudevent"}
    apps = {t: functions_framework.create_app(target=t, source=str(ROOT / "main.py"),
                                              signature_type=signature.get(t, "http")).test_client() for t in TARGETS}
    yield apps, recorder
    logging.getLogger("gateway").removeHandler(recorder)


def assert_problem(answer, recorder: Recorder) -> dict:
    assert answer.headers["Content-Type"] == "application/problem+json", answer.get_data(as_text=True)[:200]
    body = answer.get_json()
    assert body["status"] == answer.status_code and body["type"].startswith("/problems/")
    assert SENTINEL not in answer.get_data(as_text=True)
    if answer.status_code >= 500:
        assert body["incident"] in body["detail"]
        assert [r for r in recorder.records if getattr(r, "incident", None) == body["incident"]]
    return body


def _boom(*_args, **_kwargs):
    raise RuntimeError(SENTINEL)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/hooks/store-clusters", "/jobs/job_1", "/robots.txt", "/favicon.ico"])
def test_an_exception_escaping_any_function_is_problem_json_with_an_incident_id(functions, target, method, path,
                                                                               monkeypatch):
    apps, recorder = functions
    monkeypatch.setattr(entrypoints, target, _boom)
    headers = CLOUD_EVENT if target in ("poll", "submit") else {}
    answer = apps[target].open(path, method=method, headers=headers, data=b'{"message": {}}')

    body = assert_problem(answer, recorder)
    assert answer.status_code in (404, 405, 500)
    if answer.status_code == 500:
        assert body["code"] == "internal"


@pytest.mark.parametrize("target", ["poll", "submit"])
def test_an_event_function_refuses_a_non_event_with_problem_json_without_echoing_it(functions, target):
    apps, recorder = functions
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/json"}):
        answer = apps[target].post("/", data=SENTINEL.encode(), headers=headers)
        assert answer.status_code in (400, 415)
        assert_problem(answer, recorder)


def test_a_bug_inside_the_webhook_handler_is_a_500_with_an_incident_id(functions, monkeypatch):
    apps, recorder = functions
    monkeypatch.setattr(http, "_route", _boom)
    answer = apps["webhook"].post("/hooks/store-clusters", json={})
    assert answer.status_code == 500
    assert assert_problem(answer, recorder)["code"] == "internal"


def test_a_bug_inside_the_console_is_a_500_with_an_incident_id(functions, monkeypatch):
    apps, recorder = functions
    monkeypatch.setattr(console_app, "_route", _boom)
    answer = apps["console"].get("/", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert answer.status_code == 500
    assert_problem(answer, recorder)


def test_a_dependency_down_in_poll_is_a_500_keeping_its_code(functions, monkeypatch):
    from gateway.errors import CartoUnavailable

    apps, recorder = functions

    def down(*_args, **_kwargs):
        raise CartoUnavailable(f"CARTO is down ({SENTINEL[:0]})")

    monkeypatch.setattr(entrypoints, "poll", down)
    answer = apps["poll"].post("/", headers=CLOUD_EVENT, data=json.dumps({"message": {}}))
    assert answer.status_code == 500  # the push or the task is retried; never a 503 that throttles the queue
    assert assert_problem(answer, recorder)["code"] == CartoUnavailable.code


def test_a_dependency_busy_at_start_builds_on_first_use_but_a_bad_configuration_stops(capsys):
    from gateway.errors import ConfigError, LedgerUnavailable

    def busy(**_):
        raise LedgerUnavailable("the ledger is unavailable (OperationalError)")

    def bad(**_):
        raise ConfigError("env:MY_STORES_SECRET is missing or empty")

    entrypoints.start("poll", busy)  # five local functions opening one SQLite file at once: not a bad config
    with pytest.raises(SystemExit) as stopped:
        entrypoints.start("webhook", bad)
    assert stopped.value.code == 1 and "MY_STORES_SECRET" in capsys.readouterr().err


def test_the_console_function_loads_its_pages_at_start_and_the_webhook_does_not(deployed_env):
    """The console's modules are imported when the console's process starts (a broken one stops that worker
    like a bad configuration), and never by the other functions (they add nothing to their cold start)."""
    script = ("import json, os, sys, functions_framework\n"
              "functions_framework.create_app(target=os.environ['FUNCTION_TARGET'], source=sys.argv[1])\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gateway.console'))))\n")
    loaded = {}
    for target in ("console", "webhook"):
        done = subprocess.run([sys.executable, "-c", script, str(ROOT / "main.py")], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False, env={**deployed_env, "FUNCTION_TARGET": target})
        assert done.returncode == 0, done.stderr[-2000:]
        loaded[target] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "gateway.console.app" in loaded["console"] and loaded["webhook"] == []
