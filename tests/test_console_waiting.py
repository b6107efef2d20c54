"""The console and deliveries that wait (state `queued`: CARTO could not take them yet, or their workflow
is at its cap): the list's state filter, each workflow's waiting count and oldest age, a waiting
delivery's page, and its cancel (one CANCELLED event, no job). Through the real functions-framework
apps over a rig against the local CARTO job API, which is down while the deliveries arrive."""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import pytest

from tests.rigs import BODY


@pytest.fixture
def console(rig):
    """The console's test client as a browser on its own page calls it (its Origin on a POST)."""
    client = rig.client("console")
    client.environ_base["HTTP_ORIGIN"] = "http://localhost"
    return client


def queued(rig, msg_id: str) -> str:
    """One delivery accepted while CARTO is down: its key."""
    answer = rig.post("store-clusters", BODY, msg_id=msg_id)
    assert answer.status_code == 202 and answer.get_json()["queued"] is True, answer.get_json()
    return f"store-clusters:{msg_id}"


def page(client, url: str) -> str:
    answer = client.get(url)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return html.unescape(answer.get_data(as_text=True))


def card(text: str, workflow: str) -> str:
    return text.split(f'href="/?workflow={workflow}"', 1)[1].split("</section>", 1)[0]


@pytest.fixture
def carto_down(rig):
    rig.sandbox.outage(600)
    yield
    rig.sandbox.conditions.clear()


def test_the_list_filters_waiting_deliveries_by_state(rig, console, carto_down):
    key = queued(rig, "msg_waits")
    rig.sandbox.conditions.clear()
    rig.post("store-clusters", BODY, msg_id="msg_runs")  # CARTO back: submitted inline

    text = page(console, "/?state=queued")

    assert "msg_waits" in text and "msg_runs" not in text
    assert '<option value="queued" selected' in text or 'value="queued" selected' in text
    assert rig.app.ledger.get(key).state == "queued"


def test_the_workflows_page_counts_what_waits_and_the_oldest_age(rig, console, carto_down):
    queued(rig, "msg_first")
    rig.clock.advance(90)
    queued(rig, "msg_second")
    rig.clock.advance(30)

    summary = card(page(console, "/workflows"), "store-clusters")

    assert re.search(r"2 waiting</a>, the oldest for 120\.0 s", summary), summary
    assert "state=queued" in summary  # the count links to the filtered list


def test_a_workflow_with_nothing_waiting_says_so(rig, console):
    rig.post("store-clusters", BODY, msg_id="msg_ran")
    assert "none waiting" in card(page(console, "/workflows"), "store-clusters")


def test_a_waiting_deliverys_page_says_why_it_waits_and_offers_cancel(rig, console, carto_down):
    key = queued(rig, "msg_why")
    rig.clock.advance(12)

    text = page(console, "/deliveries/" + quote(key, safe=""))

    assert "Waiting" in text and "for 12.0 s" in text and "CARTO could not take the job" in text
    assert "CARTO's last answer: 503" in text
    assert "Cancel the waiting delivery…" in text and "Re-run" not in text


def test_cancelling_a_waiting_delivery_publishes_one_cancelled_event_and_no_job_ever_runs(rig, console, carto_down):
    key = queued(rig, "msg_cancel")
    confirm = page(console, "/actions/cancel?key=" + quote(key, safe=""))
    assert "no CARTO job" in confirm
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))

    answer = console.post("/actions/cancel", data=fields)

    assert answer.status_code == 303
    record = rig.app.ledger.get(key)
    assert record.outcome == "CANCELLED" and record.job_id is None
    assert record.actions[-1]["action"] == "cancel"
    (event,) = rig.publisher.events()
    assert event["attributes"]["outcome"] == "CANCELLED" and "job_id" not in event["attributes"]
    assert event["data"]["job_id"] is None
    rig.sandbox.conditions.clear()  # CARTO is back, and the delivery's hand-off comes due: it submits nothing
    rig.run_tasks()
    assert rig.sandbox.jobs() == [] and len(rig.publisher.events()) == 1
    assert console.post("/actions/cancel", data=fields).status_code == 409  # nothing left to cancel
