"""A signed webhook becomes a typed CARTO job, and its completion becomes one Pub/Sub event.

Everything real: functions-framework serving `webhook` and `poll` from main.py in their own
processes, the Pub/Sub emulator with a push subscription to `poll`, the Cloud Tasks emulator for
the later status checks, the local CARTO job API over
HTTP, webhooks signed by the official standardwebhooks package. The whole module runs twice, once
for each answer dialect CARTO documents (the Workflows page's and the CARTO 3 SQL API reference's).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import jsonschema
import pytest
import requests

from gateway.local.devstack import LocalStack
from tests.constants import CARTO_TOKEN, OPERATOR_TOKEN, PROJECT, ROOT, SECRET
from tests.stackutil import EventInbox, delete_subscriptions, post_hook

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
EVENT_SCHEMA = json.loads((ROOT / "schemas" / "job-event.schema.json").read_text())


@pytest.fixture(scope="module", params=["workflows", "sql-api"])
def stack(request, pubsub_emulator, tasks_emulator, test_schemas, tmp_path_factory):
    delete_subscriptions(PROJECT, ["poll-push", "submit-push"])  # the other dialect's stack pushed to its ports
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("stack"), project=PROJECT, schemas_dir=test_schemas,
        pubsub_host=pubsub_emulator.host, tasks_host=tasks_emulator.host, sandbox_duration_s=1.0, submit_port=0,
        sandbox_dialect=request.param,
        sandbox_procedures={"test-project.workflows_temp.slow_report": {"parameters": {"region": "STRING"},
                                                                         "duration_s": None}},
        env={"CARTO_API_TOKEN": CARTO_TOKEN, "STORE_CLUSTERS_SECRET": SECRET, "GATEWAY_POLL_FIRST_S": "0.2",
             "GATEWAY_OPERATOR_TOKENS": OPERATOR_TOKEN},
    ).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def inbox(stack):  # one per dialect: it follows the stack's parametrisation
    return EventInbox(PROJECT, stack.topics["events"], f"test-events-{uuid.uuid4().hex[:8]}")


def _accepted(response) -> dict:
    assert response.status_code == 202, response.text
    return response.json()


def test_a_succeeding_job_yields_one_succeeded_event(stack, inbox):
    answer = _accepted(post_hook(stack.url("webhook"), "store-clusters", BODY, SECRET))

    event = inbox.wait_for(lambda e: e.attributes.get("job_id") == answer["job_id"])

    jsonschema.validate(event.data, EVENT_SCHEMA)
    assert event.attributes["ce-id"] == f"{answer['job_id']}:SUCCEEDED"
    assert event.attributes["ce-type"] == "com.carto.workflows.job.succeeded"
    assert event.attributes["outcome"] == "SUCCEEDED" and event.attributes["workflow"] == "store-clusters"
    assert event.data["parameters"] == {"number_of_clusters": 2, "buffer_radius": 500, "store_type": "Supermarket"}
    assert isinstance(event.data["parameters"]["number_of_clusters"], int)
    assert event.data["delivery_id"] == answer["delivery_id"]


def test_the_202_names_the_job_and_where_to_follow_it(stack):
    response = post_hook(stack.url("webhook"), "store-clusters", BODY, SECRET)

    answer = _accepted(response)
    assert response.headers["Location"] == f"/jobs/{answer['job_id']}" == answer["status_url"]
    assert answer["workflow"] == "store-clusters" and answer["duplicate"] is False
    assert any(job.external_id == answer["job_id"] for job in stack.sandbox.jobs())


def test_a_job_carto_fails_yields_a_failed_event_with_the_coercion_error(stack, inbox):
    body = {**BODY, "clusters": 2.5}
    answer = _accepted(post_hook(stack.url("webhook"), "store-clusters-float", body, SECRET))

    event = inbox.wait_for(lambda e: e.attributes.get("job_id") == answer["job_id"])

    jsonschema.validate(event.data, EVENT_SCHEMA)
    assert event.attributes["outcome"] == "FAILED"
    assert event.attributes["ce-id"] == f"{answer['job_id']}:FAILED"
    assert event.data["error"]["reason"] == "invalidQuery"  # errorResult.reason, or the SQL API's error.code
    assert event.data["error"]["message"].startswith(  # errorResult.message, or error.msg: never "failure"
        "Query error: Cannot coerce expression @number_of_clusters to type INT64 at [1:")


def test_a_job_cancelled_through_the_gateway_yields_one_cancelled_event(stack, inbox):
    answer = _accepted(post_hook(stack.url("webhook"), "slow-report", {"region": "apac"}, SECRET))

    cancelled = requests.delete(f"{stack.url('webhook')}/jobs/{answer['job_id']}",
                                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=30)
    event = inbox.wait_for(lambda e: e.attributes.get("job_id") == answer["job_id"])

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["outcome"] == "CANCELLED"
    jsonschema.validate(event.data, EVENT_SCHEMA)
    assert event.attributes["outcome"] == "CANCELLED"
    assert event.attributes["ce-id"] == f"{answer['job_id']}:CANCELLED"
    job = next(job for job in stack.sandbox.jobs() if job.external_id == answer["job_id"])
    assert job.cancelled


def test_every_job_carries_the_gateways_metadata_and_marker(stack):
    msg_id = f"msg_{uuid.uuid4().hex}"
    answer = _accepted(post_hook(stack.url("webhook"), "store-clusters", BODY, SECRET, msg_id=msg_id))

    job = next(job for job in stack.sandbox.jobs() if job.external_id == answer["job_id"])

    key_hash = hashlib.sha256(f"store-clusters:{msg_id}".encode()).hexdigest()[:32]
    assert job.metadata == {"gateway": "carto-workflows-gateway", "delivery": key_hash,
                            "workflow": "store-clusters", "delivery_id": msg_id}
    assert f"/* carto-gateway:{key_hash} */" in job.query
    assert CARTO_TOKEN not in json.dumps(job.metadata) and SECRET not in json.dumps(job.metadata)


def test_a_job_past_its_deadline_yields_one_timed_out_event(stack, inbox):
    answer = _accepted(post_hook(stack.url("webhook"), "slow-report", {"region": "emea"}, SECRET))

    event = inbox.wait_for(lambda e: e.attributes.get("job_id") == answer["job_id"], timeout_s=30)

    jsonschema.validate(event.data, EVENT_SCHEMA)
    assert event.attributes["outcome"] == "TIMED_OUT"
    assert event.attributes["ce-type"] == "com.carto.workflows.job.timed_out"
    assert event.data["duration_s"] >= 3


def test_a_request_published_by_another_function_runs_its_workflow_once(stack, inbox):
    from workflow_gateway_client import publish_request

    key = f"report-{uuid.uuid4().hex}"
    before = len(stack.sandbox.jobs())
    for _ in range(2):  # a caller's retry of the same request
        publish_request(PROJECT, "store-clusters", BODY, idempotency_key=key, topic=stack.topics["requests"])

    event = inbox.wait_for(lambda e: e.data.get("delivery_id") == key)
    _wait_for_log_lines(stack.log_dir / "submit.log", f'"delivery_id": "{key}"', count=2)

    assert event.attributes["outcome"] == "SUCCEEDED" and event.attributes["workflow"] == "store-clusters"
    assert len(stack.sandbox.jobs()) == before + 1


def _wait_for_log_lines(path, text: str, count: int, timeout_s: float = 30.0) -> None:
    """Until `submit` has logged both deliveries of the request (the second is the duplicate)."""
    deadline = time.monotonic() + timeout_s
    while path.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{path.name} has fewer than {count} lines with {text}"
        time.sleep(0.2)


@pytest.mark.parametrize("clusters", [2.5, "2"])
def test_a_mistyped_value_is_a_422_naming_parameter_and_path_and_reaches_no_carto(stack, clusters):
    before = len(stack.sandbox.jobs())

    response = post_hook(stack.url("webhook"), "store-clusters", {**BODY, "clusters": clusters}, SECRET)

    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert any(e["path"] == "/clusters" and "number_of_clusters" in e["message"] for e in errors)
    assert len(stack.sandbox.jobs()) == before


def test_a_replayed_delivery_answers_the_original_job(stack):
    msg_id = f"msg_{uuid.uuid4().hex}"
    first = _accepted(post_hook(stack.url("webhook"), "store-clusters", BODY, SECRET, msg_id=msg_id))
    jobs = len(stack.sandbox.jobs())

    replay = post_hook(stack.url("webhook"), "store-clusters", BODY, SECRET, msg_id=msg_id)

    assert replay.status_code == 200
    assert replay.json()["job_id"] == first["job_id"] and replay.json()["duplicate"] is True
    assert len(stack.sandbox.jobs()) == jobs


def test_no_token_or_secret_in_any_answer_log_or_message(stack, inbox):
    tracking = EventInbox(PROJECT, stack.topics["jobs"], f"test-tracking-{uuid.uuid4().hex[:8]}")
    answers = [post_hook(stack.url("webhook"), "store-clusters", BODY, SECRET) for _ in range(2)]
    answers.append(post_hook(stack.url("webhook"), "store-clusters", {"radius_m": "x"}, SECRET))
    answers.append(post_hook(stack.url("webhook"), "store-clusters", BODY, "whsec_" + "A" * 32))
    for answer in answers[:2]:
        inbox.wait_for(lambda e, j=answer.json()["job_id"]: e.attributes.get("job_id") == j)
        tracking.wait_for(lambda e, j=answer.json()["job_id"]: e.data.get("job_id") == j)  # read: checked below
    # The local CARTO API really echoes the token, like CARTO: it was there to leak.
    echoed = requests.get(f"{stack.sandbox.url}/v3/sql/carto_dw/job/{answers[0].json()['job_id']}",
                          headers={"Authorization": f"Bearer {CARTO_TOKEN}"}, timeout=10)
    assert CARTO_TOKEN in echoed.text

    job_url = f"{stack.url('webhook')}/jobs/{answers[0].json()['job_id']}"
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    answers.append(requests.get(job_url, headers=operator, timeout=10))
    answers.append(requests.get(job_url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}x"}, timeout=10))
    answers.append(requests.get(f"{stack.url('webhook')}/openapi.json", headers=operator, timeout=10))
    answers.append(requests.delete(job_url, headers=operator, timeout=10))
    assert [a.status_code for a in answers[-4:]] == [200, 401, 200, 409]  # the job had ended: nothing cancelled

    texts = [a.text + json.dumps(dict(a.headers)) for a in answers]
    texts += [e.raw.decode() + json.dumps(e.attributes) for e in inbox.events]
    texts += [(stack.log_dir / f"{name}.log").read_text() for name in ("webhook", "poll")]
    texts += [e.raw.decode() + json.dumps(e.attributes) for e in tracking.events]
    texts += [p.read_bytes().decode("latin-1") for p in stack.state_dir.glob("ledger.sqlite3*")]
    secret_material = SECRET.removeprefix("whsec_")
    for text in texts:
        assert CARTO_TOKEN not in text
        assert secret_material not in text
        assert OPERATOR_TOKEN not in text
