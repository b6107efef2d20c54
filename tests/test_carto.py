"""The CARTO client against the local CARTO job API over loopback HTTP: honest retries, the echoed
token stripped, state rules tolerant of other warehouses."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.carto import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    CartoClient,
    ClientCredentials,
    StaticToken,
    SubmitOutcomeUnknown,
    dialect_of,
    job_id_of,
    parse_status,
    strip_secrets,
)
from gateway.errors import CartoUnavailable, NotFound, UpstreamRejected
from gateway.outbound import Http
from gateway.settings import Secret
from tests.constants import CARTO_TOKEN

pytestmark = pytest.mark.sandbox(token=CARTO_TOKEN, default_duration_s=0.2)

QUERY = "CALL `p.d.proc`(@a)"


@pytest.mark.parametrize("body, outcome", [
    ({"status": {"state": "PENDING"}}, None),
    ({"status": {"state": "RUNNING"}}, None),
    ({"status": {"state": "DONE"}}, SUCCEEDED),
    ({"status": {"state": "DONE", "errorResult": {"reason": "invalidQuery", "message": "boom"}}}, FAILED),
    ({"status": {"state": "DONE"}, "errorResult": {"reason": "invalidQuery", "message": "boom"}}, FAILED),
    ({"status": "done"}, SUCCEEDED),
    ({"status": {"state": "success"}}, SUCCEEDED),
    ({"status": {"state": "FAILED_WITH_ERROR"}}, None),
    ({"status": {"state": "failed"}}, FAILED),
    ({"status": {"state": "Canceled"}}, CANCELLED),
    ({"state": "queued"}, None),
    ({}, None),
])
def test_terminal_states_are_read_defensively(body, outcome):
    assert parse_status("j", body).outcome == outcome


def test_a_failed_job_carries_reason_location_and_message():
    error = {"reason": "invalidQuery", "location": "query", "message": "Query error: Cannot coerce"}
    assert parse_status("j", {"status": {"state": "DONE", "errorResult": error}}).error == error


def test_the_echoed_token_is_stripped_at_any_depth():
    body = {"externalId": "j", "token": "t", "nested": [{"access_token": "t", "ok": 1}]}
    assert strip_secrets(body) == {"externalId": "j", "nested": [{"ok": 1}]}


@pytest.fixture
def slept():
    return []


@pytest.fixture
def client(slept):
    return CartoClient(Http(), StaticToken(Secret(CARTO_TOKEN)), timeout_s=2, sleep=slept.append)


def test_submit_returns_the_external_id(client, sandbox):
    job_id = client.submit(sandbox.url, "conn", QUERY, {"a": 1})
    assert [j.external_id for j in sandbox.jobs()] == [job_id]


def test_a_503_with_retry_after_is_retried_after_waiting(client, sandbox, slept):
    sandbox.faults.error("submit", status=503, count=1)
    sandbox.faults.rate_limit("submit", retry_after=2, count=1)

    client.submit(sandbox.url, "conn", QUERY, {"a": 1})

    assert len(sandbox.jobs()) == 1 and 2.0 in slept


def test_a_long_retry_after_is_passed_on_to_the_sender(client, sandbox):
    sandbox.faults.rate_limit("submit", retry_after=120, count=1)

    with pytest.raises(CartoUnavailable) as raised:
        client.submit(sandbox.url, "conn", QUERY, {"a": 1})

    assert raised.value.retry_after == 120 and sandbox.jobs() == []


def test_a_500_to_a_post_is_never_retried_blindly(client, sandbox):
    sandbox.faults.error("submit", status=500, count=1)

    with pytest.raises(SubmitOutcomeUnknown):
        client.submit(sandbox.url, "conn", QUERY, {"a": 1})

    assert sandbox.stats()["requests"]["submit"] == 1


def test_a_connection_dropped_after_the_job_was_created_is_an_unknown_outcome(client, sandbox):
    sandbox.faults.drop("submit", after=True)

    with pytest.raises(SubmitOutcomeUnknown):
        client.submit(sandbox.url, "conn", QUERY, {"a": 1})

    assert len(sandbox.jobs()) == 1  # it exists: only the job list can tell


def test_a_refused_connection_is_unavailable():
    from gateway.local.emulators import free_port

    client = CartoClient(Http(), StaticToken(Secret("t")), sleep=lambda s: None)
    with pytest.raises(CartoUnavailable) as raised:
        client.submit(f"http://127.0.0.1:{free_port()}", "conn", QUERY, {})
    assert not isinstance(raised.value, SubmitOutcomeUnknown)


def test_a_404_to_the_job_post_is_a_refusal_not_an_unknown_workflow(client, sandbox):
    with pytest.raises(UpstreamRejected):
        client.submit(f"{sandbox.url}/no-such-prefix", "conn", QUERY, {"a": 1})
    assert sandbox.jobs() == []


def test_a_wrong_token_is_refused_without_echoing_it(sandbox):
    client = CartoClient(Http(), StaticToken(Secret("wrong-token-xyz")), sleep=lambda s: None)
    with pytest.raises(UpstreamRejected) as raised:
        client.submit(sandbox.url, "conn", QUERY, {})
    assert "wrong-token-xyz" not in str(raised.value)


def test_status_reads_failures_and_an_unknown_job_is_not_found(client, sandbox):
    sandbox.faults.fail_jobs("Query error: boom")
    job_id = client.submit(sandbox.url, "conn", QUERY, {"a": 1})
    with pytest.raises(NotFound):
        client.status(sandbox.url, "conn", "job_missing")
    import time

    time.sleep(0.3)
    status = client.status(sandbox.url, "conn", job_id)
    assert status.outcome == FAILED and status.error["message"] == "Query error: boom"


def test_status_checks_are_retried_over_a_transient_502(client, sandbox):
    job_id = client.submit(sandbox.url, "conn", QUERY, {"a": 1})
    sandbox.faults.error("status", status=502, count=2)

    assert client.status(sandbox.url, "conn", job_id).job_id == job_id


def test_list_finds_submitted_jobs_with_their_query(client, sandbox):
    client.submit(sandbox.url, "conn", QUERY + " /* marker */", {"a": 1})
    assert any("/* marker */" in job["query"] for job in client.list_jobs(sandbox.url))


class _TokenEndpoint(BaseHTTPRequestHandler):
    issued: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        form = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.issued.append(dict(pair.split("=", 1) for pair in form.split("&")))
        body = json.dumps({"access_token": f"token-{len(self.issued)}", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_client_credentials_are_refreshed_a_minute_before_expiry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = [1000.0]
    tokens = ClientCredentials(Http(), f"http://127.0.0.1:{server.server_port}/oauth/token",
                               "client-1", Secret("s3cret"), clock=lambda: now[0])
    try:
        first = tokens.token()
        now[0] += 3500
        same = tokens.token()
        now[0] += 50  # 3550 s: within the last minute
        refreshed = tokens.token()
    finally:
        server.shutdown()
    assert (first, same, refreshed) == ("token-1", "token-1", "token-2")
    assert _TokenEndpoint.issued[0]["grant_type"] == "client_credentials"
    assert "s3cret" not in repr(tokens)


# --- both documented dialects -------------------------------------------------------------------

SQL_API_FAILURE = {"jobId": "j", "connection": "bigquery", "user": "u", "query": "CALL p()", "status": "failure",
                   "error": {"code": "invalidQuery", "msg": "Query error: Cannot coerce expression @n to type INT64"},
                   "createdAt": "2015-12-15T07:36:25Z", "updatedAt": "2015-12-15T07:36:25Z", "provider": {}}


@pytest.mark.parametrize("body, outcome", [
    ({"jobId": "j", "status": "pending"}, None),
    ({"jobId": "j", "status": "running"}, None),
    ({"jobId": "j", "status": "success"}, SUCCEEDED),
    (SQL_API_FAILURE, FAILED),
    ({"jobId": "j", "status": "failed", "error": "boom"}, FAILED),
    ({"jobId": "j", "status": "failure", "error": {"code": "stopped", "msg": "Job execution was cancelled"}}, CANCELLED),
])
def test_the_sql_api_dialect_is_read(body, outcome):
    assert parse_status("j", body).outcome == outcome


def test_a_sql_api_failure_keeps_the_warehouses_message_and_code():
    error = parse_status("j", SQL_API_FAILURE).error
    assert error == {"reason": "invalidQuery", "location": None,
                     "message": "Query error: Cannot coerce expression @n to type INT64"}


def test_a_failure_without_any_error_says_how_it_ended():
    assert parse_status("j", {"status": "failure"}).error["message"] == "the job ended with status failure"


@pytest.mark.parametrize("body, dialect", [
    ({"externalId": "j", "status": {"state": "DONE"}}, "workflows"),
    ({"jobId": "j", "status": "success"}, "sql-api"),
    ({"id": "j"}, None),
])
def test_the_dialect_of_an_answer_is_told(body, dialect):
    assert dialect_of(body) == dialect and job_id_of(body) == "j"


@pytest.mark.parametrize("message", [
    "Not found: Procedure carto-dw-x:workflows_temp.workflow_procedure_1 was not found in location US",
    "Not found: Routine p:d.r",
    "SQL compilation error:\nUnknown function CARTO_DEMO.WORKFLOWS_TEMP.WP_1",
    "procedure carto_workflows.workflow_procedure_8c(unknown, unknown) does not exist",
])
def test_a_procedure_that_is_gone_gets_its_likely_cause(message):
    error = parse_status("j", {"status": {"state": "DONE", "errorResult": {"reason": "notFound", "message": message}}}).error
    assert error["message"].startswith(message)
    assert "API access" in error["message"] and "check --live" in error["message"]


def test_other_failures_get_no_such_hint():
    error = parse_status("j", SQL_API_FAILURE).error
    assert "check --live" not in error["message"]


@pytest.fixture(params=["workflows", "sql-api"])
def dialect_sandbox(request, make_sandbox):
    return make_sandbox(token=CARTO_TOKEN, default_duration_s=0.2, dialect=request.param,
                        procedures={"p.d.proc": {"parameters": {"a": "INT64"}}})


def test_the_client_follows_a_job_in_either_dialect(client, dialect_sandbox):
    import time

    ok = client.submit(dialect_sandbox.url, "conn", QUERY, {"a": 1})
    mistyped = client.submit(dialect_sandbox.url, "conn", QUERY, {"a": "x"})
    time.sleep(0.3)

    assert client.status(dialect_sandbox.url, "conn", ok).outcome == SUCCEEDED
    failed = client.status(dialect_sandbox.url, "conn", mistyped)
    assert failed.outcome == FAILED and failed.error["reason"] == "invalidQuery"
    assert failed.error["message"].startswith("Query error: Cannot coerce expression @a to type INT64 at [1:")


def test_the_job_request_carries_metadata_and_positional_parameters_as_an_array(client, sandbox):
    metadata = {"gateway": "carto-workflows-gateway", "delivery": "ab" * 16, "workflow": "w", "delivery_id": "d1"}
    client.submit(sandbox.url, "conn", "CALL DB.S.P(:1, :2)", [2, "x"], metadata=metadata)

    job = sandbox.jobs()[0]
    assert job.query_parameters == [2, "x"] and job.metadata == metadata


def test_the_synchronous_query_answers_rows_schema_and_meta(client, sandbox):
    answer = client.query(sandbox.url, "conn", "SELECT 1")
    assert answer["rows"] == [{"f0_": 1}] and answer["schema"] == [{"name": "f0_", "type": "INT64"}]
    assert "totalBytesProcessed" in answer["meta"]
