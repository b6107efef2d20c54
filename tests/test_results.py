"""Results: the one bounded SELECT a read sends (each warehouse's quoting, hostile names refused), the
byte and row bounds, and the poller recording the result with the outcome before it publishes, on a
gateway instance against the local CARTO job API (fake clock). The same on the whole local stack:
tests/test_results_stack.py."""

from __future__ import annotations

import html
import json
from urllib.parse import quote

import jsonschema
import pytest

from gateway.errors import ConfigError, LedgerUnavailable, PublishUnavailable
from gateway.ledger import DeliveryQuery
from gateway.ledger.sqlite import SqliteLedger
from gateway.results import UnsafeName, bounded, quote_table, select_sql
from gateway.workflows import load_registry
from tests.constants import CARTO_TOKEN, ROOT
from tests.resulttools import HOSTILE, PROJECT_DS, SCHEMA, SECRETS, merged, procedure, workflow, write_workflows
from tests.rigs import EVENT_SCHEMA, Rig, gateway_env

# --- the statement -------------------------------------------------------------------------------

QUOTED = {
    "bigquery": "SELECT `store_id`, `score` FROM `carto-dw-ac-x`.`ds`.`out_1` LIMIT 6",
    "snowflake": 'SELECT "STORE_ID", "SCORE" FROM "DB"."DS"."OUT_1" LIMIT 6',  # the case Snowflake gives unquoted names
    "postgresql": 'SELECT "store_id", "score" FROM "db"."ds"."out_1" LIMIT 6',  # and PostgreSQL and Redshift
    "redshift": 'SELECT "store_id", "score" FROM "db"."ds"."out_1" LIMIT 6',
}


@pytest.mark.parametrize("warehouse", list(QUOTED))
def test_each_warehouse_gets_its_own_quoting_and_one_bounded_select(warehouse):
    table = "carto-dw-ac-x.ds.out_1" if warehouse == "bigquery" else "db.ds.out_1"

    assert select_sql(table, warehouse, 5, ["store_id", "score"]) == QUOTED[warehouse]


@pytest.mark.parametrize("warehouse", ["snowflake", "postgresql", "redshift"])
def test_a_hyphen_is_a_bigquery_project_ids_only(warehouse):
    with pytest.raises(UnsafeName):
        quote_table("carto-dw-ac-x.ds.out_1", warehouse)


@pytest.mark.parametrize("name", [HOSTILE, "a.b.c.d", "", "a..b", 'a"b.c', "a b.c", "a.b;c", "`a.b.c`", "a.b/*c*/",
                                  "a.b\nc", "ds.t--"])
@pytest.mark.parametrize("warehouse", ["bigquery", "snowflake", "postgresql", "redshift"])
def test_a_name_that_is_not_a_plain_dotted_identifier_is_refused(name, warehouse):
    with pytest.raises(UnsafeName):
        quote_table(name, warehouse)


def test_a_column_that_is_not_a_plain_identifier_is_refused():
    with pytest.raises(UnsafeName):
        select_sql("p.d.t", "bigquery", 5, ["a", "b` FROM x; --"])


def test_rows_stop_at_the_limit_and_say_the_table_has_more():
    rows = [{"n": n} for n in range(6)]

    assert bounded("t", rows, [], 5, 10_000) == {"table": "t", "rows": rows[:5], "schema": [], "truncated": True}
    assert bounded("t", rows[:5], [], 5, 10_000)["truncated"] is False


def test_rows_are_cut_where_the_json_would_pass_max_bytes():
    rows = [{"name": "x" * 100} for _ in range(50)]

    result = bounded("t", rows, [{"name": "name", "type": "STRING"}], 50, 2_000)

    assert result["truncated"] is True and 0 < len(result["rows"]) < 50
    assert len(json.dumps(result, separators=(",", ":")).encode()) <= 2_000


# --- the workflow file --------------------------------------------------------------------------

