"""Building the real function app around injected clients: a recording publisher (a small fake,
not a mock), a real SQLite ledger, the real local CARTO job API over loopback HTTP."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import functions_framework

from gateway import entrypoints
from gateway.app import App
from gateway.clock import Clock
from gateway.errors import PublishUnavailable, TasksUnavailable
from gateway.events import Check, Handoff, Message
from gateway.settings import Settings
from gateway.tasks import handoff_request, task_request
from tests.constants import CARTO_TOKEN, DEMO_SECRETS, OPERATOR_TOKEN, ROOT


@dataclass
class RecordingPublisher:
    """Keeps every published message; `fail_next` makes the next N publishes raise PublishUnavailable."""

    messages: list[tuple[str, Message]] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, topic: str, message: Message) -> str:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise PublishUnavailable(f"publishing to {topic} failed (injected)")
            self.messages.append((topic, message))
            return str(len(self.messages))

    def on(self, topic: str) -> list[Message]:
        return [m for t, m in self.messages if t == topic]

    def events(self) -> list[dict[str, Any]]:
        return [{"attributes": m.attributes, "data": json.loads(m.data)} for m in self.on("workflow-job-events")]


QUEUE = "projects/test-project/locations/europe-west1/queues/poll-checks"
POLL_URL = "https://europe-west1-test-project.cloudfunctions.net/gateway-poll"
TASKS_ACCOUNT = "gateway-poll@test-project.iam.gserviceaccount.com"


@dataclass
class RecordingScheduler:
    """The poller's Scheduler seam with Cloud Tasks' naming rule: a name is created once, a second
    create of it is ALREADY_EXISTS (done). Keeps every CreateTaskRequest the real client would send
    (gateway.tasks.task_request). `fail_next` raises TasksUnavailable N times; `lose_next` accepts N
    tasks and drops them (a lost task)."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    fail_next: int = 0
    lose_next: int = 0
    already_existed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def schedule(self, check: Check) -> None:
        self._add(task_request(check, queue=QUEUE, poll_url=POLL_URL, service_account=TASKS_ACCOUNT,
                               source="//carto-workflows-gateway/projects/test-project"))

    def hand_off(self, handoff: Handoff) -> None:
        self._add(handoff_request(handoff, queue=QUEUE, poll_url=POLL_URL, service_account=TASKS_ACCOUNT,
                                  source="//carto-workflows-gateway/projects/test-project"))

    def _add(self, request: dict[str, Any]) -> None:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise TasksUnavailable("Cloud Tasks is down (injected)")
            name = request["task"]["name"]
            self.requests.append(request)
            if name in self.names:
                self.already_existed += 1
                return
            self.names.add(name)
            if self.lose_next > 0:
                self.lose_next -= 1
                return
            self.pending[name] = request

    def take_next(self) -> dict[str, Any] | None:
        """The pending task due first, removed from the queue."""
        with self.lock:
            if not self.pending:
                return None
            name = min(self.pending, key=lambda n: self.pending[n]["task"]["schedule_time"])
            return self.pending.pop(name)


def task_delivery(request: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the HTTP request Cloud Tasks makes for a task."""
    http = request["task"]["http_request"]
    return http["body"], {**http["headers"], "X-CloudTasks-TaskName": request["task"]["name"].rsplit("/", 1)[-1]}


class FakeClock:
    """A gateway.clock.Clock whose time moves only when slept on (or advanced)."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.t += seconds


def settings_env(schemas_dir: Path, sandbox_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    return {"GATEWAY_SCHEMAS_DIR": str(schemas_dir), "CARTO_API_BASE_URL": sandbox_url,
            "CARTO_API_TOKEN": CARTO_TOKEN, "GOOGLE_CLOUD_PROJECT": "test-project",
            "GATEWAY_LEDGER": f"sqlite:///{state_dir / 'ledger.sqlite3'}", **DEMO_SECRETS,
            "GATEWAY_POLL_FIRST_S": "0.05", "GATEWAY_OPERATOR_TOKENS": OPERATOR_TOKEN, **extra}


def operator_headers(token: str = OPERATOR_TOKEN) -> dict[str, str]:
    """What an operator sends to /jobs and /openapi.json."""
    return {"Authorization": f"Bearer {token}"}


def build_app(env: dict[str, str], *, publisher: Any = None, clock: Clock | None = None,
              scheduler: Any = None) -> App:
    return App.build(Settings.from_env(env), publisher=publisher or RecordingPublisher(), clock=clock,
                     scheduler=scheduler or RecordingScheduler())


def function_client(app: App, target: str = "webhook") -> Any:
    """The real functions-framework app for `target` of main.py, serving the given App."""
    signature = "cloudevent" if target in ("poll", "submit") else "http"
    with mock.patch.object(entrypoints, "start", lambda *_: None):  # the given App replaces the one built at start
        flask_app = functions_framework.create_app(target=target, source=str(ROOT / "main.py"), signature_type=signature)
    sys.modules["main"]._app = lambda **_: app
    return flask_app.test_client()
