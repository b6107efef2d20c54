"""`doctor` and `check --live` against the local CARTO job API over loopback (never a real account):
what passes, and each problem said clearly with a non-zero exit; the token never in their output."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.cli import main
from gateway.local.demos import write_demo_schemas
from gateway.local.sandbox import load_procedures
from tests.constants import CARTO_TOKEN, ROOT
from tests.rigs import BODY
from tests.stackutil import answer_json

CONNECTIONS = ["carto_dw", "snowflake_demo", "postgres_demo"]
SEED_PROCEDURE = "carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f"
SNOWFLAKE_PROCEDURE = "CARTO_DEMO.WORKFLOWS_TEMP.WORKFLOW_PROCEDURE_5A1F0C7E2B9D4E61"
POSTGRES_PROCEDURE = "carto_workflows.workflow_procedure_8c2d41e07f3a9b15"


@pytest.fixture(params=["workflows", "sql-api"])
def carto(request, monkeypatch, make_sandbox):
    server = make_sandbox(token=CARTO_TOKEN, procedures=load_procedures(ROOT / "examples"), default_duration_s=0.1,
                          dialect=request.param, connections=CONNECTIONS)
    monkeypatch.setenv("CARTO_API_BASE_URL", server.url)
    monkeypatch.setenv("CARTO_API_TOKEN", CARTO_TOKEN)
    monkeypatch.delenv("CARTO_CLIENT_ID", raising=False)
    return server


def run(capsys, *argv):
    status = main(["--schemas", str(ROOT / "examples"), *argv])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_doctor_passes_against_the_local_carto_api_and_says_what_it_saw(carto, capsys, tmp_path):
    status, out = run(capsys, "doctor", "--save", str(tmp_path / "answers.json"))

    assert status == 0, out
    assert f"dialect {carto.api.dialect}" in out and "all checks passed" in out
    for connection in CONNECTIONS:
        assert f"connection {connection}" in out
    assert out.count("metadata came back in the job list") == 3 and out.count("the marker comment came back") == 3
    assert " ms" in out  # each call's latency
    saved = json.loads((tmp_path / "answers.json").read_text())
    assert {call["step"] for call in saved["calls"]} >= {"base URL", "token", "submit", "list", "status"}
    assert CARTO_TOKEN not in out and CARTO_TOKEN not in (tmp_path / "answers.json").read_text()


def test_doctor_tells_a_wrong_token_from_a_forbidden_one_and_stops(carto, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CARTO_API_TOKEN", "wrong-token-SENTINEL-2")

    status, out = run(capsys, "doctor", "--save", str(tmp_path / "answers.json"))

    assert status == 1
    assert "FAIL  token refused (401)" in out and "CARTO_API_TOKEN" in out
    assert "connection" not in out  # no job was tried with a token CARTO refuses
    assert "wrong-token-SENTINEL-2" not in out + (tmp_path / "answers.json").read_text()


class _Forbidding(BaseHTTPRequestHandler):
    """CARTO as it answers a valid token without the grants: 401 without a token, 403 with one."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        status = 403 if self.headers.get("Authorization") else 401
        answer_json(self, status, {"error": "Forbidden" if status == 403 else "Unauthorized", "status": status})

    def log_message(self, *args):
        pass


