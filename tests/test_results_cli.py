"""Results in the CLI: `check` warns about a fixed result table concurrent runs may overwrite; `new` adds
`"result": {"rows": 100}` for a procedure with CARTO's API/MCP output naming and says how otherwise;
`doctor` says whether job answers name an output table."""

from __future__ import annotations

import json

import pytest

from gateway.cli import main
from tests.constants import CARTO_TOKEN
from tests.resulttools import PROJECT_DS, SECRETS, merged, procedure, workflow, write_workflows

MCP_QUERY = "CALL `carto-dw-ac-8l15x5rr.workflows_temp_x.wfproc_api_c3b932854a8512b2`(@area)"
OLD_QUERY = "CALL `carto-dw-ac-8l15x5rr.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f`(@area)"


def gateway(capsys, schemas, *argv) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["--schemas", str(schemas), *argv])
    out, err = capsys.readouterr()
    return status, out + err


def test_check_warns_about_a_fixed_table_without_a_cap_and_still_passes(capsys, schemas, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    write_workflows(schemas, {"fixed": workflow("fixed", "p", {"table": "p-1.d.stores_out"}),
                              "named": workflow("named", "p", {"rows": 5})})

    status, out = gateway(capsys, schemas, "check")

    assert status == 0, out
    assert "fixed: warning: result.table p-1.d.stores_out is a fixed table" in out and '"max_concurrent_jobs": 1' in out
    assert "named: warning" not in out


def test_check_does_not_warn_when_the_workflow_runs_one_job_at_a_time(capsys, schemas, monkeypatch):
    meta = json.loads((schemas / "workflow.schema.json").read_text())
    if "admission" not in meta["properties"]:
        pytest.skip("the admission block is not in the meta-schema of this checkout")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    write_workflows(schemas, {"fixed": workflow("fixed", "p", {"table": "p-1.d.t"},
                                                admission={"max_concurrent_jobs": 1})})

    status, out = gateway(capsys, schemas, "check")

    assert status == 0 and "warning" not in out, out


@pytest.mark.parametrize("query, result", [(MCP_QUERY, {"rows": 100}), (OLD_QUERY, None)])
def test_new_adds_a_result_block_only_for_carto_output_naming(capsys, schemas, tmp_path, query, result):
    paste = tmp_path / "paste.json"
    paste.write_text(json.dumps({"query": query, "queryParameters": {"area": "POLYGON((0 0,1 0,1 1,0 0))"}}))

    status, out = gateway(capsys, schemas, "new", "nyc", "--from", str(paste), "--examples", str(tmp_path / "ex"),
                          "--connection", "carto_dw")

    assert status == 0, out
    written = json.loads((schemas / "workflows" / "nyc.json").read_text())
    assert written.get("result") == result
    if result:
        assert 'result      {"rows": 100}' in out and "wfproc_api_" in out
    else:
        assert "result      none" in out and '"result": {"table": "project.dataset.table"' in out


def test_doctor_says_whether_job_answers_name_an_output_table(capsys, schemas, monkeypatch, make_sandbox):
    write_workflows(schemas, {"answer": workflow("answer", "answer_proc", {"rows": 5})})
    server = make_sandbox(token=CARTO_TOKEN, default_duration_s=0.1,
                          procedures=merged(procedure("answer_proc", count=3, duration_s=0.1)))
    monkeypatch.setenv("CARTO_API_BASE_URL", server.url)
    monkeypatch.setenv("CARTO_API_TOKEN", CARTO_TOKEN)
    monkeypatch.delenv("CARTO_CLIENT_ID", raising=False)
    _, before = gateway(capsys, schemas, "doctor")
    server.api.submit("carto_dw", {"query": f"CALL `{PROJECT_DS}.answer_proc`(@n)", "queryParameters": {"n": 1}},
                      None, None)
    _, after = gateway(capsys, schemas, "doctor")

    assert "no job answer seen carries jobMetadata.workflowOutputTableName" in before
    assert "result blocks without table: answer" in before
    assert "job answers carry jobMetadata.workflowOutputTableName (e.g. test-project.workflows_temp.answer_proc_out_" in after
    assert CARTO_TOKEN not in before + after


def test_the_openapi_document_says_what_the_event_carries(capsys, schemas, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    write_workflows(schemas, {"fixed": workflow("fixed", "p", {"table": "p-1.d.t", "rows": 7, "columns": ["a"]}),
                              "plain": workflow("plain", "p", None)})

    status, out = gateway(capsys, schemas, "openapi")

    document = json.loads(out)
    assert status == 0
    fixed = document["paths"]["/hooks/fixed"]["post"]["description"]
    assert "carries the first 7 rows of `p-1.d.t` (`a`) in `result`" in fixed
    assert "Result:" not in document["paths"]["/hooks/plain"]["post"]["description"]
