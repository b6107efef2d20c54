"""The local CARTO job API: wire format, BigQuery binding rules, lifecycle, faults, admin, CLI."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from gateway.errors import ConfigError
from gateway.local.sandbox import Fault, load_procedures, main, serve
from gateway.local.sandbox.binding import binds, parse_call
from gateway.local.sandbox.procedures import (
    apply_overrides,
    parse_procedures,
    procedures_from_registry,
)

ROOT = Path(__file__).resolve().parent.parent
PROCEDURE = "carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f"
SEED_QUERY = f"CALL `{PROCEDURE}`(@number_of_clusters,@buffer_radius,@store_type)"
SEED_PARAMS = {"number_of_clusters": 2, "buffer_radius": 500, "store_type": "Supermarket"}
SIGNATURES = {PROCEDURE: {"parameters": {"number_of_clusters": "INT64", "buffer_radius": "FLOAT64",
                                         "store_type": "STRING"}}}
TOKEN = "sandbox-test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DURATION_S = 10.0

pytestmark = pytest.mark.sandbox(token=TOKEN, procedures=SIGNATURES, default_duration_s=DURATION_S, on_clock=True)


def submit(server, params=None, *, query=SEED_QUERY, headers=AUTH, connection="carto_dw", **extra):
    body = {"query": query, "queryParameters": SEED_PARAMS if params is None else params, **extra}
    return requests.post(f"{server.url}/v3/sql/{connection}/job", json=body, headers=headers, timeout=5)


def job_url(server, external_id, connection="carto_dw"):
    return f"{server.url}/v3/sql/{connection}/job/{external_id}"


def status_of(server, external_id, connection="carto_dw"):
    return requests.get(job_url(server, external_id, connection), headers=AUTH, timeout=5).json()["status"]


def submitted_id(server, params=None, **kw):
    response = submit(server, params, **kw)
    assert response.status_code == 200, response.text
    return response.json()["externalId"]


# --- lifecycle ------------------------------------------------------------------------------------

def test_submit_answers_an_external_id_with_the_job_pending(sandbox):
    body = submit(sandbox).json()

    assert body["externalId"].startswith("job_")
    assert body["status"] == {"state": "PENDING"}
    assert (body["query"], body["queryParameters"], body["connectionName"]) == (SEED_QUERY, SEED_PARAMS, "carto_dw")


def test_job_moves_from_pending_through_running_to_done_over_its_duration(sandbox, clock):
    external_id = submitted_id(sandbox)
    seen = [status_of(sandbox, external_id)]
    for _ in range(3):
        clock.advance(DURATION_S / 2)
        seen.append(status_of(sandbox, external_id))

    assert seen == [{"state": "PENDING"}, {"state": "RUNNING"}, {"state": "DONE"}, {"state": "DONE"}]


def test_submit_echoes_the_callers_token_like_carto(sandbox):
    assert submit(sandbox).json()["token"] == TOKEN


def test_status_echoes_the_callers_token_too(sandbox):
    external_id = submitted_id(sandbox)

    assert requests.get(job_url(sandbox, external_id), headers=AUTH, timeout=5).json()["token"] == TOKEN


def test_create_time_is_rfc3339_utc_from_the_clock(sandbox):
    assert submit(sandbox).json()["createdAt"] == "2027-01-15T08:00:00.000Z"


def test_carto_get_variant_creates_a_job(sandbox):
    url = f"{sandbox.url}/v3/sql/carto_dw/job"
    response = requests.get(url, params={"query": SEED_QUERY, "queryParameters": json.dumps(SEED_PARAMS)},
                            headers=AUTH, timeout=5)

    assert response.status_code == 200
    assert [job.query_parameters for job in sandbox.jobs()] == [SEED_PARAMS]


def test_concurrent_submits_each_create_one_distinct_job(sandbox):
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda _: submitted_id(sandbox), range(24)))

    assert len(set(ids)) == 24
    assert sandbox.stats()["jobs_created"] == 24


def test_a_query_that_is_not_a_call_runs_unchecked(sandbox, clock):
    external_id = submitted_id(sandbox, {}, query="SELECT 1")
    clock.advance(DURATION_S)

    assert status_of(sandbox, external_id) == {"state": "DONE"}


# --- authentication --------------------------------------------------------------------------------

def test_missing_token_is_401_when_a_token_is_configured(sandbox):
    response = submit(sandbox, headers={})

    assert response.status_code == 401
    assert sandbox.jobs() == []


def test_wrong_token_is_401_and_the_answer_does_not_repeat_it(sandbox):
    response = submit(sandbox, headers={"Authorization": "Bearer not-the-token"})

    assert response.status_code == 401
    assert "not-the-token" not in response.text


def test_status_with_a_wrong_token_is_401(sandbox):
    external_id = submitted_id(sandbox)

    response = requests.get(job_url(sandbox, external_id), headers={"Authorization": "Bearer x"}, timeout=5)

    assert response.status_code == 401


def test_access_token_query_parameter_authenticates_like_carto(sandbox):
    response = requests.get(f"{sandbox.url}/v3/sql/jobs", params={"access_token": TOKEN}, timeout=5)

    assert response.status_code == 200


def test_any_token_is_accepted_when_none_is_configured(clock):
    with serve(procedures=SIGNATURES, clock=clock.now) as server:
        response = submit(server, headers={"Authorization": "Bearer whatever"})

    assert response.status_code == 200


def test_logs_never_contain_the_token(sandbox, caplog):
    caplog.set_level(logging.DEBUG, logger="gateway.local.sandbox")
    external_id = submitted_id(sandbox)
    requests.get(job_url(sandbox, external_id), params={"access_token": TOKEN}, timeout=5)
    submit(sandbox, headers={"Authorization": "Bearer wrong-secret-value"})

    assert caplog.records
    assert TOKEN not in caplog.text and "wrong-secret-value" not in caplog.text


# --- BigQuery binding: how a job fails -------------------------------------------------------------

def test_mistyped_parameter_is_accepted_then_fails_with_bigquerys_coercion_error(sandbox):
    response = submit(sandbox, {**SEED_PARAMS, "number_of_clusters": 2.5})

    assert response.status_code == 200 and response.json()["status"] == {"state": "PENDING"}
    assert status_of(sandbox, response.json()["externalId"]) == {
        "state": "DONE",
        "errorResult": {
            "reason": "invalidQuery",
            "location": "query",
            # 82 is where `@number_of_clusters` starts in SEED_QUERY (1-based)
            "message": "Query error: Cannot coerce expression @number_of_clusters to type INT64 at [1:82]",
        },
    }


def test_a_float_with_a_zero_fraction_is_not_an_int64_on_the_wire(sandbox):
    external_id = submitted_id(sandbox, {**SEED_PARAMS, "number_of_clusters": 2.0})

    assert "Cannot coerce expression @number_of_clusters" in status_of(sandbox, external_id)["errorResult"]["message"]


@pytest.mark.parametrize("name", ["number_of_clusters", "buffer_radius", "store_type"])
def test_error_column_is_where_the_parameter_starts_in_the_query(sandbox, name):
    external_id = submitted_id(sandbox, {**SEED_PARAMS, name: True})
    column = SEED_QUERY.index(f"@{name}") + 1

    assert status_of(sandbox, external_id)["errorResult"]["message"].endswith(f"at [1:{column}]")


def test_error_position_counts_lines_of_a_multi_line_call(clock):
    query = "CALL `p.d.proc`(\n  @a,\n  @b)"
    with serve(procedures={"p.d.proc": {"parameters": {"a": "INT64", "b": "DATE"}}}, clock=clock.now) as server:
        external_id = submitted_id(server, {"a": 1, "b": "tomorrow"}, query=query)

        message = status_of(server, external_id)["errorResult"]["message"]

    assert message == "Query error: Cannot coerce expression @b to type DATE at [3:3]"


def test_missing_parameter_fails_the_job(sandbox):
    params = {k: v for k, v in SEED_PARAMS.items() if k != "store_type"}
    external_id = submitted_id(sandbox, params)
    column = SEED_QUERY.index("@store_type") + 1

    assert status_of(sandbox, external_id)["errorResult"] == {
        "reason": "invalidQuery", "location": "query",
        "message": f"Query error: Query parameter 'store_type' not found at [1:{column}]"}


def test_extra_parameter_fails_the_job(sandbox):
    external_id = submitted_id(sandbox, {**SEED_PARAMS, "surprise": 1})

    assert "'surprise' is not used" in status_of(sandbox, external_id)["errorResult"]["message"]


def test_call_with_fewer_arguments_than_the_signature_fails(sandbox):
    query = f"CALL `{PROCEDURE}`(@number_of_clusters,@buffer_radius)"
    external_id = submitted_id(sandbox, {"number_of_clusters": 2, "buffer_radius": 1.5}, query=query)

    assert "No matching signature" in status_of(sandbox, external_id)["errorResult"]["message"]


def test_unknown_procedure_fails_like_bigquery(sandbox):
    external_id = submitted_id(sandbox, {"a": 1}, query="CALL `proj.ds.nope`(@a)")

    assert status_of(sandbox, external_id)["errorResult"] == {
        "reason": "notFound", "location": "query", "message": "Not found: Procedure proj:ds.nope"}


def test_unknown_procedure_runs_when_no_signatures_are_configured(clock):
    with serve(clock=clock.now, default_duration_s=1) as server:
        external_id = submitted_id(server, {"a": 1.5}, query="CALL `proj.ds.nope`(@a)")
        clock.advance(1)

        assert status_of(server, external_id) == {"state": "DONE"}


@pytest.mark.parametrize("value, sql_type, expected", [
    (2, "INT64", True), (2, "FLOAT64", True), (2, "NUMERIC", True), (2, "STRING", False),
    (2.0, "INT64", False), (2.5, "INT64", False), (2.5, "FLOAT64", True), (2.5, "NUMERIC", False),
    (2**63, "INT64", False), (-(2**63), "INT64", True), (2**63, "FLOAT64", True),
    (True, "BOOL", True), (True, "INT64", False), (1, "BOOL", False), ("true", "BOOL", False),
    ("x", "STRING", True), ("2", "INT64", False), ("2", "FLOAT64", False),
    ("2024-02-29", "DATE", True), ("2023-02-29", "DATE", False), ("2024-2-1", "DATE", False),
    ("2024-01-01T10:00:00Z", "TIMESTAMP", True), ("2024-01-01T10:00:00.123456789+02:00", "TIMESTAMP", True),
    ("2024-01-01T10:00:00", "TIMESTAMP", False), ("2024-01-01", "TIMESTAMP", False),
    ("12.50", "NUMERIC", True), ("-1e3", "NUMERIC", True), ("1.0000000001", "NUMERIC", False),
    ("abc", "NUMERIC", False), ("1.0000000001", "BIGNUMERIC", True),
    ('{"type": "Point", "coordinates": [1, 2]}', "GEOGRAPHY", True),
    ('{"type": "Feature", "geometry": null}', "GEOGRAPHY", False), ("POINT(1 2)", "GEOGRAPHY", False),
    ('{"a": 1}', "JSON", True), ("not json", "JSON", False), ({"a": 1}, "JSON", False),
    (["a", "b"], "ARRAY<STRING>", True), ([1, 2], "ARRAY<FLOAT64>", True), ([1, 2.5], "ARRAY<INT64>", False),
    ([], "ARRAY<INT64>", True), (["a", None], "ARRAY<STRING>", False), ("a", "ARRAY<STRING>", False),
    (None, "INT64", True), (["x"], "array< string >", True), (2, "INTEGER", True), (2.5, "FLOAT", True),
])
def test_bigquery_binding_rules(value, sql_type, expected):
    assert binds(value, sql_type) is expected


def test_call_parsing_unquotes_the_procedure_and_finds_named_arguments():
    call = parse_call("  call `proj`.`ds`.`proc` ( @a , 'x,y', @b );")

    assert call.procedure == "proj.ds.proc"
    assert [a.name for a in call.arguments] == ["a", None, "b"]


# --- cancel and list --------------------------------------------------------------------------------

def test_cancel_ends_a_running_job_as_stopped(sandbox, clock):
    external_id = submitted_id(sandbox)
    clock.advance(DURATION_S / 2)

    response = requests.delete(job_url(sandbox, external_id), headers=AUTH, timeout=5)

    assert response.status_code == 200
    assert response.json()["status"] == {"state": "DONE", "errorResult": {
        "reason": "stopped", "message": "Job execution was cancelled: User requested cancellation"}}
    assert status_of(sandbox, external_id) == response.json()["status"]


def test_cancel_of_a_finished_job_leaves_it_succeeded(sandbox, clock):
    external_id = submitted_id(sandbox)
    clock.advance(DURATION_S)

    response = requests.delete(job_url(sandbox, external_id), headers=AUTH, timeout=5)

    assert response.json()["status"] == {"state": "DONE"}


def test_cancel_of_an_unknown_job_is_404(sandbox):
    assert requests.delete(job_url(sandbox, "job_nope"), headers=AUTH, timeout=5).status_code == 404


def test_a_job_is_not_found_on_another_connection(sandbox):
    external_id = submitted_id(sandbox)

    response = requests.get(job_url(sandbox, external_id, "other_conn"), headers=AUTH, timeout=5)

    assert response.status_code == 404
    assert response.json() == {"error": f"Job {external_id} not found", "status": 404}


def test_list_carries_query_parameters_creation_time_and_metadata_but_no_token(sandbox, clock):
    first = submitted_id(sandbox, metadata={"delivery_id": "d-1"})
    clock.advance(1)
    second = submitted_id(sandbox)

    jobs = requests.get(f"{sandbox.url}/v3/sql/jobs", headers=AUTH, timeout=5).json()["jobs"]

    assert [job["externalId"] for job in jobs] == [second, first]  # newest first
    assert jobs[1]["metadata"] == {"delivery_id": "d-1"} and "metadata" not in jobs[0]
    assert jobs[1]["queryParameters"] == SEED_PARAMS and jobs[1]["query"] == SEED_QUERY
    assert jobs[1]["createdAt"] == "2027-01-15T08:00:00.000Z"
    assert all("token" not in job for job in jobs)


def test_list_filters_by_connection(sandbox):
    submitted_id(sandbox, connection="a")
    kept = submitted_id(sandbox, connection="b")

    jobs = requests.get(f"{sandbox.url}/v3/sql/jobs", params={"connection": "b"}, headers=AUTH, timeout=5).json()

    assert [job["externalId"] for job in jobs["jobs"]] == [kept]


def test_a_body_that_is_not_json_is_400(sandbox):
    response = requests.post(f"{sandbox.url}/v3/sql/carto_dw/job", data=b"{nope", headers=AUTH, timeout=5)

    assert response.status_code == 400
    assert response.json()["status"] == 400


def test_a_body_without_query_is_400(sandbox):
    response = requests.post(f"{sandbox.url}/v3/sql/carto_dw/job", json={"queryParameters": {}}, headers=AUTH,
                             timeout=5)

    assert response.status_code == 400


# --- faults --------------------------------------------------------------------------------------

def test_error_fault_answers_5xx_without_creating_a_job(sandbox):
    sandbox.faults.error("submit", status=502)

    assert submit(sandbox).status_code == 502
    assert sandbox.jobs() == []


def test_error_fault_after_creates_the_job_and_still_answers_5xx(sandbox):
    sandbox.faults.error("submit", status=500, after=True)

    assert submit(sandbox).status_code == 500
    assert len(sandbox.jobs()) == 1


def test_rate_limit_fault_answers_429_with_retry_after(sandbox):
    sandbox.faults.rate_limit("submit", retry_after=7)

    response = submit(sandbox)

    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    assert sandbox.jobs() == []


def test_a_fault_affects_only_the_next_count_requests_of_its_route(sandbox):
    sandbox.faults.error("status", count=2)
    external_id = submitted_id(sandbox)

    codes = [requests.get(job_url(sandbox, external_id), headers=AUTH, timeout=5).status_code for _ in range(3)]

    assert codes == [503, 503, 200]


def test_drop_before_closes_the_connection_and_creates_no_job(sandbox):
    sandbox.faults.drop("submit")

    with pytest.raises(requests.ConnectionError):
        submit(sandbox)
    assert sandbox.jobs() == []


def test_drop_after_creates_the_job_but_the_client_never_hears(sandbox):
    sandbox.faults.drop("submit", after=True)

    with pytest.raises(requests.ConnectionError):
        submit(sandbox)
    assert sandbox.stats()["jobs_created"] == 1


def test_drop_of_a_cancel_after_it_applied_still_cancels(sandbox):
    external_id = submitted_id(sandbox)
    sandbox.faults.drop("cancel", after=True)

    with pytest.raises(requests.ConnectionError):
        requests.delete(job_url(sandbox, external_id), headers=AUTH, timeout=5)
    assert status_of(sandbox, external_id)["errorResult"]["reason"] == "stopped"


def test_slow_answer_after_the_job_was_created_times_the_client_out(sandbox):
    sandbox.faults.delay("submit", seconds=3, after=True)

    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{sandbox.url}/v3/sql/carto_dw/job", json={"query": SEED_QUERY, "queryParameters": SEED_PARAMS},
                      headers=AUTH, timeout=0.3)
    assert len(sandbox.jobs()) == 1


def test_delay_fault_still_answers(sandbox):
    sandbox.faults.delay("list", seconds=0.05)

    assert requests.get(f"{sandbox.url}/v3/sql/jobs", headers=AUTH, timeout=5).status_code == 200


def test_fail_job_fault_ends_the_job_done_with_an_error_after_its_duration(sandbox, clock):
    sandbox.faults.fail_jobs("Query error: boom")
    external_id = submitted_id(sandbox)
    before = status_of(sandbox, external_id)
    clock.advance(DURATION_S)

    assert before == {"state": "PENDING"}
    assert status_of(sandbox, external_id) == {"state": "DONE", "errorResult": {
        "reason": "invalidQuery", "location": "query", "message": "Query error: boom"}}


def test_never_finish_fault_keeps_the_job_running(sandbox, clock):
    sandbox.faults.never_finish()
    external_id = submitted_id(sandbox)
    clock.advance(10**9)

    assert status_of(sandbox, external_id) == {"state": "RUNNING"}


def test_a_held_request_takes_effect_only_once_released(sandbox):
    hold = sandbox.faults.hold("submit")
    answers: list[requests.Response] = []
    client = threading.Thread(target=lambda: answers.append(submit(sandbox)))
    client.start()

    assert hold.arrived.wait(5)
    held_jobs = sandbox.jobs()
    hold.release()
    client.join()

    assert held_jobs == [] and answers[0].status_code == 200 and len(sandbox.jobs()) == 1


def test_clearing_the_faults_lets_queued_holds_go(sandbox):
    hold = sandbox.faults.hold("submit")
    sandbox.faults.clear()

    assert submit(sandbox).status_code == 200 and not hold.arrived.is_set()


def test_a_hold_cannot_be_scripted_over_http(sandbox):
    response = requests.post(f"{sandbox.url}/_sandbox/faults", json={"route": "submit", "kind": "hold"}, timeout=5)

    assert response.status_code == 400 and submit(sandbox).status_code == 200


def test_faults_on_one_route_leave_the_others_alone(sandbox):
    sandbox.faults.error("list")

    assert submit(sandbox).status_code == 200


def test_unknown_fault_route_is_refused():
    with pytest.raises(ValueError):
        Fault("teleport", "error")


# --- admin over HTTP --------------------------------------------------------------------------------

def test_faults_can_be_scripted_over_http(sandbox):
    response = requests.post(f"{sandbox.url}/_sandbox/faults",
                             json=[{"route": "submit", "kind": "rate_limit", "retry_after": 3, "count": 2}],
                             timeout=5)

    assert response.status_code == 200
    assert [submit(sandbox).status_code for _ in range(3)] == [429, 429, 200]


def test_a_malformed_fault_over_http_is_400(sandbox):
    response = requests.post(f"{sandbox.url}/_sandbox/faults", json={"route": "submit", "kind": "explode"},
                             timeout=5)

    assert response.status_code == 400


def test_stats_count_jobs_per_procedure_with_their_parameters(sandbox):
    submitted_id(sandbox)
    submitted_id(sandbox, {}, query="SELECT 1")

    stats = requests.get(f"{sandbox.url}/_sandbox/stats", timeout=5).json()

    assert stats["jobs_created"] == 2
    assert stats["per_procedure"] == {PROCEDURE: 1, "": 1}
    assert [job["queryParameters"] for job in stats["jobs"]] == [SEED_PARAMS, {}]
    assert stats["requests"] == {"submit": 2}


def test_reset_over_http_forgets_jobs_and_faults(sandbox):
    submitted_id(sandbox)
    sandbox.faults.error("submit")

    requests.post(f"{sandbox.url}/_sandbox/reset", timeout=5)

    assert sandbox.stats()["jobs_created"] == 0
    assert submit(sandbox).status_code == 200


# --- procedures: registry and override file ---------------------------------------------------------

def test_override_file_sets_signature_duration_and_outcome(tmp_path, clock):
    path = tmp_path / "procedures.json"
    override = {"parameters": {"a": "INT64"}, "duration_s": 2, "error": "Query error: x"}
    path.write_text(json.dumps({"p.d.proc": override}))
    with serve(procedures=load_procedures(overrides_path=path), clock=clock.now) as server:
        external_id = submitted_id(server, {"a": 1}, query="CALL `p.d.proc`(@a)")
        clock.advance(1.9)
        running = status_of(server, external_id)
        clock.advance(0.1)

        assert running == {"state": "RUNNING"}
        assert status_of(server, external_id)["errorResult"]["message"] == "Query error: x"


def test_override_duration_null_never_finishes(tmp_path, clock):
    path = tmp_path / "procedures.json"
    path.write_text(json.dumps({"p.d.proc": {"duration_s": None}}))
    with serve(procedures=load_procedures(overrides_path=path), clock=clock.now) as server:
        external_id = submitted_id(server, {}, query="CALL `p.d.proc`()")
        clock.advance(10**9)

        assert status_of(server, external_id) == {"state": "RUNNING"}


def test_override_replaces_only_the_fields_it_gives():
    registry = SimpleNamespace(workflows={"w": SimpleNamespace(
        procedure="p.d.proc", parameters={"a": SimpleNamespace(type="INT64")})})
    base = procedures_from_registry(registry)

    merged = apply_overrides(base, {"p.d.proc": {"duration_s": 5}})

    assert (merged["p.d.proc"].parameters, merged["p.d.proc"].duration_s) == ({"a": "INT64"}, 5.0)


def test_a_malformed_override_is_a_config_error():
    with pytest.raises(ConfigError, match="p.d.proc"):
        parse_procedures({"p.d.proc": {"duration_s": "soon"}})


def test_signatures_come_from_the_workflow_definitions():
    procedures = load_procedures(ROOT / "examples")

    assert procedures[PROCEDURE].parameters == SIGNATURES[PROCEDURE]["parameters"]


# --- main -----------------------------------------------------------------------------------------

def test_main_refuses_an_unreadable_override_file(tmp_path, capsys):
    status = main(["--port", "0", "--procedures", str(tmp_path / "missing.json")], env={})

    assert status == 2
    assert "missing.json" in capsys.readouterr().err


def test_main_serves_until_sigterm(tmp_path):
    env = {**os.environ, "CARTO_API_TOKEN": TOKEN, "GATEWAY_SCHEMAS_DIR": str(ROOT / "examples")}
    code = "import sys; from gateway.local.sandbox import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "--port", "0"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split(" on ")[1].split(" ")[0]
        response = requests.get(f"{url}/v3/sql/jobs", headers=AUTH, timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)

    assert response.status_code == 200
    assert process.returncode == 0
    assert TOKEN not in stderr


# --- both dialects, every warehouse family, the catalogue ----------------------------------------

SNOWFLAKE_PROC = "CARTO_DEMO.WORKFLOWS_TEMP.WP_1"
POSTGRES_PROC = "carto_workflows.wp_1"
FAMILIES = {
    SNOWFLAKE_PROC: {"parameters": {"store_type": "VARCHAR", "top_n": "NUMBER(38,0)", "since": "DATE"},
                     "warehouse": "snowflake"},
    POSTGRES_PROC: {"parameters": {"city": "text", "max": "integer", "zonings": "text[]"}, "warehouse": "postgresql"},
    "rs.wp_2": {"parameters": {"n": "integer"}, "warehouse": "redshift"},
    **SIGNATURES,
}


@pytest.fixture
def families(make_sandbox):
    return make_sandbox(token=TOKEN, procedures=FAMILIES, default_duration_s=DURATION_S, on_clock=True,
                        dialect="sql-api", connections=["carto_dw", "snowflake_demo", "postgres_demo"])


def sql_api_job(server, external_id, connection):
    return requests.get(job_url(server, external_id, connection), headers=AUTH, timeout=5).json()


def test_the_sql_api_dialect_answers_job_id_flat_status_and_error_code_and_msg(families, clock):
    created = submit(families, {**SEED_PARAMS, "number_of_clusters": 2.5}).json()
    assert created["jobId"].startswith("job_") and created["status"] == "pending" and "externalId" not in created
    clock.advance(DURATION_S + 1)

    job = sql_api_job(families, created["jobId"], "carto_dw")

    assert job["status"] == "failure"
    assert job["error"]["code"] == "invalidQuery"
    assert job["error"]["msg"].startswith("Query error: Cannot coerce expression @number_of_clusters to type INT64")


def test_the_sql_api_dialect_lists_only_running_jobs_as_a_bare_array(families, clock):
    first = submit(families).json()["jobId"]
    clock.advance(DURATION_S + 1)
    second = submit(families).json()["jobId"]

    listed = requests.get(f"{families.url}/v3/sql/jobs", headers=AUTH, timeout=5).json()

    assert [job["jobId"] for job in listed] == [second] and first != second


@pytest.mark.parametrize("connection, query, params, expected", [
    ("snowflake_demo", f"CALL {SNOWFLAKE_PROC}(:1, :2, :3)", ["Supermarket", 5, "2024-01-01"], None),
    ("snowflake_demo", f"CALL {SNOWFLAKE_PROC}(:1, :2, :3)", ["Supermarket", "five", "2024-01-01"],
     ("100038", "Numeric value 'five' is not recognized")),
    ("snowflake_demo", f"CALL {SNOWFLAKE_PROC}(:1, :2, :3)", ["Supermarket", 5],
     ("002049", "SQL compilation error: Bind variable :3 not set.")),
    ("snowflake_demo", "CALL CARTO_DEMO.WORKFLOWS_TEMP.GONE(:1)", ["x"],
     ("002140", "SQL compilation error:\nUnknown function CARTO_DEMO.WORKFLOWS_TEMP.GONE")),
    ("postgres_demo", f"CALL {POSTGRES_PROC}($1, $2, $3)", ["Madrid", 20, ["residential"]], None),
    ("postgres_demo", f"CALL {POSTGRES_PROC}($1, $2, $3)", ["Madrid", 2.5, []],
     ("22P02", 'invalid input syntax for type integer: "2.5"')),
    ("postgres_demo", "CALL rs.wp_2($1)", ["x"], ("22P02", 'invalid input syntax for integer: "x"')),
    ("postgres_demo", "CALL carto_workflows.gone($1, $2)", [1, 2],
     ("42883", "procedure carto_workflows.gone(unknown, unknown) does not exist")),
])
def test_each_warehouse_binds_positional_parameters_and_words_its_failures(families, clock, connection, query,
                                                                         params, expected):
    job_id = submit(families, params, query=query, connection=connection).json()["jobId"]
    clock.advance(DURATION_S + 1)

    job = sql_api_job(families, job_id, connection)

    if expected is None:
        assert job["status"] == "success", job
    else:
        assert job["status"] == "failure" and (job["error"]["code"], job["error"]["msg"]) == expected


def test_an_unknown_connection_is_refused(families):
    response = submit(families, connection="no_such_connection")
    assert response.status_code == 404 and "no_such_connection" in response.json()["error"]


def test_a_drop_metadata_fault_leaves_metadata_out_of_the_list_only(sandbox):
    job_id = submitted_id(sandbox, metadata={"delivery": "d"})
    sandbox.faults.drop_metadata("list")

    listed = requests.get(f"{sandbox.url}/v3/sql/jobs", headers=AUTH, timeout=5).json()["jobs"]
    one = requests.get(job_url(sandbox, job_id), headers=AUTH, timeout=5).json()

    assert "metadata" not in listed[0] and one["metadata"] == {"delivery": "d"}


def test_the_catalogue_answers_information_schema_in_each_warehouses_words(families):
    def query(connection, q, params):
        response = requests.post(f"{families.url}/v3/sql/{connection}/query", headers=AUTH, timeout=5,
                                 json={"q": q, "queryParameters": params})
        assert response.status_code == 200, response.text
        return response.json()

    project, dataset, name = PROCEDURE.split(".")
    bigquery = query("carto_dw", f"SELECT 1 FROM `{project}.{dataset}.INFORMATION_SCHEMA.ROUTINES` r", {"name": name})
    snowflake = query("snowflake_demo", "SELECT * FROM CARTO_DEMO.INFORMATION_SCHEMA.PROCEDURES WHERE ...",
                      ["WORKFLOWS_TEMP", "WP_1"])
    postgres = query("postgres_demo", "SELECT * FROM information_schema.routines r ...", ["carto_workflows", "wp_1"])

    assert [(r["parameter_name"], r["data_type"]) for r in bigquery["rows"]] == [
        ("number_of_clusters", "INT64"), ("buffer_radius", "FLOAT64"), ("store_type", "STRING")]
    assert set(bigquery) == {"rows", "schema", "meta"}
    assert snowflake["rows"] == [{"PROCEDURE_NAME": "WP_1",
                                  "ARGUMENT_SIGNATURE": "(STORE_TYPE VARCHAR, TOP_N NUMBER, SINCE DATE)"}]
    assert [(r["data_type"], r["udt_name"]) for r in postgres["rows"]] == [
        ("text", "text"), ("integer", "int4"), ("ARRAY", "_text")]


def test_the_dialect_flag_reaches_the_server():
    port = str(__import__("gateway.local.emulators", fromlist=["free_port"]).free_port())
    process = subprocess.Popen([sys.executable, "-m", "gateway", "sandbox", "--port", port, "--dialect", "sql-api",
                                "--schemas", str(ROOT / "examples")], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "CARTO_API_TOKEN": ""})
    try:
        banner = process.stdout.readline()
        body = requests.post(f"http://127.0.0.1:{port}/v3/sql/c/job", json={"query": "SELECT 1"}, timeout=5).json()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert "sql-api dialect" in banner and "jobId" in body
