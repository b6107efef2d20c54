"""The operators' console through the real functions-framework app (target `console` of main.py), over a rig:
real deliveries through `webhook` and `poll` into a SQLite ledger, against the local CARTO job API."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest

from gateway.console import app as console_app
from gateway.console import charts, csrf, queries
from gateway.errors import ActionRefused
from gateway.events import isoformat
from gateway.intake import rerun_call
from gateway.ledger import Delivery
from gateway.workflows import load_registry
from tests.constants import CARTO_TOKEN, DEMO_SECRETS, ROOT, SECRET
from tests.rigs import BODY

XSS = "<script>alert(1)</script>"


def deliver(rig, msg_id: str, body: dict | None = None, *, finish: bool = True) -> str:
    """One signed webhook through `webhook` (and, with `finish`, its job followed to the end): its job id."""
    before = len(rig.tracking())
    answer = rig.post("store-clusters", body or BODY, msg_id=msg_id)
    assert answer.status_code == 202, answer.get_json()
    if finish:
        rig.deliver(rig.tracking()[before], msg_id)
        rig.run_tasks()  # the status checks `poll` scheduled, until the job has ended
    return answer.get_json()["job_id"]


def page(client, url: str, status: int = 200) -> str:
    answer = client.get(url)
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.content_type.startswith("text/html")
    return answer.get_data(as_text=True)


def rows(text: str) -> list[str]:
    """The delivery ids in the list's table, top to bottom."""
    body = text.split('<tbody>', 1)[1].split('</tbody>', 1)[0]
    return [html.unescape(m) for m in re.findall(r'<td class="id"><a href="/deliveries/[^"]*">([^<]*)</a>', body)]


def key_url(key: str) -> str:
    return "/deliveries/" + quote(key, safe="")


def form(text: str) -> dict[str, str]:
    """The hidden fields of the confirmation page's form."""
    return {html.unescape(name): html.unescape(value)
            for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', text)}


@pytest.fixture
def console(rig):
    """The console's test client as a browser on its own page calls it (Host localhost, that Origin on a POST)."""
    client = rig.client("console")
    client.environ_base["HTTP_ORIGIN"] = "http://localhost"
    return client


# --- the list ------------------------------------------------------------------------------------

def test_the_list_shows_recent_deliveries_newest_first_with_their_columns(rig, console):
    first = deliver(rig, "msg_first")
    rig.clock.advance(5)
    deliver(rig, "msg_second", finish=False)
    text = page(console, "/")
    assert listed(text) == ["msg_second", "msg_first"]
    assert first in text and "SUCCEEDED" in text and "finished" in text and "tracked" in text
    for header in ("Received", "Workflow", "Delivery id", "State", "Outcome", "Job id", "Duration", "Checks"):
        assert f"<th>{header}" in text


def listed(text: str) -> list[str]:
    return rows(text)


@pytest.mark.parametrize(("query", "expected"), [
    ("outcome=FAILED", ["msg_failed"]),
    ("outcome=SUCCEEDED", ["msg_ok"]),
    ("state=tracked", ["msg_running"]),
    ("state=finished", ["msg_failed", "msg_ok"]),
    ("workflow=store-clusters&outcome=SUCCEEDED&state=finished", ["msg_ok"]),
    ("workflow=slow-report", []),
])
def test_the_list_filters_by_workflow_outcome_and_state(rig, console, query, expected):
    deliver(rig, "msg_ok")
    rig.clock.advance(1)
    rig.sandbox.faults.fail_jobs("Query error: boom")
    deliver(rig, "msg_failed")
    rig.clock.advance(1)
    deliver(rig, "msg_running", finish=False)
    assert listed(page(console, "/?" + query)) == expected


def test_the_list_filters_by_time_range(rig, console):
    deliver(rig, "msg_early", finish=False)  # the rig's clock starts at 2027-01-15 08:00:00 UTC
    rig.clock.advance(3600)
    deliver(rig, "msg_late", finish=False)
    assert listed(page(console, "/?since=2027-01-15T08:30")) == ["msg_late"]
    assert listed(page(console, "/?until=2027-01-15T08:30")) == ["msg_early"]
    text = page(console, "/?since=2027-01-15T07:00&until=2027-01-15T10:00")
    assert listed(text) == ["msg_late", "msg_early"]
    assert 'value="2027-01-15T07:00"' in text  # the filter state is in the page and its URL


def test_bad_filters_are_a_400_page_naming_each(console):
    text = page(console, "/?outcome=MAYBE&since=yesterday&per_page=0", status=400)
    for name in ("outcome", "since", "per_page"):
        assert f"<code>{name}</code>" in text


@pytest.mark.parametrize("field", ["delivery_id", "job_id", "key"])
def test_the_search_finds_a_delivery_by_each_of_its_ids(rig, console, field):
    job_id = deliver(rig, "msg_wanted")
    deliver(rig, "msg_other")
    record = rig.app.ledger.find_job(job_id)
    text = page(console, "/?" + f"q={quote(getattr(record, field), safe='')}")
    assert listed(text) == ["msg_wanted"]


def test_a_search_that_finds_nothing_says_so(rig, console):
    deliver(rig, "msg_one")
    text = page(console, "/?q=nothing-by-that-name")
    assert listed(text) == [] and "No deliveries match." in text


def test_the_list_pages_through_every_delivery_with_links_that_keep_the_filters(rig, console):
    for n in range(5):
        deliver(rig, f"msg_{n}", finish=False)
        rig.clock.advance(1)
    seen, url = [], "/?workflow=store-clusters&per_page=2"
    while url:
        text = page(console, html.unescape(url))
        seen += listed(text)
        older = re.search(r'<a rel="next" href="([^"]+)"', text)
        url = older.group(1) if older else None
        if url:
            assert "workflow=store-clusters" in url and "per_page=2" in url
    assert seen == [f"msg_{n}" for n in range(4, -1, -1)]


# --- one delivery --------------------------------------------------------------------------------

def test_a_delivery_page_shows_its_timeline_call_parameters_and_event(rig, console):
    job_id = deliver(rig, "msg_story")
    record = rig.app.ledger.find_job(job_id)
    text = page(console, key_url(record.key))
    for step in ("claimed", "submitted", "tracked", "checks", "finished", "event published"):
        assert f'<span class="step">{step}</span>' in text
    assert html.escape(record.query, quote=False) in text
    for name in record.parameters:
        assert f"<code>@{name}</code>" in text
    published = rig.publisher.events()[-1]
    assert f"<code>{published['attributes']['ce-id']}</code>" in text
    shown = json.loads(html.unescape(text.split('<pre class="event">', 1)[1].split("</pre>", 1)[0]))
    assert shown == published["data"]  # the event as it went out, rebuilt from the record


def test_a_failed_delivery_shows_cartos_error_beside_its_state_above_the_timeline(rig, console):
    rig.sandbox.faults.fail_jobs("Query error: the table was dropped")
    record = rig.app.ledger.find_job(deliver(rig, "msg_fails"))
    text = page(console, key_url(record.key))
    state = text.split("<dt>State</dt><dd>", 1)[1].split("</dd>", 1)[0]
    assert 'FAILED</span><div class="why" id="error">CARTO\'s error: Query error: the table was dropped' in state
    assert text.index('id="error"') < text.index("<h2>Timeline</h2>")


def test_a_failed_deliverys_list_row_shows_cartos_message_escaped_and_clipped(rig, console):
    long = "Query error: " + XSS + " " + "x" * 300
    rig.sandbox.faults.fail_jobs(long)
    deliver(rig, "msg_fails")
    row = page(console, "/").split("<tbody>", 1)[1].split("</tr>", 1)[0]
    why = re.search(r'<div class="why">([^<]*)</div>', row)
    assert why, row
    shown = html.unescape(why.group(1))
    assert shown.startswith("Query error: " + XSS) and shown.endswith("…")
    assert len(shown) == queries.ERROR_CLIP and XSS not in row


def test_a_succeeded_deliverys_row_shows_no_error(rig, console):
    deliver(rig, "msg_fine")
    assert 'class="why"' not in page(console, "/")


# --- is it stuck: running deliveries -------------------------------------------------------------

REFRESH = '<meta http-equiv="refresh"'
POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
          "base-uri 'none'")


