"""Network and process faults between the gateway and its dependencies: the sender is told the truth,
and once the fault clears, each accepted delivery has exactly one CARTO job and one outcome (docs/architecture.md, "Invariants").

Everything is real and runs in its own process where it would in the cloud: `webhook` and `poll`
under functions-framework, a Pub/Sub emulator of this module's own (stopped and restarted on its
port), the local CARTO job API behind tests/faultproxy.py (CARTO_API_BASE_URL is the proxy, so
`webhook`, `poll` and the sweeper all go through it), the SQLite ledger file that another process
locks. The sender is a plain HTTP client that retries with the same webhook-id; the sweeper runs in
this process with the stack's settings, as Cloud Scheduler would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from gateway.app import App
from gateway.intake import delivery_marker
from gateway.ledger import CLAIMED
from gateway.local import emulators
from gateway.local.devstack import LocalStack
from gateway.local.sandbox import Fault as SandboxFault
from gateway.settings import Settings
from tests.constants import CARTO_TOKEN, PROJECT, SECRET
from tests.faultproxy import Fault, FaultProxy
from tests.stackutil import EventInbox, post_hook

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
WORKFLOW = "store-clusters"
JOB_POST = {"method": "POST", "path": r"/v3/sql/[^/]+/job$"}
STATUS_GET = {"method": "GET", "path": r"/v3/sql/[^/]+/job/"}


class QuickInbox(EventInbox):
    """EventInbox whose pulls return at once when nothing is there (the emulator honours it)."""

    def drain(self, *, return_immediately: bool = True) -> None:
        super().drain(return_immediately=return_immediately)


@dataclass
class NetworkRig:
    """The running stack, the proxy in front of CARTO, the module's emulator, an in-process sweeper."""

    stack: LocalStack
    proxy: FaultProxy
    pubsub: emulators.Emulator
    app: App
    inbox: QuickInbox

    @property
    def sandbox(self) -> Any:
        return self.stack.sandbox

    def post(self, delivery: str, body: Any = BODY, workflow: str = WORKFLOW) -> requests.Response:
        return post_hook(self.stack.url("webhook"), workflow, body, SECRET, msg_id=delivery)

    def jobs_of(self, delivery: str, workflow: str = WORKFLOW) -> list[Any]:
        marker = delivery_marker(f"{workflow}:{delivery}")
        return [job for job in self.sandbox.jobs() if marker in job.query]

    def rewire_pubsub(self) -> None:
        """Topics, the push subscription to `poll` and a fresh event inbox (a restarted emulator has none)."""
        self.stack._wire_topics()
        self.inbox = QuickInbox(PROJECT, self.stack.topics["events"], f"faults-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def rig(test_schemas, tasks_emulator, tmp_path_factory) -> Iterator[NetworkRig]:
    state = tmp_path_factory.mktemp("faults")
    try:
        pubsub = emulators.Emulator.start("pubsub", project=PROJECT, log_dir=state)
    except emulators.EmulatorMissing as exc:
        pytest.skip(f"Pub/Sub emulator unavailable: {exc}")
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    sandbox_port = emulators.free_port()
    proxy = FaultProxy(("127.0.0.1", sandbox_port)).start()
    stack = LocalStack(
        state_dir=state, project=PROJECT, schemas_dir=test_schemas, pubsub_host=pubsub.host,
        tasks_host=tasks_emulator.host, sandbox_port=sandbox_port, sandbox_duration_s=0.3,
        env={"CARTO_API_BASE_URL": proxy.url, "CARTO_API_TOKEN": CARTO_TOKEN, "STORE_CLUSTERS_SECRET": SECRET,
             "CARTO_TIMEOUT_S": "1", "GATEWAY_POLL_FIRST_S": "0.2", "GATEWAY_SWEEP_GRACE_S": "1"})
    built: NetworkRig | None = None
    try:
        stack.start()
        app = App.build(Settings.from_env(stack.function_env()))
        # The tests sweep only after the sender was answered, so no job POST can still be in flight:
        # this sweeper may take claims over at once (the deployed one waits for CLAIM_STALE_S).
        app.sweeper.claim_stale_s, app.sweeper.sweep_grace_s = 0.0, 0.1
        built = NetworkRig(stack, proxy, pubsub, app, QuickInbox(PROJECT, stack.topics["events"], "faults-events"))
        yield built
    finally:
        stack.stop()
        proxy.stop()
        (built.pubsub if built else pubsub).stop()
        if previous is not None:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous


@pytest.fixture(autouse=True)
def no_leftover_faults(rig) -> Iterator[None]:
    yield
    rig.proxy.clear()
    rig.sandbox.faults.clear()


def new_delivery() -> str:
    return f"msg_{uuid.uuid4().hex}"


def retry_until_accepted(rig: NetworkRig, delivery: str, body: Any = BODY, attempts: int = 30) -> requests.Response:
    """The sender's retries with the same webhook-id, the sweeper running between them."""
    for _ in range(attempts):
        rig.app.sweeper.sweep()
        answer = rig.post(delivery, body)
        if answer.status_code in (200, 202):
            return answer
        assert answer.status_code in (409, 503) and answer.headers["Retry-After"], answer.text
        time.sleep(0.3)
    raise AssertionError(f"delivery {delivery} was never accepted")


def assert_exactly_once(rig: NetworkRig, delivery: str, accepted: requests.Response) -> str:
    """One CARTO job for the delivery, the one the sender was told; its events carry one outcome."""
    jobs = rig.jobs_of(delivery)
    assert [job.external_id for job in jobs] == [accepted.json()["job_id"]]
    job_id = jobs[0].external_id
    first = rig.inbox.wait_for(lambda e: e.attributes.get("job_id") == job_id, timeout_s=30)
    outcomes = {e.attributes["ce-id"] for e in rig.inbox.for_job(job_id)}
    assert outcomes == {f"{job_id}:{first.attributes['outcome']}"}
    return job_id


def assert_honest_refusal(answer: requests.Response) -> None:
    """What the gateway itself cannot record (its ledger) is a 503 with Retry-After, nothing half-done."""
    assert answer.status_code == 503, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert int(answer.headers["Retry-After"]) >= 1


def assert_queued(answer: requests.Response) -> None:
    """CARTO could not take the job now: the delivery is accepted all the same, without a job yet."""
    assert answer.status_code == 202, answer.text
    assert answer.json()["queued"] is True and answer.json()["job_id"] is None


def job_of(rig: NetworkRig, delivery: str, timeout_s: float = 60.0) -> str:
    """The job id the ledger records for a queued delivery once its submit task has run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = rig.app.ledger.get(f"{WORKFLOW}:{delivery}")
        if record is not None and record.job_id:
            return record.job_id
        time.sleep(0.2)
    raise AssertionError(f"delivery {delivery} never got a job")


def assert_exactly_once_queued(rig: NetworkRig, delivery: str) -> str:
    """`assert_exactly_once` for a delivery answered `queued`: a replay now answers the one job."""
    job_of(rig, delivery)
    return assert_exactly_once(rig, delivery, rig.post(delivery))


# --- CARTO answers the job POST with an error ----------------------------------------------------

def _sandbox(kind: str, count: int = 1, **options: Any):
    return lambda rig: rig.sandbox.faults.add(SandboxFault("submit", kind, **options), count)


def _proxy(count: int = 1, **fault: Any):
    return lambda rig: rig.proxy.inject(Fault(**JOB_POST, **fault), count)


REFUSALS = {
    "carto-500": _sandbox("error", status=500),
    "carto-502": _sandbox("error", status=502),
    "carto-503-twice": _sandbox("error", status=503, count=2),
    "carto-429-with-retry-after": _sandbox("rate_limit", retry_after=1),
    "balancer-429-without-retry-after": _proxy(2, kind="respond", status=429),
    "balancer-503-with-retry-after": _proxy(kind="respond", status=503, headers=(("Retry-After", "3"),)),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_an_error_answer_to_the_job_post_is_accepted_queued_then_one_job(rig, name):
    REFUSALS[name](rig)
    delivery = new_delivery()

    first = rig.post(delivery)

    assert_queued(first)
    assert_exactly_once_queued(rig, delivery)


def test_a_long_retry_after_from_carto_delays_the_submit_task_not_the_sender(rig):
    rig.proxy.inject(Fault(**JOB_POST, kind="respond", status=503, headers=(("Retry-After", "30"),)))
    delivery = new_delivery()

    started = time.time()
    queued = rig.post(delivery)

    record = rig.app.ledger.get(f"{WORKFLOW}:{delivery}")
    assert_queued(queued)
    assert record.hand_off_at - started >= 30 and record.last_answer["status"] == 503


# --- the connection fails around the job POST -----------------------------------------------------

BROKEN = {
    "reset-before-carto-read-it": (Fault(**JOB_POST, kind="reset", forward=False), 0),
    "reset-after-carto-created-the-job": (Fault(**JOB_POST, kind="reset"), 1),
    "closed-inside-the-answer-headers": (Fault(**JOB_POST, kind="truncate", after_bytes=30), 1),
    "closed-inside-the-answer-body": (Fault(**JOB_POST, kind="truncate", after_bytes=220), 1),
    "no-answer-until-the-read-timeout": (Fault(**JOB_POST, kind="blackhole"), 1),
    "no-answer-and-never-forwarded": (Fault(**JOB_POST, kind="blackhole", forward=False), 0),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_connection_on_the_job_post_is_accepted_queued_then_exactly_one_job(rig, name):
    fault, jobs_created = BROKEN[name]
    rig.proxy.inject(fault)
    delivery = new_delivery()

    first = rig.post(delivery)
    created = len(rig.jobs_of(delivery))

    assert_queued(first)
    assert created == jobs_created
    assert_exactly_once_queued(rig, delivery)


def test_carto_dropping_the_answer_after_creating_the_job_is_accepted_then_exactly_one_job(rig):
    rig.sandbox.faults.drop("submit", after=True)
    delivery = new_delivery()

    first = rig.post(delivery)

    assert_queued(first)
    assert_exactly_once_queued(rig, delivery)


def test_a_latency_spike_below_the_timeout_is_just_slower(rig):
    rig.proxy.inject(Fault(**JOB_POST, kind="delay", delay_s=0.6))
    delivery = new_delivery()

    accepted = rig.post(delivery)

    assert accepted.status_code == 202, accepted.text
    assert_exactly_once(rig, delivery, accepted)


def test_a_sweep_while_a_submit_tasks_post_is_held_at_carto_leaves_its_claim_alone(rig):
    production = App.build(Settings.from_env(rig.stack.function_env()))  # the sweeper as deployed
    production.sweeper.sweep_grace_s = 0.0  # every record is past its grace: only the claim rule may hold it back
    rig.sandbox.faults.rate_limit("submit", retry_after=1)  # the inline POST: 429, so the delivery is queued
    retried = rig.sandbox.faults.hold("submit")  # and its submit task's POST waits at CARTO until the sweep is over
    delivery = new_delivery()

    queued = rig.post(delivery)
    assert retried.arrived.wait(30), "the submit task never posted the job"
    claim, jobs_meanwhile = rig.app.ledger.get(f"{WORKFLOW}:{delivery}"), rig.jobs_of(delivery)
    report = production.sweeper.sweep()
    after = rig.app.ledger.get(f"{WORKFLOW}:{delivery}")
    retried.release()

    # The sweep met a claim past its grace with no job in CARTO yet (the POST is held) and left it alone.
    assert_queued(queued)
    assert claim.state == CLAIMED and time.time() - claim.updated_at > production.sweeper.sweep_grace_s
    assert jobs_meanwhile == [] and after is not None and after.claim_token == claim.claim_token
    assert report.released == 0 and report.adopted == 0 and report.requeued == 0
    assert_exactly_once_queued(rig, delivery)


# --- the status checks of `poll` fail -------------------------------------------------------------

def test_failing_status_checks_still_end_in_one_outcome(rig):
    rig.sandbox.faults.error("status", status=500, count=2)
    rig.sandbox.faults.drop("status")
    rig.proxy.inject(Fault(**STATUS_GET, kind="reset"))
    rig.proxy.inject(Fault(**STATUS_GET, kind="truncate", after_bytes=30))
    rig.proxy.inject(Fault(**STATUS_GET, kind="blackhole"))
    delivery = new_delivery()

    accepted = rig.post(delivery)

    assert accepted.status_code == 202, accepted.text
    job_id = assert_exactly_once(rig, delivery, accepted)
    assert rig.inbox.for_job(job_id)[0].attributes["outcome"] == "SUCCEEDED"


def test_a_job_carto_fails_yields_one_failed_outcome_despite_faults(rig):
    rig.sandbox.faults.fail_jobs("Query error: injected failure (sandbox)")
    rig.sandbox.faults.error("status", status=502)
    delivery = new_delivery()

    accepted = rig.post(delivery)

    assert accepted.status_code == 202, accepted.text
    job_id = assert_exactly_once(rig, delivery, accepted)
    assert rig.inbox.for_job(job_id)[0].attributes["outcome"] == "FAILED"


# --- the ledger file is locked by another process -------------------------------------------------

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
print("ready", flush=True)
if sys.stdin.readline().strip() == "lock":
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("ROLLBACK")
"""


class LedgerLock:
    """Another process holding `BEGIN EXCLUSIVE` on the ledger file until released. Started ahead
    (`now=False`), it takes the lock on `take()` in one statement, without a process start in between."""

    def __init__(self, path: str, *, now: bool = True):
        self.process = subprocess.Popen([sys.executable, "-c", LOCKER, path], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self._line() == "ready"
        if now:
            self.take()

    def take(self) -> None:
        self._say("lock")
        assert self._line() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            self._say("")
            self.process.wait(timeout=10)

    def _say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()


def _ledger_path(rig: NetworkRig) -> str:
    return rig.stack.function_env()["GATEWAY_LEDGER"].removeprefix("sqlite:///")


def test_a_locked_ledger_is_a_503_and_no_job_then_the_retry_makes_one(rig):
    delivery = new_delivery()
    lock = LedgerLock(_ledger_path(rig))
    try:
        refused = rig.post(delivery)
        created = len(rig.jobs_of(delivery))
    finally:
        lock.release()
    accepted = retry_until_accepted(rig, delivery)

    assert_honest_refusal(refused)
    assert created == 0
    assert_exactly_once(rig, delivery, accepted)


def test_a_ledger_locked_while_carto_creates_the_job_is_a_503_then_the_job_is_adopted(rig):
    at_carto = rig.sandbox.faults.hold("submit")  # the job POST waits at CARTO until the ledger is locked
    lock = LedgerLock(_ledger_path(rig), now=False)
    delivery = new_delivery()
    answers: list[requests.Response] = []
    sender = threading.Thread(target=lambda: answers.append(rig.post(delivery)))
    try:
        sender.start()
        assert at_carto.arrived.wait(30), "the job POST never reached CARTO"
        lock.take()
        at_carto.release()  # CARTO creates the job and answers; recording it meets the lock
        sender.join()
    finally:
        lock.release()
    accepted = retry_until_accepted(rig, delivery)

    assert_honest_refusal(answers[0])
    assert answers[0].json()["code"] == "ledger-unavailable"  # not a CARTO timeout: the lock refused it
    assert accepted.json()["duplicate"] is True
    assert_exactly_once(rig, delivery, accepted)


# --- the Pub/Sub emulator goes away and comes back (last: it rewires the module's topics) ----------

def test_pubsub_stopped_and_restarted_mid_run_loses_no_job(rig):
    before = new_delivery()
    accepted_before = rig.post(before)
    assert_exactly_once(rig, before, accepted_before)
    rig.pubsub.stop()
    during = new_delivery()
    try:
        accepted = rig.post(during)  # the job exists; its tracking message cannot be published
    finally:
        rig.pubsub = emulators.Emulator.start("pubsub", rig.pubsub.port, project=PROJECT,
                                              log_dir=rig.stack.state_dir)
        rig.rewire_pubsub()
    retried = retry_until_accepted(rig, during)

    assert accepted.status_code == 202, accepted.text
    assert retried.json()["job_id"] == accepted.json()["job_id"]
    assert_exactly_once(rig, during, accepted)
