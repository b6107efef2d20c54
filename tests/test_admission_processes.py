"""The cap holds across processes: two `webhook` and two `poll` processes (functions-framework), one
ledger (a SQLite file, or the real Firestore emulator), the real Pub/Sub and Cloud Tasks emulators and
the local CARTO job API; 50 deliveries sent at once to a workflow capped at 3."""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway.ledger import open_ledger
from gateway.local import emulators
from gateway.local.devstack import LocalStack
from tests.constants import CARTO_TOKEN, SECRET, TASKS_QUEUE
from tests.rigs import BODY, peak_running, write_admission_schemas
from tests.stackutil import EventInbox, signed_headers

pytestmark = pytest.mark.stack

WORKFLOW, CAP = "capped-3", 3
DELIVERIES = int(os.environ.get("CAP_TEST_DELIVERIES", "50"))


@pytest.fixture(params=["sqlite", "firestore"])
def ledger_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared-ledger.sqlite3'}"
    request.getfixturevalue("firestore_emulator")
    return f"firestore://capped-{uuid.uuid4().hex[:12]}"


def test_two_webhooks_and_two_polls_never_run_more_than_the_cap(ledger_url, pubsub_emulator, tasks_emulator,
                                                                test_schemas, tmp_path):
    project = f"cap{uuid.uuid4().hex[:8]}"  # its own topics and push subscriptions on the shared emulator
    env = {"CARTO_API_TOKEN": CARTO_TOKEN, "STORE_CLUSTERS_SECRET": SECRET, "GATEWAY_LEDGER": ledger_url,
           "GATEWAY_TASKS_QUEUE": TASKS_QUEUE, "GATEWAY_POLL_FIRST_S": "0.2", "GATEWAY_SUBMIT_INLINE_S": "5"}
    stack = LocalStack(state_dir=tmp_path / "state", project=project,
                       schemas_dir=write_admission_schemas(test_schemas, tmp_path / "schemas"),
                       pubsub_host=pubsub_emulator.host, tasks_host=tasks_emulator.host, sandbox_duration_s=0.5,
                       env=env).start()
    try:
        # The second pair: its own ports; its webhook hands off to its own poll, whose tasks stay with it.
        webhook2, poll2 = emulators.free_port(), emulators.free_port()
        stack.env = {**env, "GATEWAY_POLL_URL": f"http://127.0.0.1:{poll2}/"}
        stack.processes["webhook2"] = stack._function("webhook", webhook2, "http")
        stack.processes["poll2"] = stack._function("poll", poll2, "cloudevent")
        for port, name in ((webhook2, "webhook2"), (poll2, "poll2")):
            emulators.wait_for_port(port, 60, stack.processes[name])
        inbox = EventInbox(project, stack.topics["events"], f"cap-events-{uuid.uuid4().hex[:8]}")
        webhooks = [stack.url("webhook"), f"http://127.0.0.1:{webhook2}"]
        deliveries = [f"msg_{uuid.uuid4().hex}" for _ in range(DELIVERIES)]

        def send(n: int) -> requests.Response:
            """One delivery; a 503 (the SQLite file locked past its busy timeout on a loaded machine: nothing
            recorded) is sent again after Retry-After, as the contract lets a sender."""
            body = json.dumps(BODY).encode()
            for _ in range(10):
                answer = requests.post(f"{webhooks[n % 2]}/hooks/{WORKFLOW}", data=body, timeout=120,
                                       headers=signed_headers(SECRET, body, deliveries[n]))
                if answer.status_code != 503:
                    return answer
                time.sleep(float(answer.headers.get("Retry-After", "1")))
            return answer

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(send, range(DELIVERIES)))
        deadline = time.monotonic() + 600
        while len({e.attributes["ce-id"] for e in inbox.events}) < DELIVERIES and time.monotonic() < deadline:
            inbox.drain()
            time.sleep(0.5)

        jobs = stack.sandbox.jobs()
        events = {e.attributes["ce-id"]: e for e in inbox.events}
        ledger = open_ledger(ledger_url, project=project)
        line = ledger.line(WORKFLOW)
        ledger.close()
        assert all(a.status_code in (200, 202) for a in answers)
        assert sorted((job.metadata or {}).get("delivery_id") for job in jobs) == sorted(deliveries)  # one job each
        assert peak_running(jobs) <= CAP
        assert len(events) == DELIVERIES and {e.attributes["outcome"] for e in events.values()} == {"SUCCEEDED"}
        assert line.running == [] and line.waiting == []
        print(f"{ledger_url.split(':')[0]}: {DELIVERIES} deliveries, peak running {peak_running(jobs)}, "
              f"{len(jobs)} jobs, {len(events)} events")
    finally:
        stack.stop()
