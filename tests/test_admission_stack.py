"""Admission from outside, over HTTP: every delivery answered 2xx runs exactly once whatever CARTO is
doing, and a workflow's concurrency is held (queue, replace, refuse).

Everything real: `webhook` and `poll` under functions-framework in their own processes, the Pub/Sub
emulator, the Cloud Tasks emulator carrying the submit hand-offs and the status checks, the local CARTO
job API with its standing conditions (an outage window, a creation rate limit, slow creation). Senders
send each delivery once and never retry, as GitHub does: whatever the gateway answered 2xx must run.
A delivery's jobs are found by the `delivery_id` each job carries in its metadata; its events by the
`delivery_id` in their data.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import requests

from gateway.local import emulators
from gateway.local.demos import DEV_SECRET
from gateway.local.devstack import LocalStack
from tests.constants import ROOT
from tests.stackutil import Event, EventInbox, post_hook

pytestmark = pytest.mark.stack

PROJECT = "admission-project"
EVENT_SCHEMA = json.loads((ROOT / "schemas" / "job-event.schema.json").read_text())
INLINE_S = 1.0  # GATEWAY_SUBMIT_INLINE_S of this stack
# CARTO_TIMEOUT_S of this stack: a POST whose answer never came is looked for in CARTO's job list 5 + 5 s
# later (CartoClient.longest_post_s) instead of 5 + 30 s; still far below the 12 s creation it must outwait.
CARTO_TIMEOUT_S = 5.0
OUTAGE_S = 6  # longer than sending ten deliveries takes, shorter than the third submit attempt's backoff (6 s)
RATE_WINDOW_S = 6  # CARTO's minute, scaled down: the 429s' Retry-After says so and the gateway honours it
SENDER_LIMIT_S = 3.0  # the shortest sender timeout named by the contract (Slack's)
# workflow -> (seconds each job runs at CARTO, admission block or None)
WORKFLOWS = {
    "adm-outage": (1.0, None),
    "adm-refused": (1.0, None),
    "adm-rate": (1.0, None),
    "adm-slow": (1.0, None),
    "adm-capped": (2.0, {"max_concurrent_jobs": 2, "when_busy": "queue"}),
    "adm-replace": (6.0, {"max_concurrent_jobs": 1, "when_busy": "replace"}),
    "adm-refuse": (3.0, {"max_concurrent_jobs": 1, "when_busy": "refuse"}),
}


def procedure(workflow: str) -> str:
    return f"admission-project.admission.{workflow.replace('-', '_')}"


def write_schemas(target: Path) -> Path:
    """The meta-schema and event schema of the repo, and one workflow file per scenario."""
    (target / "workflows").mkdir(parents=True)
    for name in ("workflow.schema.json", "job-event.schema.json"):
        (target / name).write_text((ROOT / "schemas" / name).read_text())
    for workflow, (_, admission) in WORKFLOWS.items():
        definition = {
            "description": f"Test only: admission scenario {workflow}.",
            "connection": "carto_dw",
            "query": f"CALL `{procedure(workflow)}`(@n)",
            "parameters": {"n": {"type": "INT64", "from": "/n"}},
            "payload": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
            "auth": [{"scheme": "standard-webhooks", "secrets": "env:ADMISSION_SECRET"}],
            "idempotency": {"header": "webhook-id"},
            "tracking": {"deadline_s": 600},
        }
        if admission is not None:
            definition["admission"] = admission
        (target / "workflows" / f"{workflow}.json").write_text(json.dumps(definition, indent=2))
    return target


@pytest.fixture(scope="module")
def stack(pubsub_emulator, tmp_path_factory):
    state = tmp_path_factory.mktemp("admission")
    stack = LocalStack(
        state_dir=state, project=PROJECT, schemas_dir=write_schemas(state / "schemas"),
        pubsub_host=pubsub_emulator.host,
        sandbox_procedures={procedure(w): {"duration_s": seconds} for w, (seconds, _) in WORKFLOWS.items()},
        env={"ADMISSION_SECRET": DEV_SECRET, "GATEWAY_SUBMIT_INLINE_S": str(INLINE_S), "GATEWAY_POLL_FIRST_S": "0.2",
             "CARTO_TIMEOUT_S": str(CARTO_TIMEOUT_S),
             "GATEWAY_POLL_INLINE_S": "1",
             "GATEWAY_SWEEP_GRACE_S": "1"})
    try:
        stack.start()
    except (emulators.EmulatorMissing, RuntimeError, TimeoutError) as exc:
        stack.stop()
        pytest.skip(f"Cloud Tasks emulator unavailable: {exc}")
    # One request before the bursts: the instance builds its clients on first use, and a burst of first
    # requests on a cold instance is not what these scenarios are about.
    requests.get(f"{stack.url('webhook')}/healthz", timeout=30).raise_for_status()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def inbox(stack):
    return EventInbox(PROJECT, stack.topics["events"], f"admission-events-{uuid.uuid4().hex[:8]}")


@pytest.fixture(autouse=True)
def healthy_carto(stack):
    """Each scenario starts and ends with a CARTO that answers at once, without limit."""
    stack.sandbox.conditions.clear()
    yield
    stack.sandbox.conditions.clear()
    stack.sandbox.faults.clear()


class Sent:
    """One delivery sent once: its answer and how long the sender waited for it."""

    def __init__(self, stack: LocalStack, workflow: str, n: int):
        started = time.monotonic()
        self.answer = post_hook(stack.url("webhook"), workflow, {"n": n}, DEV_SECRET, f"msg_{uuid.uuid4().hex}")
        self.waited_s = time.monotonic() - started
        self.status = self.answer.status_code
        json_answer = "json" in self.answer.headers.get("Content-Type", "")
        self.body = self.answer.json() if json_answer else {"unexpected": self.answer.text[:300]}

    @property
    def delivery_id(self) -> str:
        return self.body["delivery_id"]


def send_at_once(stack: LocalStack, workflow: str, count: int) -> list[Sent]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda n: Sent(stack, workflow, n), range(count)))


def send_in_order(stack: LocalStack, workflow: str, count: int) -> list[Sent]:
    return [Sent(stack, workflow, n) for n in range(count)]


def jobs_of(stack: LocalStack, workflow: str) -> list:
    """The workflow's jobs at CARTO, oldest first."""
    return [job for job in stack.sandbox.jobs() if job.procedure == procedure(workflow)]