def test_a_running_deliverys_page_shows_elapsed_time_and_the_next_check_and_refreshes(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_long", finish=False))
    rig.clock.advance(7)
    answer = console.get(key_url(record.key))
    text = answer.get_data(as_text=True)
    running = html.unescape(text.split('<dd id="progress">', 1)[1].split("</dd>", 1)[0])
    # The schedule's checks after submission: 1 s, 1.25 s, …, 1.25**9 = 7.45 s: the next after 7 s.
    next_at = isoformat(record.submitted_at + 1.25 ** 9).replace("T", " ")
    assert running.startswith(f"for 7.0 s · next status check at {next_at} (in 0.5 s) · deadline ")
    assert f'{REFRESH} content="{console_app.REFRESH_S}">' in text
    assert answer.headers["Content-Security-Policy"] == POLICY and "<script" not in text


def test_a_job_whose_checks_go_on_is_on_time_and_one_whose_check_task_was_lost_is_overdue(rig, console):
    rig.sandbox.faults.never_finish()
    record = rig.app.ledger.find_job(deliver(rig, "msg_endless", finish=False))
    rig.deliver(rig.tracking()[-1], "msg_endless")
    while rig.clock.now() < record.submitted_at + 600:  # ten minutes of checks, each task run when due
        assert rig.run_task(rig.tasks.take_next()) < 300
    on_time = page(console, key_url(record.key))
    assert "next status check at" in on_time and "overdue" not in on_time

    lost = rig.tasks.take_next()["task"]["schedule_time"].timestamp()  # the next check's task, lost
    rig.clock.advance(lost - rig.clock.now() + rig.app.poller.sweep_grace_s + 5)

    late = html.unescape(page(console, key_url(record.key)))
    assert re.search(r"its status checks are [0-9.]+ (s|min) overdue: the next sweep schedules them again", late)
    assert "next status check at" not in late
    assert '<div class="why">checks overdue</div>' in page(console, "/")


def test_a_finished_deliverys_page_does_not_refresh(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_done"))
    text = page(console, key_url(record.key))
    assert REFRESH not in text and 'id="progress"' not in text
    assert re.search(r"<dt>Duration</dt><dd>[0-9.]+ s</dd>", text)


def test_the_list_refreshes_while_a_listed_delivery_runs_and_shows_its_elapsed_time(rig, console):
    deliver(rig, "msg_over")
    assert REFRESH not in page(console, "/") and REFRESH not in page(console, "/workflows")
    deliver(rig, "msg_going", finish=False)
    rig.clock.advance(3)
    text = page(console, "/")
    assert f'{REFRESH} content="{console_app.LIST_REFRESH_S}">' in text and '<span class="running">3.0 s so far</span>' in text
    assert REFRESH not in page(console, "/?outcome=SUCCEEDED")  # only what the page shows counts


def test_the_workflows_page_never_refreshes_even_while_deliveries_run_or_wait(rig, console):
    # Each render reads up to SUMMARY_LIMIT records twice per workflow: an open tab must not repeat that.
    deliver(rig, "msg_going", finish=False)
    text = page(console, "/workflows")
    assert "running" in text.lower() and REFRESH not in text


def test_a_refreshing_page_keeps_the_policy_that_forbids_scripts(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_going", finish=False))
    for url in ("/", key_url(record.key)):
        answer = console.get(url)
        assert REFRESH in answer.get_data(as_text=True)
        assert answer.headers["Content-Security-Policy"] == POLICY, url


def test_the_tables_wrap_long_keys_instead_of_widening(console):
    css = console.get("/assets/console.css").get_data(as_text=True)
    rule = re.search(r"#deliveries td\.id, dl\.facts dd, h1 code, \.why \{ overflow-wrap: anywhere; \}", css)
    assert rule, "the rule that wraps a long key inside its cell is gone (the browser test measures its effect)"


# --- parameters as the CALL names them ----------------------------------------------------------------

@pytest.mark.parametrize(("workflow", "labels"), [
    ("parcels-postgres", [("$1", "city"), ("$2", "radius_m"), ("$3", "max_parcels"), ("$4", "zonings")]),
    ("store-revenue-snowflake", [(":1", "store_type"), (":2", "top_n"), (":3", "min_revenue"), (":4", "since")]),
])
def test_positional_parameters_are_labelled_as_the_call_writes_them(rig, console, workflow, labels):
    payload = json.loads((ROOT / "examples" / f"{workflow}.json").read_text())
    answer = rig.post(workflow, payload, msg_id="msg_positional")
    assert answer.status_code == 202, answer.get_json()
    text = page(console, key_url(f"{workflow}:msg_positional"))
    table = text.split('<table class="params">', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<td><code>([^<]*)</code> <span class="muted">([^<]*)</span></td>', table) == labels
    assert "<code>@" not in table


def test_positional_parameters_follow_their_placeholder_numbers_whatever_order_the_ledger_keeps():
    registry = load_registry(ROOT / "examples", DEMO_SECRETS)
    record = Delivery(key="k", workflow="parcels-postgres", idempotency_key="k", fingerprint="", claim_token="",
                      created_at=0.0, expires_at=0.0, query=registry.get("parcels-postgres").query,
                      parameters={"zonings": [], "city": "Madrid", "max_parcels": 20, "radius_m": 750.0})
    shown = [(p.label, p.name) for p in queries.parameters(record, registry.get("parcels-postgres"))]
    assert shown == [("$1", "city"), ("$2", "radius_m"), ("$3", "max_parcels"), ("$4", "zonings")]
    assert [p.label for p in queries.parameters(record, None)] == ["zonings", "city", "max_parcels", "radius_m"]


def test_named_parameters_keep_their_at_sign(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_named"))
    text = page(console, key_url(record.key))
    assert "<td><code>@number_of_clusters</code></td>" in text


def test_a_running_delivery_has_no_event_yet_and_offers_cancel_not_rerun(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_running", finish=False))
    text = page(console, key_url(record.key))
    assert "None yet: the job has not finished." in text
    assert "/actions/cancel?key=" in text and "/actions/rerun?key=" not in text


def test_an_unknown_delivery_is_a_404_page(console):
    assert "no delivery store-clusters:nope" in page(console, "/deliveries/store-clusters:nope", status=404)


def test_locally_the_page_links_no_cloud_logging(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_local"))
    assert "console.cloud.google.com/logs" not in page(console, key_url(record.key))


# --- actions -------------------------------------------------------------------------------------

def confirm(console, action: str, key: str) -> dict[str, str]:
    text = page(console, f"/actions/{action}?key={quote(key, safe='')}")
    fields = form(text)
    assert fields["key"] == key and fields["csrf"]
    return fields


def test_cancel_after_confirmation_cancels_the_job_with_one_cancelled_event(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_cancel", finish=False))
    fields = confirm(console, "cancel", record.key)
    answer = console.post("/actions/cancel", data=fields)
    assert answer.status_code == 303 and answer.headers["Location"].startswith(key_url(record.key))
    after = rig.app.ledger.get(record.key)
    assert after.outcome == "CANCELLED"
    assert after.actions[-1]["action"] == "cancel" and after.actions[-1]["by"] == "local operator (127.0.0.1)"
    assert [e["attributes"]["outcome"] for e in rig.publisher.events()] == ["CANCELLED"]
    assert rig.sandbox.jobs()[0].cancelled
    text = page(console, answer.headers["Location"])
    assert "The job was cancelled" in text and "by local operator (127.0.0.1)" in text
    assert console.post("/actions/cancel", data=fields).status_code == 409  # a second time: nothing to cancel
    assert len(rig.publisher.events()) == 1


def test_cancel_without_its_csrf_token_is_refused_and_cancels_nothing(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_keep", finish=False))
    fields = confirm(console, "cancel", record.key)
    for forged in ({**fields, "csrf": ""}, {k: v for k, v in fields.items() if k != "csrf"},
                   {**fields, "csrf": csrf.issue("someone else", f"cancel\n{record.key}\n0", rig.clock.now())}):
        assert console.post("/actions/cancel", data=forged).status_code == 403
    assert rig.app.ledger.get(record.key).outcome is None and rig.publisher.events() == []


def test_a_token_for_one_delivery_does_not_cancel_another(rig, console):
    one = rig.app.ledger.find_job(deliver(rig, "msg_one", finish=False))
    other = rig.app.ledger.find_job(deliver(rig, "msg_other", finish=False))
    fields = confirm(console, "cancel", one.key)
    assert console.post("/actions/cancel", data={**fields, "key": other.key}).status_code == 403
    assert rig.app.ledger.get(other.key).outcome is None


def test_a_stale_form_is_refused(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_stale", finish=False))
    fields = confirm(console, "cancel", record.key)
    rig.clock.advance(csrf.MAX_AGE_S + 1)
    assert console.post("/actions/cancel", data=fields).status_code == 403


def test_rerun_makes_a_new_linked_delivery_with_the_same_parameters_its_own_job_and_event(rig, console):
    original = rig.app.ledger.find_job(deliver(rig, "msg_again"))
    fields = confirm(console, "rerun", original.key)
    answer = console.post("/actions/rerun", data=fields)
    assert answer.status_code == 303
    new_key = f"{original.key}:rerun-1"
    assert answer.headers["Location"].startswith(key_url(new_key))
    rerun = rig.app.ledger.get(new_key)
    assert (rerun.rerun_of, rerun.parameters, rerun.query) == (original.key, original.parameters, original.query)
    assert rerun.job_id not in (None, original.job_id) and len(rig.sandbox.jobs()) == 2
    rig.deliver(rig.tracking()[-1], "rerun")
    rig.run_tasks()
    events = rig.publisher.events()
    assert [e["data"]["job_id"] for e in events] == [original.job_id, rerun.job_id]
    (noted,) = rig.app.ledger.get(original.key).actions
    assert noted == {"action": "rerun", "by": "local operator (127.0.0.1)", "at": rerun.created_at,
                     "new_key": new_key, "job_id": rerun.job_id}
    assert rerun.actions[0]["rerun_of"] == original.key
    text = page(console, answer.headers["Location"])
    assert "This is the re-run you asked for" in text and f"{html.escape(original.key)}</code>" in text


def rewritten_registry(rig, tmp_path, change):
    """The rig's workflows with store-clusters' file changed by `change` (a function of its definition)."""
    schemas = shutil.copytree(rig.app.settings.schemas_dir, tmp_path / "changed-schemas")
    path = schemas / "workflows" / "store-clusters.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return load_registry(schemas, rig.app.settings.env)


def test_rerun_after_the_procedure_was_renamed_sends_the_files_current_call_and_the_page_shows_both(
        rig, console, tmp_path):
    original = rig.app.ledger.find_job(deliver(rig, "msg_renamed"))
    renamed = original.query.replace("workflow_procedure_09cc2e19ad5bbc6f", "workflow_procedure_5d1e0b7a2c94f318")
    assert renamed != original.query
    rig.app.registry = rewritten_registry(rig, tmp_path, lambda definition: {**definition, "query": renamed})

    text = page(console, f"/actions/rerun?key={quote(original.key, safe='')}")
    answer = console.post("/actions/rerun", data=form(text))

    assert "The workflow file has changed since this delivery ran" in text and "file's CALL as it is now" in text
    assert f"<pre>{html.escape(original.query)}</pre>" in text and f"<pre>{html.escape(renamed)}</pre>" in text
    assert answer.status_code == 303
    rerun = rig.app.ledger.get(f"{original.key}:rerun-1")
    received = rig.sandbox.jobs()[-1]
    assert received.external_id == rerun.job_id and received.query.startswith(renamed + "\n")
    assert received.procedure == "carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_5d1e0b7a2c94f318"
    assert (rerun.query, rerun.parameters) == (renamed, original.parameters)
    assert rerun.actions[0]["call_changed"] is True and rerun.actions[0]["original_query"] == original.query


def test_the_rerun_page_of_an_unchanged_workflow_shows_one_call(rig, console):
    original = rig.app.ledger.find_job(deliver(rig, "msg_same"))
    text = page(console, f"/actions/rerun?key={quote(original.key, safe='')}")
    assert "has changed" not in text and text.count("<pre>") == 1
    assert "with the same CALL, parameters, connection and CARTO base URL" in text


def refused_rerun(rig, console, key: str) -> str:
    """The confirmation page of a re-run that is not allowed (no form to post), and the answer to a POST made
    all the same with a valid token: 409, nothing sent to CARTO."""
    text = page(console, f"/actions/rerun?key={quote(key, safe='')}")
    assert "This delivery cannot be re-run" in text and "Yes, re-run it" not in text and "<form" not in text
    fields = {"key": key, "attempt": "1", "plan": "",
              "csrf": csrf.issue("local operator (127.0.0.1)", f"rerun\n{key}\n1\n", rig.clock.now())}
    before = len(rig.sandbox.jobs())
    answer = console.post("/actions/rerun", data=fields)
    assert answer.status_code == 409 and len(rig.sandbox.jobs()) == before
    assert rig.app.ledger.get(f"{key}:rerun-1") is None
    return text


def test_rerun_is_refused_when_the_workflow_file_now_takes_other_parameters(rig, console, tmp_path):
    original = rig.app.ledger.find_job(deliver(rig, "msg_reshaped"))

    def dropped(definition):
        definition["query"] = definition["query"].replace(",@store_type", "")
        del definition["parameters"]["store_type"]
        return definition
    rig.app.registry = rewritten_registry(rig, tmp_path, dropped)

    assert "send its body again" in refused_rerun(rig, console, original.key)


@pytest.mark.parametrize("change", [
    {"type": "INT64", "from": "/store/type", "coerce": True},  # another type
    {"type": "STRING", "value": "Pharmacy"},  # a constant
    {"type": "STRING", "from": "/store/kind"},  # another field of the body
    {"type": "STRING", "header": "X-Store-Type"},  # a header
])
def test_rerun_is_refused_when_a_parameters_type_or_source_changed(rig, console, tmp_path, change):
    original = rig.app.ledger.find_job(deliver(rig, "msg_retyped"))
    assert original.parameter_sources["store_type"] == {"type": "STRING", "from": "/store/type"}

    def retyped(definition):
        definition["parameters"]["store_type"] = change
        return definition
    rig.app.registry = rewritten_registry(rig, tmp_path, retyped)

    text = html.unescape(refused_rerun(rig, console, original.key))
    said = json.dumps({k: v for k, v in change.items() if k != "coerce"})
    assert f"parameter store_type is now {said}; the delivery's was " in text and "send its body again" in text


@pytest.mark.parametrize(("change", "said"), [
    ({"type": "INT64", "from": "/store/type"}, "is now INT64"),
    ({"type": "STRING", "value": "Pharmacy"}, 'is now the constant "Pharmacy"'),
])
def test_a_record_without_parameter_sources_is_checked_by_its_values(rig, tmp_path, change, said):
    # A delivery recorded before parameter_sources: its values must still fit the file as it is now.
    original = replace(rig.app.ledger.find_job(deliver(rig, "msg_older")), parameter_sources=None)

    def retyped(definition):
        definition["parameters"]["store_type"] = change
        return definition
    workflow = rewritten_registry(rig, tmp_path, retyped).get("store-clusters")

    with pytest.raises(ActionRefused, match=f"parameter store_type {said}; the delivery sent "):
        rerun_call(original, workflow)
    assert rerun_call(original, rig.app.registry.get("store-clusters")) == original.query


def test_rerun_is_refused_when_the_file_changed_between_the_confirmation_and_the_post(rig, console, tmp_path):
    original = rig.app.ledger.find_job(deliver(rig, "msg_swapped"))
    fields = confirm(console, "rerun", original.key)  # the page said: the same CALL, connection and base URL
    evil = original.query.replace("workflow_procedure_09cc2e19ad5bbc6f", "evil_proc")
    rig.app.registry = rewritten_registry(rig, tmp_path, lambda d: {**d, "query": evil, "connection": "other_conn"})

    answer = console.post("/actions/rerun", data=fields)

    assert answer.status_code == 409 and "open the confirmation page again" in answer.get_data(as_text=True)
    assert len(rig.sandbox.jobs()) == 1 and rig.app.ledger.get(f"{original.key}:rerun-1") is None
    assert rig.app.ledger.get(original.key).actions == []
    tampered = {**fields, "plan": console_app.actions.rerun_plan(rig.app, original).digest}
    assert console.post("/actions/rerun", data=tampered).status_code == 403  # the token names what was shown


def test_a_connection_only_change_is_shown_on_the_confirmation_and_recorded_on_the_rerun(rig, console, tmp_path):
    original = rig.app.ledger.find_job(deliver(rig, "msg_moved"))
    rig.app.registry = rewritten_registry(rig, tmp_path, lambda d: {**d, "connection": "other_conn"})

    text = page(console, f"/actions/rerun?key={quote(original.key, safe='')}")
    answer = console.post("/actions/rerun", data=form(text))

    assert "The workflow file has changed since this delivery ran" in text and "file's connection as it is now" in text
    assert "<pre>carto_dw</pre>" in text and "<pre>other_conn</pre>" in text and "with the same CALL" not in text
    assert answer.status_code == 303
    rerun = rig.app.ledger.get(f"{original.key}:rerun-1")
    assert (rerun.connection, rerun.query) == ("other_conn", original.query)
    assert rig.sandbox.jobs()[-1].external_id == rerun.job_id
    noted = rerun.actions[0]
    assert noted["connection_changed"] is True and noted["original_connection"] == "carto_dw"
    assert "call_changed" not in noted and "base_url_changed" not in noted


def test_posting_the_same_rerun_form_twice_makes_one_job(rig, console):
    original = rig.app.ledger.find_job(deliver(rig, "msg_twice"))
    fields = confirm(console, "rerun", original.key)
    first = console.post("/actions/rerun", data=fields)
    second = console.post("/actions/rerun", data=fields)
    assert first.headers["Location"].split("?")[0] == second.headers["Location"].split("?")[0]
    assert "done=rerun-again" in second.headers["Location"]
    assert len(rig.sandbox.jobs()) == 2
    assert confirm(console, "rerun", original.key)["attempt"] == "2"  # a new confirmation is a new re-run


def test_a_rerun_of_a_paused_workflows_delivery_is_accepted_and_held_until_the_flag_goes(rig, console, tmp_path):
    original = rig.app.ledger.find_job(deliver(rig, "msg_held"))
    unpaused = rig.app.registry
    rig.app.registry = rewritten_registry(rig, tmp_path, lambda d: {**d, "paused": True})

    text = html.unescape(page(console, f"/actions/rerun?key={quote(original.key, safe='')}"))
    answer = console.post("/actions/rerun", data=form(text))

    assert "Workflow store-clusters is paused: the re-run is accepted and waits" in text and "Yes, re-run it" in text
    new_key = f"{original.key}:rerun-1"
    assert answer.status_code == 303 and answer.headers["Location"] == key_url(new_key) + "?done=rerun-queued"
    held = rig.app.ledger.get(new_key)
    assert (held.state, held.queue_reason, held.job_id, held.rerun_of) == ("queued", "paused", None, original.key)
    assert len(rig.sandbox.jobs()) == 1  # nothing sent to CARTO while paused
    shown = html.unescape(page(console, answer.headers["Location"]))
    assert "waiting for its job" in shown and "the workflow is paused" in shown
    again = console.post("/actions/rerun", data=form(text))
    assert again.status_code == 303 and "done=rerun-again" in again.headers["Location"]
    (noted,) = rig.app.ledger.get(original.key).actions
    assert (noted["new_key"], noted["job_id"]) == (new_key, None)

    rig.app.registry = unpaused  # the file no longer says paused: the sweeper lets it through
    assert rig.client("sweep").post("/").get_json()["handed_off"] == 1
    rig.run_tasks()
    started = rig.app.ledger.get(new_key)
    assert started.job_id == rig.sandbox.jobs()[-1].external_id and len(rig.sandbox.jobs()) == 2


def test_rerun_without_its_csrf_token_is_refused_and_runs_nothing(rig, console):
    original = rig.app.ledger.find_job(deliver(rig, "msg_norerun"))
    fields = confirm(console, "rerun", original.key)
    assert console.post("/actions/rerun", data={**fields, "csrf": "1." + "A" * 43}).status_code == 403
    assert console.post("/actions/rerun", data={k: v for k, v in fields.items() if k != "csrf"}).status_code == 403
    assert console.post("/actions/rerun", data={**fields, "attempt": "7"}).status_code == 403
    assert len(rig.sandbox.jobs()) == 1 and rig.app.ledger.get(f"{original.key}:rerun-1") is None


def test_a_running_delivery_cannot_be_rerun(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_busy", finish=False))
    assert "only a finished delivery can be re-run" in refused_rerun(rig, console, record.key)


# --- who may look ----------------------------------------------------------------------------------

def id_token(email: str) -> str:
    """A token shaped like the one Cloud Run has already verified (its payload is all the console reads)."""
    part = base64.urlsafe_b64encode(json.dumps({"email": email}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{part}.c2lnbmF0dXJl"


def test_deployed_the_operator_is_the_iam_caller_and_each_page_links_its_logs(rig, console, monkeypatch):
    record = rig.app.ledger.find_job(deliver(rig, "msg_cloud", finish=False))
    monkeypatch.setitem(rig.app.settings.env, "K_SERVICE", "gateway-console")  # as Cloud Run sets it
    headers = {"Authorization": f"Bearer {id_token('ops@example.com')}"}
    text = console.get(key_url(record.key), headers=headers).get_data(as_text=True)
    assert "ops@example.com" in text
    assert "console.cloud.google.com/logs/query;query=jsonPayload.delivery_id%3D%22msg_cloud%22" in text
    fields = form(console.get(f"/actions/cancel?key={quote(record.key)}", headers=headers).get_data(as_text=True))
    assert console.post("/actions/cancel", data=fields, headers=headers).status_code == 303
    assert rig.app.ledger.get(record.key).actions[-1]["by"] == "ops@example.com"
    assert console.get("/").status_code == 403  # no identity: refused


def test_deployed_the_identity_may_come_in_the_serverless_authorization_header(rig, console, monkeypatch):
    monkeypatch.setitem(rig.app.settings.env, "K_SERVICE", "gateway-console")
    headers = {"X-Serverless-Authorization": f"Bearer {id_token('oncall@example.com')}", "Authorization": "Basic eA=="}
    assert "oncall@example.com" in page_with(console, "/", headers)


def page_with(console, url: str, headers: dict[str, str]) -> str:
    answer = console.get(url, headers=headers)
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def test_locally_a_caller_from_another_host_is_refused(console):
    assert console.get("/", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403


# --- which Host and Origin ----------------------------------------------------------------------------

FOREIGN = "attacker.example:8083"  # a name its owner points at 127.0.0.1 once the operator has opened its page


def refused(answer) -> bool:
    """A 403 error page of the console (never a 5xx)."""
    return answer.status_code == 403 and answer.content_type.startswith("text/html")


@pytest.mark.parametrize("url", ["/", "/workflows", "/actions/cancel?key=x", "/assets/console.css"])
def test_a_get_naming_a_foreign_host_is_refused(console, url):
    answer = console.get(url, headers={"Host": FOREIGN})
    assert refused(answer), answer.status_code
    assert "not served under the host" in answer.get_data(as_text=True) and "<table" not in answer.get_data(as_text=True)


@pytest.mark.parametrize("host", ["localhost", "localhost:8083", "127.0.0.1:8083", "[::1]:8083"])
def test_loopback_hosts_on_any_port_are_served(console, host):
    assert console.get("/", headers={"Host": host}).status_code == 200


def test_a_cancel_posted_from_a_foreign_origin_is_refused_and_the_job_keeps_running(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_cross_site", finish=False))
    fields = confirm(console, "cancel", record.key)

    for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                    {"Origin": "http://localhost.attacker.example"},
                    {"Origin": "", "Sec-Fetch-Site": "cross-site"}):
        assert refused(console.post("/actions/cancel", data=fields, headers=headers)), headers

    assert rig.app.ledger.get(record.key).outcome is None and not rig.sandbox.jobs()[0].cancelled
    assert console.post("/actions/cancel", data=fields).status_code == 303  # from its own page it works


def test_a_rebinding_style_cancel_is_refused_and_the_job_keeps_running(rig, console):
    """What a page at attacker.example:8083 sends once that name resolves to 127.0.0.1: to the browser it is
    a same-origin request, so its Origin and Sec-Fetch-Site are its own; only the Host tells it apart."""
    record = rig.app.ledger.find_job(deliver(rig, "msg_rebound", finish=False))
    fields = confirm(console, "cancel", record.key)  # even holding a valid form
    rebound = {"Host": FOREIGN, "Origin": f"http://{FOREIGN}", "Sec-Fetch-Site": "same-origin"}

    assert refused(console.get(f"/actions/cancel?key={quote(record.key)}", headers=rebound))
    assert refused(console.post("/actions/cancel", data=fields, headers=rebound))
    assert rig.app.ledger.get(record.key).outcome is None and not rig.sandbox.jobs()[0].cancelled
    assert not rig.publisher.events()


def test_a_post_without_origin_is_served_only_when_the_browser_says_same_origin(rig, console):
    record = rig.app.ledger.find_job(deliver(rig, "msg_no_origin", finish=False))
    fields = confirm(console, "cancel", record.key)
    del console.environ_base["HTTP_ORIGIN"]

    assert refused(console.post("/actions/cancel", data=fields))
    assert rig.app.ledger.get(record.key).outcome is None
    assert console.post("/actions/cancel", data=fields, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 303


def test_deployed_the_console_serves_its_configured_host_and_the_operators_proxy(rig, console, monkeypatch):
    own = "gateway-console-abc123-uc.a.run.app"
    monkeypatch.setattr(rig.app, "settings", replace(rig.app.settings, console_hosts=(own,)))
    monkeypatch.setitem(rig.app.settings.env, "K_SERVICE", "gateway-console")
    record = rig.app.ledger.find_job(deliver(rig, "msg_proxied", finish=False))
    headers = {"Authorization": f"Bearer {id_token('ops@example.com')}", "Host": own}

    assert refused(console.get("/", headers={**headers, "Host": "gateway-console.attacker.example"}))
    fields = form(console.get(f"/actions/cancel?key={quote(record.key)}", headers=headers).get_data(as_text=True))
    # `gcloud run services proxy` sends the service's Host and passes on the browser's loopback Origin.
    assert refused(console.post("/actions/cancel", data=fields, headers={**headers, "Origin": "https://attacker.example"}))
    assert console.post("/actions/cancel", data=fields,
                        headers={**headers, "Origin": "http://localhost:8083"}).status_code == 303


# --- what no page may do -----------------------------------------------------------------------------

def all_pages(rig, console) -> dict[str, Any]:
    """Every page of the console over deliveries whose sender text is a script tag: url → (answer, the status it
    must have, whether it shows the sender's text)."""
    hostile = {**BODY, "store": {"type": XSS}}
    rig.sandbox.faults.fail_jobs(f"Query error: {XSS}")
    failed = rig.app.ledger.find_job(deliver(rig, XSS, hostile))
    running = rig.app.ledger.find_job(deliver(rig, f"{XSS}-2", hostile, finish=False))
    expected = {"/": (200, True), "/workflows": (200, False), f"/?q={quote(XSS)}": (200, True),
                f"/?q={quote(failed.job_id)}": (200, True), key_url(failed.key): (200, True),
                key_url(running.key): (200, True), f"/actions/rerun?key={quote(failed.key)}": (200, True),
                f"/actions/cancel?key={quote(running.key)}": (200, True),
                f"/deliveries/{quote(XSS)}": (404, True),  # an unknown key, named in the answer as text
                f"/?workflow={quote(XSS)}": (400, False)}  # an unknown workflow filter, not echoed
    return {url: (console.get(url), status, shown) for url, (status, shown) in expected.items()}


def test_a_payload_script_tag_is_shown_as_text_everywhere(rig, console):
    escaped = html.escape(XSS)
    for url, (answer, status, shown) in all_pages(rig, console).items():
        text = answer.get_data(as_text=True)
        assert answer.status_code == status, url
        assert XSS not in text and "<script" not in text.lower(), url
        assert (escaped in text) == shown, url


def test_every_page_forbids_scripts_and_framing(rig, console):
    for url, (answer, _, _) in all_pages(rig, console).items():
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy and "frame-ancestors 'none'" in policy, url
        assert answer.headers["X-Content-Type-Options"] == "nosniff", url


def test_no_page_holds_the_carto_token_or_a_webhook_secret(rig, console):
    for url, (answer, _, _) in all_pages(rig, console).items():
        text = answer.get_data(as_text=True)
        assert CARTO_TOKEN not in text and SECRET not in text, url
        assert SECRET.removeprefix("whsec_") not in text, url


def test_the_stylesheet_is_served(console):
    answer = console.get("/assets/console.css")
    assert answer.status_code == 200 and answer.content_type.startswith("text/css") and b"table" in answer.data


# --- the workflows' pictures ----------------------------------------------------------------------------

def test_each_workflow_gets_its_outcomes_and_duration_percentiles_of_the_last_day(rig, console):
    deliver(rig, "msg_a")
    rig.sandbox.faults.fail_jobs("Query error: boom")
    deliver(rig, "msg_b")
    deliver(rig, "msg_c", finish=False)
    text = page(console, "/workflows")
    card = text.split('href="/?workflow=store-clusters"', 1)[1].split("</section>", 1)[0]
    assert "3 deliveries" in card and "p50" in card and "p95" in card
    bars = card.split("<h3>By outcome</h3>", 1)[1].split("</svg>", 1)[0]
    assert re.findall(r'font-size="12">([A-Z_]+)</text>', bars) == ["SUCCEEDED", "FAILED", "RUNNING"]
    assert card.count("<svg") == 2


def test_p50_and_p95_interpolate_between_closest_ranks():
    from gateway.console.queries import percentiles

    assert percentiles([float(n) for n in range(1, 101)]) == pytest.approx((50.5, 95.05))
    assert percentiles([4.0]) == (4.0, 4.0) and percentiles([]) == (None, None)


def bars(svg: str) -> list[tuple[float, float, float]]:
    """Each drawn bar of a chart: (x, width, height), only those with a height."""
    found = [tuple(map(float, m)) for m in re.findall(r'<rect x="([^"]+)" y="[^"]+" width="([^"]+)" height="([^"]+)"', svg)]
    return [bar for bar in found if bar[2] > 0]


def numbers(svg: str) -> list[float]:
    """Every number in the chart's attributes."""
    return [float(n) for n in re.findall(r'="(-?[0-9.]+)"', svg)]


@pytest.mark.parametrize("count", [1, 3, 5, 40])
def test_the_duration_chart_of_jobs_that_all_took_the_same_time_is_one_bar_in_the_middle(count):
    svg = str(charts.duration_histogram([4.2] * count, 4.2, 4.2))
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    (bar,) = bars(svg)
    assert bar[0] + bar[1] / 2 == pytest.approx((charts.WIDTH - 20) / 2, abs=1)
    assert ">4.2 s</text>" in svg and "p50 4.2 s" in svg and "p95 4.2 s" in svg
    assert all(0 <= n <= charts.WIDTH for n in numbers(svg))


@pytest.mark.parametrize("durations", [[0.0], [2.0, 30.0], [1.0, 1.0, 9.0], [3.0, 5.0, 8.0, 120.0]])
def test_the_duration_chart_of_fewer_than_five_jobs_draws_each_duration_where_it_stands(durations):
    p50, p95 = queries.percentiles(durations)
    svg = str(charts.duration_histogram(durations, p50, p95))
    drawn = bars(svg)
    distinct = sorted(set(durations))
    assert len(drawn) == len(distinct)
    centres = [x + width / 2 for x, width, _ in drawn]
    assert centres == sorted(centres) and len(set(centres)) == len(centres)  # in order, none on another
    tallest, most = max(bar[2] for bar in drawn), max(map(durations.count, distinct))
    assert [bar[2] / tallest for bar in drawn] == [durations.count(v) / most for v in distinct]  # height: jobs
    assert re.findall(r'text-anchor="middle">([^<]+)</text>', svg)[0] == charts._seconds(distinct[0])
    assert "nan" not in svg.lower() and all(0 <= n <= charts.WIDTH for n in numbers(svg))


def test_the_duration_chart_of_five_or_more_spread_jobs_is_a_histogram_labelled_at_both_ends():
    durations = [1.0, 2.0, 2.5, 3.0, 13.0]
    svg = str(charts.duration_histogram(durations, *queries.percentiles(durations)))
    assert len(re.findall(r"<rect ", svg)) == 12 and len(bars(svg)) == 4  # 1 · 2, 2.5 · 3 · 13
    assert '">1.0 s</text>' in svg and 'text-anchor="end">13.0 s</text>' in svg