def test_doctor_tells_a_token_without_grants_what_to_grant(capsys, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CARTO_API_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("CARTO_API_TOKEN", CARTO_TOKEN)
    try:
        status, out = run(capsys, "doctor")
    finally:
        server.shutdown()

    assert status == 1
    assert "FAIL  token refused (403): CARTO knows this token but it may not do this" in out
    assert "401" not in out.split("token refused")[1].split("\n")[0] and CARTO_TOKEN not in out


def test_doctor_names_a_connection_carto_does_not_know(carto, capsys, tmp_path):
    schemas = tmp_path / "schemas"
    write_demo_schemas(schemas)
    seed = json.loads((schemas / "workflows" / "store-clusters.json").read_text())
    (schemas / "workflows" / "store-clusters.json").write_text(json.dumps({**seed, "connection": "carto_dw_typo"}))

    status = main(["--schemas", str(schemas), "doctor", "store-clusters"])
    out = capsys.readouterr().out

    assert status == 1
    assert "FAIL  connection carto_dw_typo (bigquery, used by store-clusters): CARTO refused a SELECT 1 job (404" in out
    assert "exists in CARTO Workspace → Connections" in out and CARTO_TOKEN not in out


def test_doctor_says_when_the_job_list_drops_metadata(carto, capsys):
    carto.faults.drop_metadata("list", count=100)

    status, out = run(capsys, "doctor", "store-clusters")

    assert status == 1
    assert "FAIL  connection carto_dw (bigquery, used by store-clusters): the job list drops metadata" in out
    assert "the marker comment came back" in out


def test_doctor_with_an_unreachable_base_url_says_which_setting(capsys, monkeypatch):
    from gateway.local.emulators import free_port

    monkeypatch.setenv("CARTO_API_BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CARTO_API_TOKEN", CARTO_TOKEN)

    status, out = run(capsys, "doctor")

    assert status == 1 and "does not answer" in out and "CARTO_API_BASE_URL" in out


# --- check --live ---------------------------------------------------------------------------------

def test_check_live_is_clean_for_every_shipped_workflow(carto, capsys):
    status, out = run(capsys, "check", "--live")

    assert status == 0, out
    assert "ok  store-clusters" in out and "ok  store-revenue-snowflake" in out and "ok  parcels-postgres" in out


def planted(carto, overrides):
    """The sandbox's procedures with some signatures changed or removed (None)."""
    procedures = dict(carto.api._procedures)
    for name, signature in overrides.items():
        if signature is None:
            procedures.pop(name)
        else:
            procedures[name] = __import__("dataclasses").replace(procedures[name], parameters=signature)
    carto.api._procedures = procedures


def test_check_live_reports_each_drift_on_its_own_line_with_the_fix(carto, capsys):
    planted(carto, {
        SEED_PROCEDURE: {"number_of_clusters": "FLOAT64", "buffer_radius": "FLOAT64", "store_type": "STRING",
                         "max_distance": "FLOAT64"},
        POSTGRES_PROCEDURE: {"radius_m": "double precision", "city": "text", "max_parcels": "integer",
                             "zonings": "text[]"},
        SNOWFLAKE_PROCEDURE: None,
    })

    status, out = run(capsys, "check", "--live")
    lines = out.splitlines()

    assert status == 1
    seed = [line for line in lines if line.startswith(str(ROOT / "examples" / "workflows" / "store-clusters.json"))]
    assert any("parameter number_of_clusters: the file says INT64, the procedure takes FLOAT64; "
               'fix: set "type": "FLOAT64"' in line for line in seed)
    assert any("parameter max_distance: the procedure's argument 4 (FLOAT64) is missing" in line for line in seed)
    assert any("parcels-postgres.json: parameter city: the procedure's position 1 is radius_m" in line for line in lines)
    assert any("parcels-postgres.json: parameter city: the file says text, the procedure takes double precision"
               in line for line in lines)
    gone = [line for line in lines if "store-revenue-snowflake.json" in line]
    assert len(gone) == 1 and f"procedure {SNOWFLAKE_PROCEDURE}: not found" in gone[0]
    assert "API access" in gone[0] and "another procedure name" in gone[0] and "fix:" in gone[0]
    assert "bad store-clusters" in out and "bad parcels-postgres" in out and "bad store-revenue-snowflake" in out
    assert CARTO_TOKEN not in out


def test_a_job_whose_procedure_is_gone_fails_with_its_likely_cause(rig):
    rig.sandbox.faults.fail_jobs("Not found: Procedure carto-dw-ac-jfjjof5m:workflows_temp_x.workflow_procedure_1")
    rig.post("store-clusters", BODY)
    rig.clock.advance(30)
    rig.poll_all()

    [event] = rig.publisher.events()
    message = event["data"]["error"]["message"]
    assert event["attributes"]["outcome"] == "FAILED"
    assert message.startswith("Not found: Procedure carto-dw-ac-jfjjof5m:workflows_temp_x.workflow_procedure_1")
    assert "API access" in message and "another procedure name" in message and "check --live" in message


# --- a CARTO account that knows only the user's procedure -----------------------------------------

def test_doctor_and_check_live_pass_against_an_account_that_knows_only_the_users_procedure(schemas, capsys,
                                                                                           monkeypatch, make_sandbox):
    seed = json.loads((ROOT / "examples" / "workflows" / "store-clusters.json").read_text())
    mine = {**seed, "connection": "my_conn",
            "query": seed["query"].replace(SEED_PROCEDURE, "my-project.my_dataset.my_procedure"),
            "auth": [{"scheme": "standard-webhooks", "secrets": "env:MY_STORES_SECRET"}]}
    (schemas / "workflows" / "my-stores.json").write_text(json.dumps(mine))
    server = make_sandbox(token=CARTO_TOKEN, procedures=load_procedures(schemas), default_duration_s=0.1,
                          connections=["my_conn"])
    assert set(server.api._procedures) == {"my-project.my_dataset.my_procedure"}  # no demo procedure anywhere
    monkeypatch.setenv("CARTO_API_BASE_URL", server.url)
    monkeypatch.setenv("CARTO_API_TOKEN", CARTO_TOKEN)
    monkeypatch.delenv("CARTO_CLIENT_ID", raising=False)
    doctor = main(["--schemas", str(schemas), "doctor"])
    doctor_out = capsys.readouterr().out
    live = main(["--schemas", str(schemas), "check", "--live"])
    live_out = capsys.readouterr().out

    assert doctor == 0, doctor_out
    assert "connection my_conn" in doctor_out and "all checks passed" in doctor_out
    assert live == 0, live_out
    assert "bad" not in live_out and "demo" not in doctor_out + live_out