def jobs_per_delivery(stack: LocalStack, workflow: str) -> Counter:
    return Counter((job.metadata or {}).get("delivery_id") for job in jobs_of(stack, workflow))


def events_for(inbox: EventInbox, delivery_ids: list[str], timeout_s: float) -> dict[str, list[Event]]:
    """Wait until each delivery has an event, then a little longer for a second, wrong one to show up."""
    wanted = set(delivery_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        inbox.drain(return_immediately=True)
        seen = {e.data.get("delivery_id") for e in inbox.events}
        if wanted <= seen:
            break
        assert time.monotonic() < deadline, f"{len(wanted - seen)} of {len(wanted)} deliveries have no event " \
                                            f"after {timeout_s} s"
        time.sleep(0.3)
    time.sleep(2.0)
    inbox.drain(return_immediately=True)
    found: dict[str, list[Event]] = {d: [] for d in delivery_ids}
    for event in inbox.events:
        if event.data.get("delivery_id") in found:
            found[event.data["delivery_id"]].append(event)
    for events in found.values():
        for event in events:
            jsonschema.validate(event.data, EVENT_SCHEMA)
    return found


def outcomes(found: dict[str, list[Event]]) -> dict[str, list[str]]:
    return {d: [e.attributes["outcome"] for e in events] for d, events in found.items()}


def assert_queued(sent: Sent) -> None:
    assert sent.status == 202, sent.answer.text
    assert sent.body["job_id"] is None and sent.body["queued"] is True, sent.body
    assert sent.body["duplicate"] is False
    assert sent.answer.headers["Location"] == sent.body["status_url"]
    assert sent.body["status_url"].startswith("/deliveries/")


# --- CARTO unavailable, rate-limiting, slow -------------------------------------------------------

@pytest.mark.parametrize("kind", ["error", "refuse"])
def test_ten_deliveries_during_an_outage_are_all_accepted_and_each_runs_once_when_carto_returns(
        stack, inbox, kind):
    workflow = "adm-outage" if kind == "error" else "adm-refused"
    stack.sandbox.outage(OUTAGE_S, kind=kind)  # 503 on every route, or the port refusing connections
    sent = send_at_once(stack, workflow, 10)

    for one in sent:
        assert_queued(one)  # accepted while CARTO could not take a job
    assert jobs_of(stack, workflow) == []

    found = events_for(inbox, [s.delivery_id for s in sent], timeout_s=180)
    assert outcomes(found) == {s.delivery_id: ["SUCCEEDED"] for s in sent}
    assert jobs_per_delivery(stack, workflow) == Counter({s.delivery_id: 1 for s in sent})
    for one in sent:
        (event,) = found[one.delivery_id]
        assert event.data["queued_s"] > 0  # it waited for CARTO, and says how long
        assert event.attributes["job_id"] == event.data["job_id"]


def test_thirty_deliveries_against_fifteen_creations_per_window_all_accepted_one_job_each(stack, inbox):
    """CARTO's 15 creations a minute, with the minute scaled down to RATE_WINDOW_S: the 15 beyond the limit
    can only be created once the gateway waits out the Retry-After the 429s carry."""
    stack.sandbox.conditions.rate_limit(15, window_s=RATE_WINDOW_S)
    sent = send_at_once(stack, "adm-rate", 30)

    assert [s.status for s in sent] == [202] * 30, [s.answer.text for s in sent if s.status != 202]
    queued = [s for s in sent if s.body["queued"]]
    assert len(queued) >= 15  # CARTO took at most 15 inline: the rest answered 429 and were queued

    found = events_for(inbox, [s.delivery_id for s in sent], timeout_s=240)
    assert outcomes(found) == {s.delivery_id: ["SUCCEEDED"] for s in sent}
    assert jobs_per_delivery(stack, "adm-rate") == Counter({s.delivery_id: 1 for s in sent})
    assert stack.sandbox.stats()["requests"]["submit"] > 30  # the 429s were real, and honoured


def test_a_carto_taking_twelve_seconds_per_creation_never_holds_a_sender_past_three_seconds(stack, inbox):
    """The sender's answer is bounded by the inline budget (GATEWAY_SUBMIT_INLINE_S, 1 s here), not by
    CARTO's 12 s. The bound asserted is the shortest sender timeout the contract names (Slack's 3 s):
    2 s of slack over the budget, for a loaded machine where starting the request and recording the
    delivery take their time too. It is a behavioural bound on the answer, not a measurement."""
    stack.sandbox.conditions.slow_creation(12.0)
    sent = send_at_once(stack, "adm-slow", 5)

    for one in sent:
        assert one.status == 202, one.answer.text
        assert one.waited_s < SENDER_LIMIT_S, f"a sender waited {one.waited_s:.1f} s"
        assert one.body["queued"] is True  # CARTO had not answered within the budget

    found = events_for(inbox, [s.delivery_id for s in sent], timeout_s=180)
    assert outcomes(found) == {s.delivery_id: ["SUCCEEDED"] for s in sent}
    # the job created by the unanswered POST was found again (its metadata), never created twice
    assert jobs_per_delivery(stack, "adm-slow") == Counter({s.delivery_id: 1 for s in sent})


# --- per-workflow concurrency ----------------------------------------------------------------------

def test_a_cap_of_two_never_runs_more_than_two_and_starts_eight_in_arrival_order(stack, inbox):
    sent = send_in_order(stack, "adm-capped", 8)

    assert [s.status for s in sent] == [202] * 8
    assert [s.body["queued"] for s in sent[:2]] == [False, False]  # two free slots: submitted inline
    for one in sent[2:]:
        assert_queued(one)

    found = events_for(inbox, [s.delivery_id for s in sent], timeout_s=180)
    assert outcomes(found) == {s.delivery_id: ["SUCCEEDED"] for s in sent}
    started = [(job.metadata or {}).get("delivery_id") for job in jobs_of(stack, "adm-capped")]
    assert started == [s.delivery_id for s in sent]  # all 8 ran, once each, in arrival order
    assert stack.sandbox.peak_running()[procedure("adm-capped")] == 2


def test_replace_runs_the_first_and_the_last_and_supersedes_the_four_between(stack, inbox):
    first = Sent(stack, "adm-replace", 0)
    assert first.status == 202 and first.body["job_id"]
    rest = send_in_order(stack, "adm-replace", 5)
    (running,) = jobs_of(stack, "adm-replace")
    assert running.state(time.time()) != "DONE"  # the five came while the first job (6 s) still ran
    for one in rest:
        assert_queued(one)

    found = events_for(inbox, [first.delivery_id] + [s.delivery_id for s in rest], timeout_s=180)
    assert outcomes(found) == {first.delivery_id: ["SUCCEEDED"], **{s.delivery_id: ["SUPERSEDED"] for s in rest[:4]},
                               rest[4].delivery_id: ["SUCCEEDED"]}
    assert jobs_per_delivery(stack, "adm-replace") == Counter({first.delivery_id: 1, rest[4].delivery_id: 1})
    for replaced, replacement in zip(rest[:4], rest[1:], strict=True):
        (event,) = found[replaced.delivery_id]
        assert event.data["job_id"] is None and "job_id" not in event.attributes
        assert event.data["superseded_by"] == replacement.delivery_id
        assert event.attributes["ce-type"] == "com.carto.workflows.job.superseded"
    assert stack.sandbox.peak_running()[procedure("adm-replace")] == 1


def test_refuse_answers_429_with_retry_after_while_busy_and_202_once_free(stack, inbox):
    first = Sent(stack, "adm-refuse", 0)
    assert first.status == 202 and first.body["job_id"]

    busy = Sent(stack, "adm-refuse", 1)
    assert busy.status == 429
    assert busy.answer.headers["Content-Type"].startswith("application/problem+json")
    assert int(busy.answer.headers["Retry-After"]) >= 1
    assert busy.body["type"].endswith("workflow-busy") and busy.body["status"] == 429
    assert len(jobs_of(stack, "adm-refuse")) == 1  # nothing recorded, nothing submitted

    events_for(inbox, [first.delivery_id], timeout_s=60)  # the first job ended: its slot frees
    deadline = time.monotonic() + 30
    later = Sent(stack, "adm-refuse", 2)
    while later.status == 429 and time.monotonic() < deadline:  # the slot frees as poll records the end
        time.sleep(0.5)
        later = Sent(stack, "adm-refuse", 2)
    assert later.status == 202 and later.body["job_id"], later.answer.text
    assert len(jobs_of(stack, "adm-refuse")) == 2
