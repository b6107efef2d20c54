"""The HTTP surface of `webhook` (README, "HTTP surface") through the real functions-framework app: statuses,
problem+json, replays, the validate route, jobs. CARTO is the local job API over loopback HTTP."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from gateway.local.sandbox import serve
from tests.apptools import RecordingPublisher, build_app, function_client, settings_env
from tests.conftest import CARTO_TOKEN, SECRET
from tests.stackutil import signed_headers

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}


@pytest.fixture
def sandbox():
    server = serve(token=CARTO_TOKEN, default_duration_s=0.5)
    yield server
    server.stop()


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
    assert {"/clusters", "/radius_m", "/store"} <= paths


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


def test_healthz_answers_200(client):
    assert client.get("/healthz").status_code == 200


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


def test_carto_down_before_the_job_exists_is_a_503_and_the_retry_goes_through(client, sandbox):
    sandbox.faults.error("submit", status=503, count=3)
    msg_id = f"msg_{uuid.uuid4().hex}"

    refused = post(client, "/hooks/store-clusters", BODY, msg_id=msg_id)
    retried = post(client, "/hooks/store-clusters", BODY, msg_id=msg_id)

    problem = assert_problem(refused, 503)
    assert refused.headers["Retry-After"] and problem["code"] == "carto-unavailable"
    assert retried.status_code == 202 and len(sandbox.jobs()) == 1


def test_carto_refusing_the_job_is_a_502(test_schemas, sandbox, tmp_path):
    app = build_app(settings_env(test_schemas, sandbox.url, tmp_path, CARTO_API_TOKEN="not-the-token"))

    problem = assert_problem(post(function_client(app), "/hooks/store-clusters", BODY), 502)

    assert "not-the-token" not in json.dumps(problem)


def test_a_paused_workflow_answers_503_so_senders_keep_retrying(test_schemas, sandbox, tmp_path):
    paused = tmp_path / "paused-schemas"
    import shutil

    shutil.copytree(test_schemas, paused)
    definition = json.loads((paused / "workflows" / "store-clusters.json").read_text())
    (paused / "workflows" / "store-clusters.json").write_text(json.dumps({**definition, "paused": True}))
    app = build_app(settings_env(paused, sandbox.url, tmp_path))

    response = post(function_client(app), "/hooks/store-clusters", BODY)

    assert_problem(response, 503)
    assert sandbox.jobs() == []


def test_job_status_needs_authentication_and_shows_the_record(client):
    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]

    unauthenticated = client.get(f"/jobs/{job_id}")
    authenticated = client.get(f"/jobs/{job_id}", headers=signed_headers(SECRET, b""))

    assert_problem(unauthenticated, 401)
    view = authenticated.get_json()
    assert authenticated.status_code == 200 and view["job_id"] == job_id and view["workflow"] == "store-clusters"
    assert view["live"]["state"] in ("PENDING", "RUNNING", "DONE")


def test_an_unknown_job_is_a_404(client):
    assert_problem(client.get("/jobs/job_nope", headers=signed_headers(SECRET, b"")), 404)


def test_cancelling_a_job_cancels_it_in_carto_and_publishes_one_cancelled_event(client, sandbox, publisher):
    job_id = post(client, "/hooks/store-clusters", BODY).get_json()["job_id"]

    response = client.delete(f"/jobs/{job_id}", headers=signed_headers(SECRET, b""))
    again = client.delete(f"/jobs/{job_id}", headers=signed_headers(SECRET, b""))

    assert response.status_code == 200 and response.get_json()["outcome"] == "CANCELLED"
    assert again.status_code == 200
    assert [e["attributes"]["ce-id"] for e in publisher.events()] == [f"{job_id}:CANCELLED"]
    assert sandbox.jobs()[0].cancelled