def test_the_result_block_loads_with_its_defaults(schemas):
    write_workflows(schemas, {"answer": workflow("answer", "p", {}),
                              "fixed": workflow("fixed", "p", {"table": "p-1.d.t", "rows": 7, "columns": ["a"]})})

    registry = load_registry(schemas, SECRETS)

    assert (registry.get("answer").result.table, registry.get("answer").result.rows) == (None, 100)
    fixed = registry.get("fixed").result
    assert (fixed.table, fixed.rows, fixed.columns) == ("p-1.d.t", 7, ("a",))


@pytest.mark.parametrize("result, problem", [
    ({"rows": 1001}, "$.result.rows"), ({"rows": 0}, "$.result.rows"), ({"columns": ["a; DROP"]}, "$.result.columns"),
    ({"table": HOSTILE}, "$.result.table"), ({"tables": "x"}, "$.result"),
])
def test_a_bad_result_block_stops_the_load_naming_where(schemas, result, problem):
    write_workflows(schemas, {"answer": workflow("answer", "p", result)})

    with pytest.raises(ConfigError) as caught:
        load_registry(schemas, SECRETS)

    assert problem in str(caught.value)


# --- the poller, on a gateway instance against the sandbox --------------------------------------

XSS = "<script>alert(1)</script>"
PROCEDURES = merged(procedure("answer_proc", count=12), procedure("fixed_proc", count=3, table=f"{PROJECT_DS}.fixed_out",
                                                                    named=False),
                    procedure("many_proc", count=30), procedure("hostile_proc", table=f"{HOSTILE}{XSS}"),
                    {f"{PROJECT_DS}.xss_proc": {"parameters": {"n": "INT64"}, "duration_s": 0.3, "output": {
                        "schema": [{"name": "note", "type": "STRING"}, {"name": "extra", "type": "JSON"}],
                        "rows": [[XSS, {"html": XSS}]]}}})


@pytest.fixture
def results_rig(schemas, tmp_path, clock, make_sandbox):
    write_workflows(schemas, {"answer": workflow("answer", "answer_proc", {"rows": 5}),
                              "plain": workflow("plain", "answer_proc", None),
                              "fixed": workflow("fixed", "fixed_proc", {"table": f"{PROJECT_DS}.fixed_out"}),
                              "many": workflow("many", "many_proc", {"rows": 25}),
                              "hostile": workflow("hostile", "hostile_proc", {}),
                              "xss": workflow("xss", "xss_proc", {})})
    sandbox = make_sandbox(token=CARTO_TOKEN, default_duration_s=1.0, on_clock=True, procedures=PROCEDURES)
    ledger = CrashBeforePublish(tmp_path / "ledger.sqlite3")
    return Rig.build(gateway_env(schemas, sandbox, tmp_path, **SECRETS), clock, sandbox, ledger=ledger)


class CrashBeforePublish(SqliteLedger):
    """A ledger whose next `mark_published` fails while armed: the instance dies between publishing and recording
    that it did; and `published_events` lets a test fail the publish itself."""

    armed = False

    def mark_published(self, key, now):
        if self.armed:
            self.armed = False
            raise LedgerUnavailable("injected crash after the event was published")
        return super().mark_published(key, now)


def _run(rig: Rig, name: str, n: int = 3) -> dict:
    assert rig.post(name, {"n": n}).status_code == 202
    rig.clock.advance(2)
    rig.poll_all()
    return rig.publisher.events()[-1]


def test_the_event_carries_the_first_rows_the_schema_and_truncated(results_rig):
    event = _run(results_rig, "answer")

    jsonschema.validate(event["data"], EVENT_SCHEMA)
    result = event["data"]["result"]
    assert [row["store_id"] for row in result["rows"]] == [1, 2, 3, 4, 5]
    assert result["schema"] == SCHEMA and result["truncated"] is True
    assert result["table"].startswith(f"{PROJECT_DS}.answer_proc_out_")


def test_a_workflow_without_result_sends_no_query_and_its_event_has_no_result(results_rig):
    event = _run(results_rig, "plain")

    assert "result" not in event["data"] and results_rig.sandbox.api.queries == []


def test_a_fixed_table_is_read_when_the_job_names_none(results_rig):
    event = _run(results_rig, "fixed")

    result = event["data"]["result"]
    assert result["table"] == f"{PROJECT_DS}.fixed_out" and len(result["rows"]) == 3 and result["truncated"] is False


