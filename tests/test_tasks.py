"""Scheduling checks as Cloud Tasks (gateway/tasks.py): the request the client builds, its answer to
ALREADY_EXISTS and to an unreachable queue (a small Cloud Tasks gRPC server on loopback, since the
emulator neither de-duplicates names nor checks OIDC), and the real emulator calling the real
functions-framework `poll` with the task's CloudEvent headers."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent import futures
from typing import Any

import grpc
import pytest

from gateway.errors import TasksUnavailable
from gateway.events import CHECK_TYPE, Check, parse_check
from gateway.local import emulators
from gateway.tasks import CloudTasksScheduler, task_id, task_request
from tests.apptools import POLL_URL, QUEUE, TASKS_ACCOUNT, RecordingPublisher, build_app, function_client, settings_env
from tests.constants import CARTO_TOKEN, TASKS_QUEUE
from tests.rigs import BODY, push_body, served

CHECK = Check("store-clusters:msg_1", "job_1", 9, 1_800_000_007.45, 1_800_000_009.31, 10)


def test_the_task_is_an_oidc_http_call_of_poll_carrying_a_binary_cloudevent_at_the_due_time():
    request = task_request(CHECK, queue=QUEUE, poll_url=POLL_URL, service_account=TASKS_ACCOUNT, source="//src")

    task = request["task"]
    http = task["http_request"]
    assert request["parent"] == QUEUE
    assert task["name"] == f"{QUEUE}/tasks/31dbf5dc05e23b39f9fe61345624889b-10"
    assert task["schedule_time"].timestamp() == pytest.approx(CHECK.due_at, abs=1e-6)
    assert http["url"] == POLL_URL and http["http_method"] == "POST"
    assert http["oidc_token"] == {"service_account_email": TASKS_ACCOUNT, "audience": POLL_URL}
    assert {k: v for k, v in http["headers"].items() if k != "ce-id"} == {
        "ce-specversion": "1.0", "ce-type": CHECK_TYPE, "ce-source": "//src", "ce-subject": "job_1",
        "content-type": "application/json"}
    assert parse_check(http["body"]) == CHECK


# sha256 of the key's UTF-8 bytes, written out: a name every process and every instance computes alike
# (`echo -n KEY | sha256sum`), so a retried invocation elsewhere meets the task it created.
PINNED_NAMES = [
    ("store-clusters:msg_1", 10, "31dbf5dc05e23b39f9fe61345624889b-10"),
    ("w:a", 1, "052614887028d2817a96c111b2c01c43-1"),
]


@pytest.mark.parametrize(("key", "index", "name"), PINNED_NAMES)
def test_a_task_name_is_the_same_in_every_process(key, index, name):
    assert task_id(key, index) == name


def test_task_names_are_one_per_delivery_and_check_and_spread_by_a_hash_prefix():
    names = {task_id(key, index) for key in ("w:a", "w:b") for index in (1, 2)}

    assert len(names) == 4 and task_id("w:a", 1) == task_id("w:a", 1)
    assert len({name[:8] for name in names}) == 2  # the two deliveries differ from the first character on
    assert all(len(name) <= 500 and name.replace("-", "").isalnum() for name in names)


class FakeCloudTasks:
    """A Cloud Tasks gRPC server on loopback that keeps each CreateTask and, like the service (and
    unlike the emulator), answers ALREADY_EXISTS to a second create of the same task name."""

    def __init__(self):
        from gcloud_tasks_emulator.cloudtasks_pb2_grpc import CloudTasksServicer, add_CloudTasksServicer_to_server

        fake = self

        class Servicer(CloudTasksServicer):
            def CreateTask(self, request, context):
                fake.requests.append(request)
                if request.task.name in fake.names:
                    context.abort(grpc.StatusCode.ALREADY_EXISTS, "task exists")
                fake.names.add(request.task.name)
                return request.task

        self.requests: list[Any] = []
        self.names: set[str] = set()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_CloudTasksServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(grace=0)


@pytest.fixture
def fake_tasks():
    pytest.importorskip("gcloud_tasks_emulator", reason="the Cloud Tasks gRPC stubs come with gcloud-tasks-emulator")
    server = FakeCloudTasks()
    yield server
    server.stop()


def scheduler_for(host: str) -> CloudTasksScheduler:
    return CloudTasksScheduler(queue=QUEUE, poll_url=POLL_URL, service_account=TASKS_ACCOUNT, source="//src",
                               emulator_host=host, timeout_s=5)


def test_scheduling_the_same_check_twice_is_one_task_and_already_exists_counts_as_done(fake_tasks):
    scheduler = scheduler_for(f"127.0.0.1:{fake_tasks.port}")

    scheduler.schedule(CHECK)
    scheduler.schedule(CHECK)  # a retried invocation: ALREADY_EXISTS, no error

    first, second = fake_tasks.requests
    assert first.task.name == second.task.name and len(fake_tasks.names) == 1
    token = first.task.http_request.oidc_token
    assert (token.service_account_email, token.audience) == (TASKS_ACCOUNT, POLL_URL)
    assert dict(first.task.http_request.headers)["ce-type"] == CHECK_TYPE


def test_an_unreachable_queue_is_tasks_unavailable():
    scheduler = scheduler_for(f"127.0.0.1:{emulators.free_port()}")

    with pytest.raises(TasksUnavailable):
        scheduler.schedule(CHECK)


def test_without_a_queue_the_scheduler_says_which_settings_are_missing():
    with pytest.raises(TasksUnavailable, match="GATEWAY_TASKS_QUEUE and GATEWAY_POLL_URL"):
        CloudTasksScheduler(queue=None, poll_url=None, service_account=None, source="//src").schedule(CHECK)


class CallLog:
    """WSGI middleware that records (task name, status) of every call Cloud Tasks makes."""

    def __init__(self, app: Any):
        self.app, self.calls, self.lock = app, [], threading.Lock()

    def __call__(self, environ, start_response):
        name = environ.get("HTTP_X_CLOUDTASKS_TASKNAME", "")

        def recording(status, headers, exc_info=None):
            with self.lock:
                self.calls.append((name, int(status.split()[0]), environ.get("HTTP_CE_TYPE")))
            return start_response(status, headers, exc_info)
        return self.app(environ, recording)


def test_the_emulator_calls_poll_with_the_cloudevent_and_each_check_of_a_running_job_answers_2xx_once(
        test_schemas, tmp_path, tasks_emulator, make_sandbox):
    sandbox = make_sandbox(token=CARTO_TOKEN, default_duration_s=2.5)  # real time, like the emulator
    publisher = RecordingPublisher()
    env = settings_env(test_schemas, sandbox.url, tmp_path, GATEWAY_POLL_FIRST_S="0.5", GATEWAY_POLL_INLINE_S="0")
    app = build_app(env, publisher=publisher, scheduler=_Deferred())
    client = function_client(app, "poll")
    poll_app = CallLog(client.application)
    with served(poll_app) as url:
        app.poller.scheduler = CloudTasksScheduler(queue=TASKS_QUEUE, poll_url=f"{url}/", service_account=None,
                                                   source="//src", emulator_host=tasks_emulator.host)
        raw = json.dumps(BODY).encode()
        from gateway.intake import Inbound

        app.intake.accept(Inbound(app.registry.get("store-clusters"), raw, BODY, {}, "k1", "k1"))
        tracking = publisher.on("workflow-jobs")[-1]
        first = client.post("/", json=push_body(tracking)).status_code
        deadline = time.monotonic() + 30
        while not publisher.events() and time.monotonic() < deadline:
            time.sleep(0.1)

    events = publisher.events()
    assert first == 200 and len(events) == 1 and events[0]["attributes"]["outcome"] == "SUCCEEDED"
    calls = poll_app.calls
    assert calls and all(status == 200 and ce_type == CHECK_TYPE for _, status, ce_type in calls)
    assert len({name for name, _, _ in calls}) == len(calls)  # no task was called twice: none was retried
    assert events[0]["data"]["checks"] >= len(calls)


class _Deferred:
    """A scheduler placeholder until the served URL is known."""

    def schedule(self, check: Check) -> None:
        raise AssertionError("replaced before use")


def test_the_tasks_settings_are_checked_when_they_are_read(tmp_path):
    from gateway.errors import ConfigError
    from gateway.settings import Settings

    base = settings_env(tmp_path, "http://127.0.0.1:1", tmp_path)
    good = Settings.from_env({**base, "GATEWAY_TASKS_QUEUE": QUEUE, "GATEWAY_POLL_URL": POLL_URL,
                              "GATEWAY_TASKS_SERVICE_ACCOUNT": TASKS_ACCOUNT})

    assert (good.tasks_queue, good.poll_url, good.tasks_service_account) == (QUEUE, POLL_URL, TASKS_ACCOUNT)
    assert Settings.from_env(base).poll_inline_s == 5.0
    with pytest.raises(ConfigError, match="full queue path"):
        Settings.from_env({**base, "GATEWAY_TASKS_QUEUE": "poll-checks", "CLOUD_TASKS_EMULATOR_HOST": "localhost:1"})
    with pytest.raises(ConfigError, match="GATEWAY_TASKS_SERVICE_ACCOUNT"):
        Settings.from_env({**base, "GATEWAY_TASKS_QUEUE": QUEUE})


def test_the_webhook_never_loads_the_cloud_tasks_client_or_the_console(tmp_path, test_schemas, make_sandbox):
    """Neither /healthz nor a signed delivery accepted with 202 (intake.accept: claim, submit, track) loads
    them: both would only add to the webhook's cold start."""
    import subprocess
    import sys
    import textwrap

    from tests.constants import DEMO_SECRETS, ROOT, SECRET
    from tests.stackutil import signed_headers

    script = textwrap.dedent("""
        import json, os, sys, functions_framework
        from gateway.app import App
        from gateway.settings import Settings

        class Publisher:  # the tracking message is kept here: no Pub/Sub needed to reach the 202
            def publish(self, topic, message):
                return "1"

        app = App.build(Settings.from_env(os.environ), publisher=Publisher())
        flask_app = functions_framework.create_app(target="webhook", source="main.py")
        sys.modules["main"]._app = lambda **_: app
        client = flask_app.test_client()
        health = client.get("/healthz").status_code
        delivery = client.post("/hooks/store-clusters", data=bytes.fromhex(sys.argv[1]), headers=json.loads(sys.argv[2]))
        print(json.dumps({"status": [health, delivery.status_code],
                          "loaded": sorted(m for m in sys.modules if m.startswith(("google.cloud.tasks", "gateway.console")))}))
    """)
    sandbox = make_sandbox(token="t", default_duration_s=60)
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_SCHEMAS_DIR": str(test_schemas), "CARTO_API_BASE_URL": sandbox.url,
           "CARTO_API_TOKEN": "t", **DEMO_SECRETS, "GOOGLE_CLOUD_PROJECT": "p",
           "GATEWAY_LEDGER": f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "GATEWAY_TASKS_QUEUE": QUEUE,
           "GATEWAY_POLL_URL": POLL_URL, "GATEWAY_TASKS_SERVICE_ACCOUNT": TASKS_ACCOUNT}
    body = json.dumps(BODY).encode()
    headers = signed_headers(SECRET, body, "msg_never_loads")
    done = subprocess.run([sys.executable, "-c", script, body.hex(), json.dumps(headers)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": [200, 202], "loaded": []}


# 127.0.0.1 over IPv4, the same as an IPv4-mapped IPv6 address (gRPC's dual-stack socket), ::1.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net shows them) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, _, state = line.split()[1:4]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_tasks_emulator_listens_on_loopback_only(tasks_emulator):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp to read the listening sockets from")

    listening = _listening(tasks_emulator.port)

    assert listening and listening <= LOOPBACK, listening  # no [::] or 0.0.0.0 socket
    assert tasks_emulator.host == f"127.0.0.1:{tasks_emulator.port}"
