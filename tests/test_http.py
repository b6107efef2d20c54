"""The HTTP surface of `webhook` (README, "HTTP surface") through the real functions-framework app: statuses,
problem+json, replays, the validate route, jobs. CARTO is the local job API over loopback HTTP."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from tests.apptools import RecordingPublisher, build_app, function_client, operator_headers, settings_env
from tests.constants import CARTO_TOKEN, OPERATOR_TOKEN, SECRET
from tests.stackutil import signed_headers

pytestmark = pytest.mark.sandbox(token=CARTO_TOKEN, default_duration_s=0.5)

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}


@pytest.fixture
def publisher():
    return RecordingPublisher()


@pytest.fixture
def app(test_schemas, sandbox, tmp_path, publisher):
    return build_app(settings_env(test_schemas, sandbox.url, tmp_path), publisher=publisher)


@pytest.fixture
def client(app):
    return function_client(app)


def post(client, path, payload=None, *, body=None, secret=SECRET, msg_id=None, headers=None):
    body = json.dumps(payload).encode() if body is None else body
    sent = signed_headers(secret, body, msg_id)
    sent.update(headers or {})
    return client.post(path, data=body, headers=sent)


def assert_problem(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.get_json(force=True)
    assert problem["status"] == status and problem["title"] and problem["type"] and "detail" in problem
    return problem


def test_a_signed_valid_webhook_is_accepted_with_its_job(client, sandbox, publisher):
    response = post(client, "/hooks/store-clusters", BODY)

    assert response.status_code == 202
    answer = response.get_json()
    assert [job.external_id for job in sandbox.jobs()] == [answer["job_id"]]
    assert sandbox.jobs()[0].query_parameters == {"number_of_clusters": 2, "buffer_radius": 500.0, "store_type": "Supermarket"}
    tracking = publisher.on("workflow-jobs")
    assert len(tracking) == 1 and json.loads(tracking[0].data)["job_id"] == answer["job_id"]


def test_the_default_applies_when_the_field_is_absent(client, sandbox):
    body = {k: v for k, v in BODY.items() if k != "clusters"}

    assert post(client, "/hooks/store-clusters", body).status_code == 202
    assert sandbox.jobs()[0].query_parameters["number_of_clusters"] == 2


def test_validate_answers_what_would_be_submitted_and_submits_nothing(client, sandbox, publisher):
    response = post(client, "/hooks/store-clusters/validate", {**BODY, "clusters": 7})

    assert response.status_code == 200
    assert response.get_json() == {
        "query": "CALL `carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f`"
                 "(@number_of_clusters,@buffer_radius,@store_type)",
        "queryParameters": {"number_of_clusters": 7, "buffer_radius": 500.0, "store_type": "Supermarket"}}
    assert sandbox.jobs() == [] and publisher.messages == []


def test_every_schema_violation_is_reported_with_its_path(client):
    problem = assert_problem(post(client, "/hooks/store-clusters", {"clusters": 0, "radius_m": -1, "store": {}}), 422)

    paths = {e["path"] for e in problem["errors"]}
    assert {"/clusters", "/radius_m", "/store/type"} <= paths


def test_a_bad_signature_is_a_401_and_reaches_nothing(client, sandbox, publisher):
    assert_problem(post(client, "/hooks/store-clusters", BODY, secret="whsec_" + "B" * 32), 401)
    assert sandbox.jobs() == [] and publisher.messages == []


def test_a_reserialised_body_with_the_original_signature_is_a_401(client):
    original = json.dumps(BODY).encode()
    headers = signed_headers(SECRET, original)
    reordered = json.dumps(dict(reversed(list(BODY.items())))).encode()

    assert_problem(client.post("/hooks/store-clusters", data=reordered, headers=headers), 401)


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b'{"a": NaN}', 400),
    (b'{"a": 1, "a": 2}', 400),
    (b"\xef\xbb\xbf{}", 400),
    (b'{"a": "\xff"}', 400),
    (b"[" * 10000 + b"]" * 10000, 400),
])
def test_malformed_bodies_are_a_400(client, body, status):
    assert_problem(post(client, "/hooks/store-clusters", body=body), status)


def test_a_body_that_is_not_json_is_a_415(client):
    assert_problem(post(client, "/hooks/store-clusters", body=b"a=1", headers={"Content-Type": "text/plain"}), 415)


def test_a_body_over_the_limit_is_a_413_from_its_content_length(test_schemas, sandbox, tmp_path):
    app = build_app(settings_env(test_schemas, sandbox.url, tmp_path, GATEWAY_MAX_BODY_BYTES="100"))
    problem = assert_problem(post(function_client(app), "/hooks/store-clusters", {"pad": "x" * 200}), 413)
    assert "100" in problem["detail"]


def test_a_chunked_body_over_the_limit_is_a_413(test_schemas, sandbox, tmp_path):
    app = build_app(settings_env(test_schemas, sandbox.url, tmp_path, GATEWAY_MAX_BODY_BYTES="100"))
    body = json.dumps({"pad": "x" * 200}).encode()
    headers = signed_headers(SECRET, body)
    headers["Transfer-Encoding"] = "chunked"

    response = function_client(app).post("/hooks/store-clusters", input_stream=io.BytesIO(body), headers=headers,
                                         environ_overrides={"wsgi.input_terminated": True})

    assert_problem(response, 413)


def test_an_unknown_workflow_or_route_is_a_404(client):
    assert_problem(post(client, "/hooks/no-such-flow", BODY), 404)
    assert_problem(client.get("/nowhere"), 404)


def test_a_wrong_method_is_a_405(client):
    problem = assert_problem(client.get("/hooks/store-clusters"), 405)
    assert problem["code"] == "method-not-allowed"


def test_healthz_answers_that_the_instance_is_up_and_names_no_workflow(client):
    response = client.get("/healthz")

    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    assert "store-clusters" not in response.get_data(as_text=True)


def test_the_openapi_document_is_for_operators_only(client):
    stranger, operator = client.get("/openapi.json"), client.get("/openapi.json", headers=operator_headers())

    assert_problem(stranger, 401)
    assert "store-clusters" not in stranger.get_data(as_text=True)
    assert operator.status_code == 200 and "/hooks/store-clusters" in operator.get_json()["paths"]


def test_without_operator_settings_the_openapi_document_is_a_401_for_everyone(test_schemas, sandbox, tmp_path):
    closed = function_client(build_app(settings_env(test_schemas, sandbox.url, tmp_path, GATEWAY_OPERATOR_TOKENS="")))

    assert_problem(closed.get("/openapi.json", headers=operator_headers()), 401)


def test_a_replay_answers_the_original_job_as_a_duplicate(client, sandbox):
    msg_id = f"msg_{uuid.uuid4().hex}"
    first = post(client, "/hooks/store-clusters", BODY, msg_id=msg_id).get_json()

    replay = post(client, "/hooks/store-clusters", BODY, msg_id=msg_id)

    assert replay.status_code == 200
    assert replay.get_json() == {**first, "duplicate": True}
    assert len(sandbox.jobs()) == 1


def test_the_same_key_with_another_body_is_a_422(client, sandbox):
    msg_id = f"msg_{uuid.uuid4().hex}"
    post(client, "/hooks/store-clusters", BODY, msg_id=msg_id)

    problem = assert_problem(post(client, "/hooks/store-clusters", {**BODY, "clusters": 3}, msg_id=msg_id), 422)

    assert problem["code"] == "idempotency-key-reused" and len(sandbox.jobs()) == 1


def test_carto_down_before_the_job_exists_is_accepted_queued_and_a_replay_says_so(client, sandbox):
    sandbox.faults.error("submit", status=503, count=3)
    msg_id = f"msg_{uuid.uuid4().hex}"

    queued = post(client, "/hooks/store-clusters", BODY, msg_id=msg_id)
    replayed = post(client, "/hooks/store-clusters", BODY, msg_id=msg_id)

    answer = queued.get_json()
    assert queued.status_code == 202 and answer["job_id"] is None and answer["queued"] is True
    assert answer["status_url"] == f"/deliveries/store-clusters%3A{msg_id}" == queued.headers["Location"]
    assert answer["duplicate"] is False and answer["delivery_id"] == msg_id
    assert replayed.status_code == 200 and replayed.get_json()["queued"] is True
    assert replayed.get_json()["duplicate"] is True and sandbox.jobs() == []


def test_carto_refusing_the_job_is_a_502(test_schemas, sandbox, tmp_path):
    app = build_app(settings_env(test_schemas, sandbox.url, tmp_path, CARTO_API_TOKEN="not-the-token"))

    problem = assert_problem(post(function_client(app), "/hooks/store-clusters", BODY), 502)

    assert "not-the-token" not in json.dumps(problem)


def test_a_paused_workflow_accepts_and_holds(test_schemas, sandbox, tmp_path):
    paused = tmp_path / "paused-schemas"
    import shutil

    shutil.copytree(test_schemas, paused)
    definition = json.loads((paused / "workflows" / "store-clusters.json").read_text())
    (paused / "workflows" / "store-clusters.json").write_text(json.dumps({**definition, "paused": True}))
    app = build_app(settings_env(paused, sandbox.url, tmp_path))

    response = post(function_client(app), "/hooks/store-clusters", BODY)

    assert response.status_code == 202 and response.get_json()["queued"] is True
    assert sandbox.jobs() == []


def test_job_status_needs_an_operator_and_shows_the_record(client):
    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]

    unauthenticated = client.get(f"/jobs/{job_id}")
    authenticated = client.get(f"/jobs/{job_id}", headers=operator_headers())

    assert_problem(unauthenticated, 401)
    view = authenticated.get_json()
    assert authenticated.status_code == 200 and view["job_id"] == job_id and view["workflow"] == "store-clusters"
    assert view["live"]["state"] in ("PENDING", "RUNNING", "DONE")


def test_an_unknown_job_is_a_404(client):
    assert_problem(client.get("/jobs/job_nope", headers=operator_headers()), 404)


def test_cancelling_a_job_cancels_it_in_carto_and_publishes_one_cancelled_event(client, sandbox, publisher):
    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]

    response = client.delete(f"/jobs/{job_id}", headers=operator_headers())
    again = client.delete(f"/jobs/{job_id}", headers=operator_headers())

    assert response.status_code == 200 and response.get_json()["outcome"] == "CANCELLED"
    assert_problem(again, 409)  # it already ended: nothing was cancelled
    assert "already ended (CANCELLED)" in again.get_json()["detail"]
    assert [e["attributes"]["ce-id"] for e in publisher.events()] == [f"{job_id}:CANCELLED"]
    assert sandbox.jobs()[0].cancelled


# --- INT64: a JSON number whose value is an integer is one -------------------------------------------

IDS_WORKFLOW = {
    "description": "Integers from a payload, checked at the local CARTO job API as BigQuery binds them.",
    "connection": "carto_dw",
    "query": "CALL `proj.ds.cluster_ids`(@number_of_clusters,@ids)",
    "parameters": {"number_of_clusters": {"type": "INT64", "from": "/clusters"},
                   "ids": {"type": "ARRAY<INT64>", "from": "/ids", "default": [1]}},
    "payload": {"type": "object", "required": ["clusters"],
                "properties": {"clusters": {"type": "integer", "minimum": 1, "maximum": 100},
                               "ids": {"type": "array", "items": {"type": "integer"}}}},
    "auth": [{"scheme": "standard-webhooks", "secrets": "env:STORE_CLUSTERS_SECRET"}],
}


@pytest.fixture
def typed(test_schemas, tmp_path, make_sandbox):
    """A gateway whose CARTO is a sandbox that checks every argument's type against the procedure's signature."""
    import shutil

    from gateway.local.sandbox import load_procedures

    schemas = tmp_path / "typed-schemas"
    shutil.copytree(test_schemas, schemas)
    (schemas / "workflows" / "cluster-ids.json").write_text(json.dumps(IDS_WORKFLOW))
    procedures = load_procedures(schemas)
    assert procedures["proj.ds.cluster_ids"].parameters == {"number_of_clusters": "INT64", "ids": "ARRAY<INT64>"}
    server = make_sandbox(token=CARTO_TOKEN, procedures=procedures, default_duration_s=60)
    return function_client(build_app(settings_env(schemas, server.url, tmp_path))), server


@pytest.mark.parametrize("text, clusters, ids", [
    ('{"clusters": 2.0}', 2, [1]), ('{"clusters": 2e0}', 2, [1]), ('{"clusters": 20E-1}', 2, [1]),
    ('{"clusters": 2, "ids": [1.0, 2]}', 2, [1, 2]), ('{"clusters": 3, "ids": [9.007199254740993e15, -4e0]}', 3,
                                                       [9007199254740993, -4]),
    ('{"clusters": 3, "ids": [9223372036854775807.0]}', 3, [2**63 - 1]),
])
def test_an_integer_valued_number_binds_as_int64_and_goes_out_as_an_integer(typed, text, clusters, ids):
    client, sandbox = typed

    response = post(client, "/hooks/cluster-ids", body=text.encode())

    assert response.status_code == 202, response.get_data(as_text=True)
    (job,) = sandbox.jobs()
    assert job.query_parameters == {"number_of_clusters": clusters, "ids": ids}
    assert all(type(value) is int for value in [job.query_parameters["number_of_clusters"], *job.query_parameters["ids"]])
    assert job.error_result is None  # the sandbox binds as BigQuery does: a float would not bind to INT64


@pytest.mark.parametrize("text, path", [
    ('{"clusters": 2.5}', "/clusters"), ('{"clusters": 1e400}', "/clusters"),
    ('{"clusters": 2, "ids": [1.0, 2.5]}', "/ids/1"), ('{"clusters": 2, "ids": [9223372036854775808.0]}', "/ids/0"),
    ('{"clusters": 2, "ids": [-9.3e18]}', "/ids/0"),
])
def test_a_number_that_is_no_int64_is_one_422_naming_the_parameter_and_the_path(typed, text, path):
    client, sandbox = typed

    problem = assert_problem(post(client, "/hooks/cluster-ids", body=text.encode()), 422)

    (error,) = problem["errors"]  # one problem, reported once (not by the schema and again by the mapper)
    name = "number_of_clusters (INT64)" if path == "/clusters" else "ids (ARRAY<INT64>)"
    assert error["path"] == path and error["message"].startswith(name)
    assert sandbox.jobs() == []


def test_the_seed_workflow_refuses_2_5_clusters_once(client):
    body = b'{"clusters": 2.5, "radius_m": 5, "store": {"type": "a"}}'

    problem = assert_problem(post(client, "/hooks/store-clusters", body=body), 422)

    assert problem["errors"] == [{"path": "/clusters", "message": "number_of_clusters (INT64): expected an integer, got 2.5"}]


def test_a_running_jobs_record_and_its_cancelled_event_count_every_status_check_made(rig):
    job_id = rig.post("store-clusters", BODY).get_json()["job_id"]
    rig.deliver(rig.tracking()[0])  # the first trigger's inline checks
    rig.run_tasks(limit=2)  # two more checks; the 10 s job still runs

    running = rig.job_request("GET", job_id).get_json()
    made = rig.sandbox.stats()["requests"]["status"] - 1  # the GET itself asked CARTO for the live status once
    cancelled = rig.job_request("DELETE", job_id).get_json()

    assert running["outcome"] is None and running["checks"] == made > 2
    assert cancelled["outcome"] == "CANCELLED" and cancelled["checks"] == made
    assert [event["data"]["checks"] for event in rig.publisher.events()] == [made]


# --- python -m gateway status / cancel --------------------------------------------------------------

def gateway_cli(*args: str, **env: str):
    import os
    import subprocess
    import sys

    from tests.constants import ROOT

    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_OPERATOR")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def slow(test_schemas, tmp_path, make_sandbox):
    """A gateway whose jobs run for a minute: long enough to cancel one."""
    server = make_sandbox(token=CARTO_TOKEN, default_duration_s=60)
    return function_client(build_app(settings_env(test_schemas, server.url, tmp_path))), server


def test_status_and_cancel_print_the_record_with_the_operator_token_from_the_environment(slow):
    from tests.rigs import served

    client, sandbox = slow
    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]
    with served(client.application) as url:
        status = gateway_cli("status", job_id, "--url", url, GATEWAY_OPERATOR_TOKENS=f"{OPERATOR_TOKEN},another")
        cancel = gateway_cli("cancel", job_id, "--url", url, GATEWAY_OPERATOR_TOKEN=OPERATOR_TOKEN)

    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["job_id"] == job_id and json.loads(status.stdout)["outcome"] is None
    assert cancel.returncode == 0, cancel.stderr
    assert json.loads(cancel.stdout)["outcome"] == "CANCELLED" and sandbox.jobs()[0].cancelled
    assert OPERATOR_TOKEN not in status.stdout + status.stderr + cancel.stdout + cancel.stderr


def test_status_without_an_operator_token_or_with_a_wrong_one_fails_and_says_why(client):
    from tests.rigs import served

    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]
    with served(client.application) as url:
        missing = gateway_cli("status", job_id, "--url", url)
        wrong = gateway_cli("status", job_id, "--url", url, GATEWAY_OPERATOR_TOKENS="not-the-token")

    assert missing.returncode == 1 and "GATEWAY_OPERATOR_TOKENS" in missing.stderr and missing.stdout == ""
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr and "not-an-operator" in wrong.stderr
    assert "not-the-token" not in wrong.stderr


@pytest.mark.parametrize("method, path", [("POST", "/hooks/store-clusters"), ("POST", "/hooks/nope"),
                                          ("GET", "/healthz"), ("GET", "/jobs/x"), ("GET", "/problems")])
def test_every_answer_tells_browsers_not_to_sniff_its_type(client, method, path):
    answer = post(client, path, BODY) if method == "POST" else client.get(path)
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_a_delivery_id_over_256_characters_is_a_400_and_reaches_nothing(client, sandbox, publisher):
    answer = post(client, "/hooks/store-clusters", BODY, msg_id="m" * 8000)

    problem = assert_problem(answer, 400)
    assert problem["code"] == "delivery-id-too-long" and "m" * 300 not in answer.get_data(as_text=True)
    assert not sandbox.jobs() and not publisher.messages
    assert post(client, "/hooks/store-clusters", BODY, msg_id="m" * 256).status_code == 202  # the bound itself is fine


def test_a_route_with_a_trailing_newline_is_no_route(client, sandbox):
    assert post(client, "/hooks/store-clusters%0A", BODY).status_code == 404
    assert not sandbox.jobs()
    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]
    assert client.get(f"/jobs/{job_id}", headers=operator_headers()).status_code == 200
    assert client.get(f"/jobs/{job_id}%0A", headers=operator_headers()).status_code == 404
    assert client.get("/problems%0A").status_code == 404


def test_the_cancel_verb_of_an_ended_job_exits_non_zero_saying_nothing_was_cancelled(client, capsys, monkeypatch):
    import threading

    from werkzeug.serving import make_server

    from gateway.cli import main

    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]
    server = make_server("127.0.0.1", 0, client.application, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GATEWAY_OPERATOR_TOKENS", operator_headers()["Authorization"].split(" ", 1)[1])
    monkeypatch.delenv("GATEWAY_OPERATOR_TOKEN", raising=False)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        first = main(["cancel", job_id, "--url", url])
        capsys.readouterr()
        second = main(["cancel", job_id, "--url", url])
        err = capsys.readouterr().err
    finally:
        server.shutdown()
    assert first == 0
    assert second == 1 and "HTTP 409" in err and "nothing was cancelled" in err


def test_an_unknown_workflow_says_files_are_loaded_when_the_function_starts(client):
    problem = assert_problem(client.post("/hooks/added-while-running", json={}), 404)
    assert "no workflow named added-while-running" in problem["detail"] and "loaded when the function starts" in problem["detail"]