def test_the_result_is_recorded_with_the_outcome_and_a_republished_event_is_the_same_bytes(results_rig):
    rig = results_rig
    assert rig.post("answer", {"n": 4}).status_code == 202
    rig.clock.advance(2)
    rig.app.ledger.armed = True
    statuses = rig.poll_all()  # published, then the crash before mark_published: Pub/Sub redelivers
    assert statuses == [500]
    record = rig.app.ledger.recent(DeliveryQuery())[0]
    assert record.outcome == "SUCCEEDED" and record.result["rows"][0]["store_id"] == 1 and not record.published
    queries = len(rig.sandbox.api.queries)

    assert rig.poll_all() == [200]

    first, again = rig.publisher.on("workflow-job-events")
    assert again.data == first.data and again.attributes == first.attributes
    assert len(rig.sandbox.api.queries) == queries  # the recorded result, not a second read


def test_a_publish_that_fails_after_recording_publishes_the_recorded_event_on_redelivery(results_rig):
    rig = results_rig
    assert rig.post("answer", {"n": 5}).status_code == 202
    rig.clock.advance(2)
    real = rig.publisher.publish
    calls = []

    def fail_once(topic, message):
        if topic == "workflow-job-events" and not calls:
            calls.append(message)
            raise PublishUnavailable("injected")
        return real(topic, message)

    rig.publisher.publish = fail_once
    assert rig.poll_all() == [500]
    assert rig.poll_all() == [200]

    (published,) = rig.publisher.on("workflow-job-events")
    assert published.data == calls[0].data and published.attributes == calls[0].attributes


# --- where operators see it: the console's delivery page and `status` (GET /jobs/{id}) -----------

def _page(rig: Rig, name: str) -> tuple[str, dict]:
    event = _run(rig, name)
    record = rig.app.ledger.find_job(event["data"]["job_id"])
    answer = rig.client("console").get("/deliveries/" + quote(record.key, safe=""))
    assert answer.status_code == 200
    return answer.get_data(as_text=True), event


def test_the_delivery_page_shows_the_first_20_rows_the_schema_and_truncated(results_rig):
    text, event = _page(results_rig, "many")

    section = text.split("<h2>Result</h2>", 1)[1].split("<h2>", 1)[0]
    assert "25 rows of" in section and "truncated" in section and "the first 20 below" in section
    assert section.count("<tr><td>") == 20 and "<td>20</td>" in section and "<td>21</td>" not in section
    assert "store_id" in section and "INT64" in section


def test_the_delivery_page_shows_a_failed_read_escaped(results_rig):
    text, event = _page(results_rig, "hostile")

    section = text.split("<h2>Result</h2>", 1)[1].split("<h2>", 1)[0]
    assert "unsafeName" in section and XSS not in text and html.escape(XSS) in section


def test_row_values_are_escaped_and_no_page_or_answer_with_a_result_holds_the_token(results_rig):
    text, event = _page(results_rig, "xss")
    status = results_rig.job_request("GET", event["data"]["job_id"])

    assert XSS not in text and "<script" not in text.lower() and html.escape(XSS) in text
    assert status.status_code == 200 and status.get_json()["result"] == event["data"]["result"]
    for shown in (text, status.get_data(as_text=True), json.dumps(results_rig.publisher.events())):
        assert CARTO_TOKEN not in shown


def test_the_example_subscriber_logs_the_rows(results_rig, capsys):
    import importlib.util
    from base64 import b64encode

    from cloudevents.http import CloudEvent

    event = _run(results_rig, "answer")
    spec = importlib.util.spec_from_file_location("example_subscriber", ROOT / "examples" / "subscriber" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    envelope = {"message": {"data": b64encode(json.dumps(event["data"]).encode()).decode(),
                            "attributes": event["attributes"], "messageId": "1"}}
    capsys.readouterr()

    module.on_job_event(CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//t"},
                                   envelope))

    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["rows"] == event["data"]["result"]["rows"] and line["truncated"] is True
    assert line["result_table"] == event["data"]["result"]["table"]
