"""Webhook in, answer out, on the whole local stack: functions-framework serving webhook and poll from
main.py, the Pub/Sub and Cloud Tasks emulators, the local CARTO job API with output tables. The
SUCCEEDED event carries the table's first rows; a read that fails still lets the event out once, with
`result.error`; the only SQL that ever reaches CARTO's `/query` is one bounded SELECT. Runs once per
answer dialect CARTO documents."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import jsonschema
import pytest

from gateway.ledger.sqlite import SqliteLedger
from gateway.local.devstack import LocalStack
from tests.clienttools import install_client
from tests.constants import CARTO_TOKEN, OPERATOR_TOKEN, PROJECT, ROOT, SECRET
from tests.resulttools import HOSTILE, PROJECT_DS, SCHEMA, SECRETS, merged, procedure, workflow, write_workflows
from tests.stackutil import EventInbox, post_hook

pytestmark = pytest.mark.stack

EVENT_SCHEMA = json.loads((ROOT / "schemas" / "job-event.schema.json").read_text())
PUBSUB_LIMIT = 10 * 1000 * 1000
BUDGET_S = 3
BOUNDED_SELECT = re.compile(r"^SELECT (\*|`\w+`(, `\w+`)*) FROM `[\w-]+`\.`\w+`\.`\w+` LIMIT \d+$")
FIXED = f"{PROJECT_DS}.fixed_out"
WORKFLOWS = {
    "answer": workflow("answer", "answer_proc", {"rows": 5}),
    "answer-columns": workflow("answer-columns", "answer_proc", {"rows": 5, "columns": ["store_id", "score"]}),
    "fixed": workflow("fixed", "fixed_proc", {"table": FIXED}),
    "missing": workflow("missing", "missing_proc", {}),
    "hostile": workflow("hostile", "hostile_proc", {}),
    "wide": workflow("wide", "wide_proc", {"rows": 1000}),
}
PROCEDURES = merged(
    procedure("answer_proc", count=12),
    procedure("fixed_proc", count=3, table=FIXED, named=False),
    procedure("missing_proc", written=False),
    procedure("hostile_proc", table=HOSTILE),
    procedure("wide_proc", count=1000, width=2000),
)


@pytest.fixture(scope="module", params=["workflows", "sql-api"])
def stack(request, pubsub_emulator, schemas_factory, tmp_path_factory):
    # Its own project on the shared emulator: other stacks' subscriptions of the same names push elsewhere.
    project = f"{PROJECT}-results-{uuid.uuid4().hex[:6]}"
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("stack"), project=project, schemas_dir=schemas_factory,
        pubsub_host=pubsub_emulator.host, sandbox_duration_s=0.3, submit_port=0, sandbox_dialect=request.param,
        sandbox_procedures=PROCEDURES,
        env={"CARTO_API_TOKEN": CARTO_TOKEN, **SECRETS, "GATEWAY_POLL_FIRST_S": "0.2",
             "GATEWAY_OPERATOR_TOKENS": OPERATOR_TOKEN, "GATEWAY_RESULT_BUDGET_S": str(BUDGET_S)},
    ).start()
    stack.inbox = EventInbox(project, stack.topics["events"], f"test-results-{uuid.uuid4().hex[:8]}")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def schemas_factory(tmp_path_factory):
    import shutil

    target = tmp_path_factory.mktemp("results") / "schemas"
    shutil.copytree(ROOT / "schemas", target)
    for path in (target / "workflows").glob("*.json"):
        path.unlink()
    return write_workflows(target, WORKFLOWS)


def _event(stack, workflow_name: str, n: int = 3):
    """Send one delivery; its completion event, and the /query statements CARTO received meanwhile."""
    before = len(stack.sandbox.api.queries)
    answer = post_hook(stack.url("webhook"), workflow_name, {"n": n}, SECRET)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    event = stack.inbox.wait_for(lambda e: e.attributes.get("job_id") == job_id, timeout_s=60)
    jsonschema.validate(event.data, EVENT_SCHEMA)
    return event, stack.sandbox.api.queries[before:]


def _published_once(stack, job_id: str) -> None:
    """The record says its event went out; the topic holds exactly one copy of it."""
    ledger = SqliteLedger(stack.state_dir / "ledger.sqlite3")
    try:
        record = ledger.find_job(job_id)
    finally:
        ledger.close()
    assert record is not None and record.published
    stack.inbox.drain(return_immediately=True)
    assert len(stack.inbox.for_job(job_id)) == 1


def test_the_event_carries_exactly_the_first_rows_their_schema_and_truncated(stack):
    event, queries = _event(stack, "answer")

    result = event.data["result"]
    assert [row["store_id"] for row in result["rows"]] == [1, 2, 3, 4, 5]
    assert result["rows"][0] == {"store_id": 1, "name": "store 1", "score": 0.1429}
    assert result["schema"] == SCHEMA and result["truncated"] is True
    assert result["table"].startswith(f"{PROJECT_DS}.answer_proc_out_")  # the name the job's answer gave
    table = result["table"].split(".")[-1]
    assert [q["q"] for q in queries] == [f"SELECT * FROM `test-project`.`workflows_temp`.`{table}` LIMIT 6"]


def test_columns_give_only_those(stack):
    event, queries = _event(stack, "answer-columns")

    result = event.data["result"]
    assert [set(row) for row in result["rows"]] == [{"store_id", "score"}] * 5
    assert result["schema"] == [SCHEMA[0], SCHEMA[2]] and result["truncated"] is True
    assert queries[0]["q"].startswith("SELECT `store_id`, `score` FROM ")


def test_a_fixed_table_is_read_when_the_job_names_none(stack):
    event, queries = _event(stack, "fixed")

    result = event.data["result"]
    assert result["table"] == FIXED and [row["store_id"] for row in result["rows"]] == [1, 2, 3]
    assert result["truncated"] is False
    assert [q["q"] for q in queries] == ["SELECT * FROM `test-project`.`workflows_temp`.`fixed_out` LIMIT 101"]


@pytest.mark.parametrize("failure", ["403", "timeout", "missing table", "hostile name"])
def test_a_failed_read_still_publishes_the_event_once_with_the_error_and_sends_one_bounded_select(stack, failure):
    workflow_name = {"missing table": "missing", "hostile name": "hostile"}.get(failure, "answer")
    if failure == "403":
        stack.sandbox.faults.error("query", status=403)
    elif failure == "timeout":
        # Held far past the budget and the whole wait for the event: the event cannot be waiting for the read.
        stack.sandbox.faults.delay("query", 120)

    event, queries = _event(stack, workflow_name)

    assert event.attributes["outcome"] == "SUCCEEDED"
    result = event.data["result"]
    assert set(result) == {"table", "error"}
    expected = {"403": "refused", "timeout": "timeout", "missing table": "notFound", "hostile name": "unsafeName"}
    assert result["error"]["reason"] == expected[failure], result
    if failure == "hostile name":
        assert result["table"] == HOSTILE and queries == []  # refused before anything was sent
    else:
        assert len(queries) == 1 and BOUNDED_SELECT.match(queries[0]["q"]), queries
    _published_once(stack, event.attributes["job_id"])


def test_a_result_over_max_bytes_is_cut_truncated_and_the_event_stays_under_pubsubs_limit(stack):
    event, queries = _event(stack, "wide")

    result = event.data["result"]
    assert result["truncated"] is True and 0 < len(result["rows"]) < 1000
    assert [row["store_id"] for row in result["rows"]] == list(range(1, len(result["rows"]) + 1))
    assert len(json.dumps(result, separators=(",", ":")).encode()) <= 256 * 1024
    assert len(event.raw) < PUBSUB_LIMIT
    assert queries[0]["q"].endswith("LIMIT 1001")


def test_the_token_is_in_no_event_or_log_line_with_a_result(stack):
    event, _ = _event(stack, "answer")
    assert event.data["result"]["rows"]

    texts = [e.raw.decode() + json.dumps(e.attributes) for e in stack.inbox.events]
    texts += [(stack.log_dir / f"{name}.log").read_text() for name in ("webhook", "poll")]
    texts += [p.read_bytes().decode("latin-1") for p in stack.state_dir.glob("ledger.sqlite3*")]
    assert any('"result"' in text for text in texts)
    for text in texts:
        assert CARTO_TOKEN not in text and OPERATOR_TOKEN not in text


READ_RESULT = """
import json, sys
from workflow_gateway_client import parse_event
message = json.load(sys.stdin)
event = parse_event((message["attributes"], message["data"].encode()))
print(json.dumps({"ok": event.result.ok, "table": event.result.table, "truncated": event.result.truncated,
                  "rows": [dict(row) for row in event.result.rows], "schema": [[c.name, c.type] for c in event.result.schema]}))
"""


def test_parse_event_in_a_fresh_venv_reads_the_result_of_a_real_emulator_message(stack, tmp_path_factory):
    if stack.sandbox.api.dialect != "workflows":
        pytest.skip("one dialect is enough: the message is the same")
    event, _ = _event(stack, "answer")
    where = tmp_path_factory.mktemp("client-venv")
    try:
        python = install_client(where)
    except OSError as exc:
        pytest.skip(f"cannot create a virtualenv here: {exc}")

    done = subprocess.run([str(python), "-I", "-c", READ_RESULT], cwd=where, capture_output=True, text=True,
                          input=json.dumps({"attributes": event.attributes, "data": event.raw.decode()}), timeout=120,
                          check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.strip().splitlines()[-1])
    assert read["ok"] is True and read["truncated"] is True and read["table"] == event.data["result"]["table"]
    assert read["rows"] == event.data["result"]["rows"] and len(read["rows"]) == 5
    assert read["schema"] == [[c["name"], c["type"]] for c in SCHEMA]
