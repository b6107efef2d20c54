"""Results: the one bounded SELECT a read sends (each warehouse's quoting, hostile names refused), the
byte and row bounds, and the poller recording the result with the outcome before it publishes, on a
gateway instance against the local CARTO job API (fake clock). The same on the whole local stack:
tests/test_results_stack.py."""

from __future__ import annotations

import json

import jsonschema
import pytest

from gateway.errors import ConfigError, LedgerUnavailable, PublishUnavailable
from gateway.ledger import DeliveryQuery
from gateway.ledger.sqlite import SqliteLedger
from gateway.local.sandbox import serve
from gateway.results import UnsafeName, bounded, quote_table, select_sql
from gateway.workflows import load_registry
from tests.apptools import FakeClock
from tests.conftest import CARTO_TOKEN
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

PROCEDURES = merged(procedure("answer_proc", count=12), procedure("fixed_proc", count=3, table=f"{PROJECT_DS}.fixed_out",
                                                                    named=False))


@pytest.fixture
def results_rig(schemas, tmp_path):
    write_workflows(schemas, {"answer": workflow("answer", "answer_proc", {"rows": 5}),
                              "plain": workflow("plain", "answer_proc", None),
                              "fixed": workflow("fixed", "fixed_proc", {"table": f"{PROJECT_DS}.fixed_out"})})
    clock = FakeClock()
    sandbox = serve(token=CARTO_TOKEN, default_duration_s=1.0, clock=clock.now, procedures=PROCEDURES)
    ledger = CrashBeforePublish(tmp_path / "ledger.sqlite3")
    try:
        yield Rig.build(gateway_env(schemas, sandbox, tmp_path, **SECRETS), clock, sandbox, ledger=ledger)
    finally:
        sandbox.stop()


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
