"""The rig the delivery, idempotency, submit and sweeper suites share: one gateway instance (its
functions-framework apps) against the local CARTO job API on a fake clock, with a recording publisher,
and what every fault test asserts (one CARTO job, one outcome)."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from werkzeug.serving import make_server

from gateway.app import App
from gateway.errors import LedgerUnavailable
from gateway.events import Message
from gateway.ledger import Ledger, open_ledger
from gateway.local.sandbox import SandboxServer, serve
from gateway.settings import Settings
from tests.apptools import (
    FakeClock,
    RecordingPublisher,
    RecordingScheduler,
    function_client,
    operator_headers,
    settings_env,
    task_delivery,
)
from tests.constants import CARTO_TOKEN, ROOT, load_json

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
EVENT_SCHEMA = load_json(ROOT / "schemas" / "job-event.schema.json")
JOBS_TOPIC = "workflow-jobs"
GRACE_S = 120.0  # GATEWAY_SWEEP_GRACE_S's default
ACK, NACK = 200, 500  # what functions-framework answers a push when the function returns or raises


# --- the rig: one instance of the gateway against the local CARTO job API -----------------------

class CrashingLedger:
    """A ledger store (either) whose next `mark_submitted` fails: the instance 'dies' right after CARTO said yes."""

    def __init__(self, store: Ledger):
        self.store, self.crashes = store, 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def mark_submitted(self, *args: Any, **kwargs: Any) -> bool:
        if self.crashes > 0:
            self.crashes -= 1
            raise LedgerUnavailable("injected crash between CARTO's answer and the ledger write")
        return self.store.mark_submitted(*args, **kwargs)


class FaultyLedger:
    """A ledger store (either) whose next calls of a method fail, as if the instance died there: `crash("queue")`
    makes the next `queue` raise (the instance died after CARTO's answer, before the ledger heard of it)."""

    def __init__(self, store: Ledger):
        self.store = store
        self.crashes: dict[str, int] = {}

    def crash(self, method: str, times: int = 1) -> None:
        self.crashes[method] = times

    def __getattr__(self, name: str) -> Any:
        if self.crashes.get(name, 0) > 0:
            self.crashes[name] -= 1
            raise LedgerUnavailable(f"injected crash in {name}")
        return getattr(self.store, name)


@dataclass
class Rig:
    """One gateway instance (webhook, poll, submit, sweep) wired to a sandbox, a ledger file and a fake clock."""

    clock: FakeClock
    sandbox: SandboxServer
    app: App
    publisher: RecordingPublisher
    tasks: RecordingScheduler
    clients: dict[str, Any] = field(default_factory=dict)
    failed_tasks: list[dict[str, Any]] = field(default_factory=list)
    _delivered: int = 0  # tracking messages poll_all has pushed so far

    @classmethod
    def build(cls, env: dict[str, str], clock: FakeClock, sandbox: SandboxServer, *,
              ledger: Ledger | None = None) -> Rig:
        publisher, tasks = RecordingPublisher(), RecordingScheduler()
        app = App.build(Settings.from_env(env), publisher=publisher, ledger=ledger, clock=clock,
                        scheduler=tasks)
        return cls(clock, sandbox, app, publisher, tasks)

    def client(self, target: str) -> Any:
        """The functions-framework test client of `target` in main.py, serving this rig's App."""
        if target not in self.clients:
            self.clients[target] = function_client(self.app, target)
        return self.clients[target]

    def headers(self, workflow: str, body: bytes, msg_id: str | None = None) -> dict[str, str]:
        """Headers that authenticate `body` for `workflow` at the fake clock's now."""
        scheme = self.app.registry.get(workflow).schemes[0]
        return {**scheme.sign(body, self.clock.now(), msg_id), "Content-Type": "application/json"}

    def fresh_client(self, target: str = "webhook") -> Any:
        """Another test client of the same function app, for use from another thread."""
        return self.client(target).application.test_client()

    def post(self, workflow: str, payload: Any, *, msg_id: str | None = None,
             headers: dict[str, str] | None = None, client: Any = None) -> Any:
        body = json.dumps(payload).encode()
        return (client or self.client("webhook")).post(
            f"/hooks/{workflow}", data=body, headers={**self.headers(workflow, body, msg_id), **(headers or {})})

    def job_request(self, method: str, job_id: str) -> Any:
        """GET or DELETE /jobs/{job_id} as an operator (the test instances' GATEWAY_OPERATOR_TOKENS)."""
        return self.client("webhook").open(f"/jobs/{job_id}", method=method, headers=operator_headers())

    def tracking(self) -> list[Message]:
        return self.publisher.on(JOBS_TOPIC)

    def deliver(self, message: Message, message_id: str = "1", target: str = "poll") -> int:
        """Push one Pub/Sub message to `target`; the status is what Pub/Sub sees (2xx ack, else nack)."""
        return self.client(target).post("/", json=push_body(message, message_id)).status_code

    def poll_all(self) -> list[int]:
        """Deliver every tracking message published so far to `poll` (again, for those delivered before: Pub/Sub
        redelivers), then run the tasks (checks and submit hand-offs), delivering the tracking messages those
        publish, until nothing is left; the statuses are those of the tracking messages' pushes."""
        statuses = [self.deliver(message, str(n)) for n, message in enumerate(self.tracking())]
        self._delivered = len(self.tracking())
        while True:
            self.run_tasks()
            fresh = self.tracking()[self._delivered:]
            if not fresh:
                return statuses
            self._delivered += len(fresh)
            statuses.extend(self.deliver(message, str(len(statuses))) for message in fresh)

    def run_task(self, request: dict[str, Any]) -> int:
        """Cloud Tasks' call of one task on `poll`, at its due time on the fake clock; the HTTP status."""
        due = request["task"]["schedule_time"].timestamp()
        if due > self.clock.now():
            self.clock.advance(due - self.clock.now())
        body, headers = task_delivery(request)
        return self.client("poll").post("/", data=body, headers=headers).status_code

    def run_tasks(self, limit: int = 500, *, retry: bool = True) -> list[int]:
        """Run pending tasks, earliest first, until none is left; a failed one is retried, as a queue
        does (or, without `retry`, kept in `failed_tasks`). The statuses in order."""
        statuses: list[int] = []
        while len(statuses) < limit and (request := self.tasks.take_next()) is not None:
            statuses.append(self.run_task(request))
            if statuses[-1] >= 300:
                if not retry:
                    self.failed_tasks.append(request)
                    continue
                with self.tasks.lock:
                    self.tasks.pending[request["task"]["name"]] = request
        return statuses


def push_body(message: Message, message_id: str = "1") -> dict[str, Any]:
    """A Pub/Sub push request body, as a push subscription (or Eventarc) delivers it."""
    return {"message": {"data": base64.b64encode(message.data).decode(), "attributes": message.attributes,
                        "messageId": message_id},
            "subscription": "projects/p/subscriptions/s"}


def gateway_env(schemas: Path, sandbox: SandboxServer, state: Path, **extra: str) -> dict[str, str]:
    """Settings of a test instance: the first status check after 1 s, the default grace and windows.

    CARTO calls time out after 5 s here, so a claim is stale after 3 × (5 + 5) + 2 × 5 + 30 = 70 s
    (CartoClient.longest_submit_s + CLAIM_MARGIN_S): the tests' 91 s and 121 s waits are past it."""
    return settings_env(schemas, sandbox.url, state, GATEWAY_POLL_FIRST_S="1", **{"CARTO_TIMEOUT_S": "5", **extra})


@contextmanager
def running_rig(schemas: Path, state: Path, *, ledger: Ledger | None = None, **extra: str) -> Iterator[Rig]:
    """A rig with a fresh sandbox on the rig's fake clock (jobs run 10 s of that clock)."""
    clock = FakeClock()
    sandbox = serve(token=CARTO_TOKEN, default_duration_s=10.0, clock=clock.now)
    env = gateway_env(schemas, sandbox, state, **extra)
    if ledger is None:
        ledger = FaultyLedger(open_ledger(env["GATEWAY_LEDGER"], project=env.get("GOOGLE_CLOUD_PROJECT")))
    try:
        yield Rig.build(env, clock, sandbox, ledger=ledger)
    finally:
        sandbox.stop()


def write_admission_schemas(test_schemas: Path, target: Path) -> Path:
    """`test_schemas` plus one copy of store-clusters per admission block the admission tests use:
    capped (2, queue), one-at-a-time (1, queue), replacing (1, replace), refusing (1, refuse), held (paused)."""
    import shutil

    shutil.copytree(test_schemas, target)
    seed = json.loads((target / "workflows" / "store-clusters.json").read_text())
    blocks = {"capped": {"max_concurrent_jobs": 2}, "one-at-a-time": {"max_concurrent_jobs": 1},
              "replacing": {"max_concurrent_jobs": 1, "when_busy": "replace"},
              "refusing": {"max_concurrent_jobs": 1, "when_busy": "refuse"},
              "capped-3": {"max_concurrent_jobs": 3}}
    for name, block in blocks.items():
        (target / "workflows" / f"{name}.json").write_text(json.dumps({**seed, "admission": block}))
    (target / "workflows" / "held.json").write_text(json.dumps({**seed, "paused": True}))
    return target


def peak_running(jobs: list[Any]) -> int:
    """The most jobs CARTO ran at once, each from its creation to its end (the sandbox's jobs)."""
    edges = sorted([(job.created_at, 1) for job in jobs] + [(job.done_at, -1) for job in jobs])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def msg() -> str:
    return f"msg_{uuid.uuid4().hex}"


# --- what every fault test asserts ------------------------------------------------------------

def events_of(*publishers: RecordingPublisher) -> list[dict[str, Any]]:
    return [event for publisher in publishers for event in publisher.events()]


def assert_one_job_with_one_outcome(sandbox: SandboxServer, *publishers: RecordingPublisher,
                                    republished: bool = False) -> str:
    """Exactly one CARTO job and exactly one completion event for it; returns the job id. `republished`: a
    fault made the gateway publish the event again (the copies must then share its ce-id and outcome)."""
    jobs = sandbox.jobs()
    assert len(jobs) == 1, f"expected one CARTO job, got {[j.external_id for j in jobs]}"
    job_id = jobs[0].external_id
    events = events_of(*publishers)
    assert events, "the job yielded no completion event"
    if not republished:
        assert len(events) == 1, f"the event was published {len(events)} times"
    assert {e["attributes"]["job_id"] for e in events} == {job_id}
    outcomes = {e["attributes"]["ce-id"] for e in events}
    assert len(outcomes) == 1, f"more than one outcome for one job: {outcomes}"
    assert outcomes == {f"{job_id}:{events[0]['attributes']['outcome']}"}
    for event in events:
        jsonschema.validate(event["data"], EVENT_SCHEMA)
    return job_id


def race(count: int, action: Callable[[int], Any]) -> list[Any]:
    """Run `action(n)` from `count` threads released together."""
    barrier = threading.Barrier(count)

    def run(n: int) -> Any:
        barrier.wait()
        return action(n)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


@contextmanager
def served(flask_app: Any) -> Iterator[str]:
    """A real threaded WSGI server on loopback around a functions-framework app; yields its base URL."""
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
