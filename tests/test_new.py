"""`python -m gateway new`: from what CARTO's API access dialog shows to a workflow that checks, renders
exactly the pasted call, and runs on the local stack; odd pastes refused with nothing written; the
pasted token nowhere."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import time
import uuid

import pytest

from gateway.auth.config import build_schemes
from gateway.cli import main
from gateway.cli.new import SENDERS, guess_type, secret_env_name
from gateway.cli.paste import read_paste
from gateway.local.sandbox import load_procedures
from tests.constants import CARTO_TOKEN, DATA, PROJECT, ROOT

PASTES = DATA / "pastes"
SEED_QUERY = ("CALL `carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f`"
              "(@number_of_clusters,@buffer_radius,@store_type)")
SEED_PARAMETERS = {"number_of_clusters": 2, "buffer_radius": 500, "store_type": "Supermarket"}
GOOD_PASTES = {
    "seed-post.txt": SEED_PARAMETERS,  # the dialog's POST curl, as shown
    "seed-get.txt": SEED_PARAMETERS,  # the dialog's GET URL, as shown (spaces, quotes and braces unencoded)
    "seed-get-encoded.txt": {**SEED_PARAMETERS, "store_type": "Super market & co"},  # curl of a percent-encoded URL
    "seed-windows.txt": {**SEED_PARAMETERS, "buffer_radius": 500.5},  # CRLF, -H, --data-raw, double quotes
    "seed-body.json": SEED_PARAMETERS,  # the bare body
}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """A schemas directory with the meta-schema and no workflow, an examples directory, no CARTO settings."""
    schemas = tmp_path / "schemas"
    (schemas / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / "schemas" / "workflow.schema.json", schemas)
    shutil.copy(ROOT / "schemas" / "job-event.schema.json", schemas)
    monkeypatch.delenv("CARTO_API_BASE_URL", raising=False)
    monkeypatch.delenv("GATEWAY_SCHEMAS_DIR", raising=False)
    return schemas, tmp_path / "examples"


def gateway(capsys, dirs, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--schemas", str(dirs[0]), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def new(capsys, dirs, name, paste, *extra) -> tuple[int, str, str]:
    return gateway(capsys, dirs, "new", name, "--from", str(PASTES / paste), "--examples", str(dirs[1]),
                   *(("--connection", "carto_dw") if paste.endswith(".json") else ()), *extra)


def typed(value):
    """A JSON value with the type of every number, so 500 and 500.0 differ."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def files_under(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- what a good paste gives ------------------------------------------------------------------

@pytest.mark.parametrize("paste", sorted(GOOD_PASTES))
def test_a_dialog_paste_becomes_a_workflow_that_checks_and_renders_exactly_the_pasted_call(capsys, dirs, paste):
    status, out, _ = new(capsys, dirs, "seed-clusters", paste)
    assert status == 0, out
    assert (dirs[0] / "workflows" / "seed-clusters.json").is_file()

    assert gateway(capsys, dirs, "check")[:2] == (0, "ok  seed-clusters\n")
    status, rendered, err = gateway(capsys, dirs, "render", "seed-clusters", str(dirs[1] / "seed-clusters.json"))

    assert status == 0, err
    assert json.loads(rendered)["query"] == SEED_QUERY
    assert typed(json.loads(rendered)["queryParameters"]) == typed(GOOD_PASTES[paste])


def test_the_file_takes_connection_query_and_one_pointer_per_parameter(capsys, dirs):
    new(capsys, dirs, "seed-clusters", "seed-post.txt")

    written = json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())

    assert written["connection"] == "carto_dw" and written["query"] == SEED_QUERY
    assert written["parameters"] == {"number_of_clusters": {"type": "INT64", "from": "/number_of_clusters"},
                                     "buffer_radius": {"type": "INT64", "from": "/buffer_radius"},
                                     "store_type": {"type": "STRING", "from": "/store_type"}}
    assert written["payload"]["required"] == ["number_of_clusters", "buffer_radius", "store_type"]
    assert written["payload"]["properties"] == {"number_of_clusters": {"type": "integer"},
                                                "buffer_radius": {"type": "integer"}, "store_type": {"type": "string"}}
    assert written["auth"] == [{"scheme": "standard-webhooks", "secrets": "env:SEED_CLUSTERS_SECRET"}]
    assert written["idempotency"] == {"header": "webhook-id"}
    assert "carto" not in written


def test_each_type_is_shown_as_a_guess_with_the_fact_that_decides_it(capsys, dirs):
    out = new(capsys, dirs, "seed-clusters", "seed-windows.txt")[1]

    assert re.search(r"number_of_clusters\s+INT64\s+guess: the example 2 is a whole number; "
                     r"a Workflows \"Number\" variable is FLOAT64 in BigQuery", out)
    assert re.search(r"buffer_radius\s+FLOAT64\s+guess: the example 500.5 has a fraction", out)
    assert re.search(r"store_type\s+STRING\s+guess: the example \"Supermarket\" is a string", out)


@pytest.mark.parametrize(("example", "sql_type"), [
    ("x", "STRING"), (True, "BOOL"), (2, "INT64"), (2.5, "FLOAT64"),
    ({"type": "Point", "coordinates": [-3.7, 40.4]}, "GEOGRAPHY"),
    ({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 0]}]}, "GEOGRAPHY"),
    ({"type": "Feature", "geometry": None}, "JSON"),
    (["a", "b"], "ARRAY<STRING>"), ([1, 2], "ARRAY<INT64>"), ([1, 2.5], "ARRAY<FLOAT64>"), ([True], "ARRAY<BOOL>"),
])
def test_a_type_is_guessed_from_its_example(example, sql_type):
    assert guess_type("p", example).type == sql_type


def test_a_geography_example_is_sent_as_geojson_text_and_its_field_is_an_object(capsys, dirs, tmp_path):
    point = {"type": "Point", "coordinates": [-3.7, 40.4]}
    paste = tmp_path / "geo.json"
    paste.write_text(json.dumps({"query": "CALL `p.d.proc`(@area,@tags)", "queryParameters": {"area": point, "tags": ["a"]}}))
    status = gateway(capsys, dirs, "new", "geo", "--from", str(paste), "--examples", str(dirs[1]),
                     "--connection", "carto_dw")[0]
    assert status == 0

    rendered = json.loads(gateway(capsys, dirs, "render", "geo", str(dirs[1] / "geo.json"))[1])
    written = json.loads((dirs[0] / "workflows" / "geo.json").read_text())

    assert rendered["queryParameters"] == {"area": json.dumps(point, separators=(",", ":")), "tags": ["a"]}
    assert written["payload"]["properties"]["area"]["type"] == "object"
    assert written["payload"]["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}


def test_the_next_commands_are_printed(capsys, dirs):
    out = new(capsys, dirs, "seed-clusters", "seed-post.txt")[1]
    example = dirs[1] / "seed-clusters.json"

    assert re.search(rf"-m gateway --schemas \S+ check\n.*-m gateway --schemas \S+ render seed-clusters {example}\n"
                     rf".*-m gateway --schemas \S+ send seed-clusters {example}", out)


# --- where the CARTO base URL goes -------------------------------------------------------------

def test_a_base_url_equal_to_the_deployments_is_not_written(capsys, dirs, monkeypatch):
    monkeypatch.setenv("CARTO_API_BASE_URL", "https://gcp-us-east1.api.carto.com/")
    new(capsys, dirs, "seed-clusters", "seed-post.txt")
    assert "carto" not in json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())


def test_a_base_url_other_than_the_deployments_is_written_as_the_workflows_own(capsys, dirs, monkeypatch):
    monkeypatch.setenv("CARTO_API_BASE_URL", "https://gcp-europe-west1.api.carto.com")
    new(capsys, dirs, "seed-clusters", "seed-post.txt")
    written = json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())
    assert written["carto"] == {"api_base_url": "https://gcp-us-east1.api.carto.com"}


def test_without_a_deployment_base_url_the_output_says_which_to_set(capsys, dirs):
    out = new(capsys, dirs, "seed-clusters", "seed-post.txt")[1]
    assert "set CARTO_API_BASE_URL=https://gcp-us-east1.api.carto.com" in out
    assert "carto" not in json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())


# --- senders -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", [s for s in SENDERS if s != "google-id-token"])
def test_each_sender_gets_its_block_a_named_secret_printed_once_and_signing_works(capsys, dirs, scheme):
    status, out, _ = new(capsys, dirs, "seed-clusters", "seed-post.txt", "--sender", scheme)
    assert status == 0
    secret = re.search(r"^  SEED_CLUSTERS_SECRET=(\S+)", out, re.MULTILINE)[1]
    written = json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())

    assert written["auth"][0]["scheme"] == scheme
    assert written["auth"][0].get("secrets", written["auth"][0].get("tokens")) == "env:SEED_CLUSTERS_SECRET"
    assert "idempotency" in written
    holding = [path for path, data in files_under(dirs[0].parent).items() if secret.encode() in data]
    assert out.count(secret) == 1 and holding == [".env"]  # the git-ignored local secrets file only
    schemes = build_schemes(written["auth"], {"SEED_CLUSTERS_SECRET": secret})
    body = json.dumps(SEED_PARAMETERS).encode()
    headers = schemes[0].sign(body, time.time(), "delivery-1")
    assert schemes[0].verify(headers, body, time.time()).scheme == scheme


def test_a_standard_webhooks_secret_is_whsec_base64():
    from gateway.cli.new import sender

    secret = sender("standard-webhooks", "seed-clusters").secret
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[len("whsec_"):], validate=True)) == 24


def test_google_id_token_needs_no_secret_and_says_what_to_fill_in(capsys, dirs):
    status, out, _ = new(capsys, dirs, "seed-clusters", "seed-post.txt", "--sender", "google-id-token")
    assert status == 0 and "SECRET=" not in out and "audience" in out and not (dirs[0].parent / ".env").exists()
    assert gateway(capsys, dirs, "check")[0] == 0


def test_the_secret_variable_is_named_after_the_workflow():
    assert secret_env_name("seed-clusters") == "SEED_CLUSTERS_SECRET"
    assert secret_env_name("3d-tiles") == "HOOK_3D_TILES_SECRET"


def test_the_sender_block_takes_the_single_env_reference_form(capsys, dirs):
    new(capsys, dirs, "seed-clusters", "seed-post.txt")
    assert json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())["auth"][0]["secrets"] == \
        "env:SEED_CLUSTERS_SECRET"


# --- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("paste", "message"), [
    ("parameter-missing-from-call.txt", "queryParameters gives 'store_type', which the CALL does not use (no @store_type)"),
    ("placeholder-without-parameter.txt", "the CALL uses @store_type, which queryParameters does not give"),
    ("malformed-json.txt", "the JSON in --data is not valid JSON: Expecting property name enclosed in double quotes "
                           "at line 3 column 91"),
    ("no-url.txt", "the curl command has no URL"),
])
def test_an_odd_paste_is_refused_with_a_clear_error_and_nothing_written(capsys, dirs, paste, message):
    before = files_under(dirs[0].parent)

    status, out, err = new(capsys, dirs, "seed-clusters", paste)

    assert status == 1 and message in err
    assert files_under(dirs[0].parent) == before


def test_an_unknown_sender_is_refused_and_nothing_written(capsys, dirs):
    before = files_under(dirs[0].parent)
    with pytest.raises(SystemExit) as exited:
        new(capsys, dirs, "seed-clusters", "seed-post.txt", "--sender", "carrier-pigeon")
    assert exited.value.code == 2
    assert "argument --sender: invalid choice: 'carrier-pigeon'" in capsys.readouterr().err
    assert files_under(dirs[0].parent) == before


def test_an_existing_name_is_refused_without_force_and_replaced_with_it(capsys, dirs):
    new(capsys, dirs, "seed-clusters", "seed-post.txt")
    before = files_under(dirs[0].parent)

    status, _, err = new(capsys, dirs, "seed-clusters", "seed-windows.txt")
    assert status == 1 and "already exist" in err and "--force" in err
    assert files_under(dirs[0].parent) == before

    assert new(capsys, dirs, "seed-clusters", "seed-windows.txt", "--force")[0] == 0
    assert json.loads((dirs[1] / "seed-clusters.json").read_text())["buffer_radius"] == 500.5


@pytest.mark.parametrize(("body", "message"), [
    ({"query": "CALL `p.d.proc`(:1, :2)", "queryParameters": [1]}, "placeholder 2 has no value in queryParameters"),
    ({"query": "CALL `p.d.proc`($1)", "queryParameters": [1, 2]}, "queryParameters value 2 is used by no placeholder"),
    ({"query": "CALL `p.d.proc`(@a)", "queryParameters": [1]}, "queryParameters is an array (positional parameters)"),
    ({"query": "CALL `p.d.proc`(@a)", "queryParameters": {"a": None}}, "queryParameters.a is null"),
    ({"query": "SELECT 1", "queryParameters": {}}, "the query is not a CALL"),
])
def test_a_body_that_cannot_make_a_workflow_is_refused_naming_why(capsys, dirs, tmp_path, body, message):
    paste = tmp_path / "paste.json"
    paste.write_text(json.dumps(body))
    before = files_under(dirs[0].parent)

    status, _, err = gateway(capsys, dirs, "new", "odd", "--from", str(paste), "--examples", str(dirs[1]),
                             "--connection", "carto_dw")

    assert status == 1 and message in err
    assert files_under(dirs[0].parent) == before


@pytest.mark.parametrize(("text", "message"), [
    ("curl --location 'https://gcp-us-east1.api.carto.com/v3/sql/carto_dw/query' --data '{}'", "not CARTO's job endpoint"),
    ("curl --data '{\"query\": \"CALL x()\"", "cannot be split as a shell would"),
    ("wget https://example.com", "expected the curl command"),
    ("", "nothing was pasted"),
])
def test_a_paste_that_is_not_the_dialogs_command_is_refused(text, message):
    with pytest.raises(Exception, match=re.escape(message)):
        read_paste(text)


@pytest.fixture
def carto(monkeypatch, make_sandbox):
    """The local CARTO job API on loopback, knowing the shipped workflows' procedures; the deployment's settings."""
    server = make_sandbox(token=CARTO_TOKEN, procedures=load_procedures(ROOT / "examples"), default_duration_s=0.1)
    monkeypatch.setenv("CARTO_API_BASE_URL", server.url)
    monkeypatch.setenv("CARTO_API_TOKEN", CARTO_TOKEN)
    return server


def test_live_takes_each_type_from_the_procedures_signature(capsys, dirs, carto):
    guessed_status, _, _ = new(capsys, dirs, "guessed", "seed-body.json")
    status, out, _ = new(capsys, dirs, "seed-clusters", "seed-body.json", "--live")
    assert (guessed_status, status) == (0, 0)
    guessed = json.loads((dirs[0] / "workflows" / "guessed.json").read_text())["parameters"]
    written = json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())["parameters"]
    # The example 500 makes a guess of INT64; the procedure (a Workflows "Number") takes FLOAT64.
    assert guessed["buffer_radius"]["type"] == "INT64"
    assert {n: spec["type"] for n, spec in written.items()} == {
        "number_of_clusters": "INT64", "buffer_radius": "FLOAT64", "store_type": "STRING"}
    assert "each type read from the procedure's signature" in out and "guess:" not in out
    assert gateway(capsys, dirs, "check")[0] == 0


def test_live_for_a_procedure_that_does_not_exist_says_why_and_writes_nothing(capsys, dirs, carto, tmp_path):
    paste = tmp_path / "gone.json"
    paste.write_text(json.dumps({"query": "CALL `p.workflows_temp.workflow_procedure_gone`(@a)",
                                 "queryParameters": {"a": 1}}))
    status, _, err = gateway(capsys, dirs, "new", "gone", "--from", str(paste), "--examples", str(dirs[1]),
                             "--connection", "carto_dw", "--live")
    assert status == 1 and "p.workflows_temp.workflow_procedure_gone does not exist on connection carto_dw" in err
    assert not (dirs[0] / "workflows" / "gone.json").exists() and not dirs[1].exists()


def paste_at(tmp_path, url: str, *, token: bool = True) -> str:
    """seed-post.txt naming the CARTO at `url` (with its token, or without its Authorization line): its path."""
    text = (PASTES / "seed-post.txt").read_text().replace("https://gcp-us-east1.api.carto.com", url)
    if not token:
        text = "\n".join(line for line in text.splitlines() if "Authorization" not in line) + "\n"
    path = tmp_path / f"paste-{'token' if token else 'bare'}.txt"
    path.write_text(text)
    return str(path)


def new_from(capsys, dirs, name, paste_path, *extra) -> tuple[int, str, str]:
    return gateway(capsys, dirs, "new", name, "--from", paste_path, "--examples", str(dirs[1]), *extra)


def test_live_reads_the_signature_from_the_carto_the_written_file_calls_with_the_pastes_token(
        capsys, dirs, carto, make_sandbox, tmp_path, monkeypatch):
    # CARTO_API_BASE_URL is one local CARTO (with the deployment's token); the paste names another, with its own.
    monkeypatch.setenv("CARTO_API_TOKEN", "deployment-token")
    configured = make_sandbox(token="deployment-token", procedures=load_procedures(ROOT / "examples"))
    monkeypatch.setenv("CARTO_API_BASE_URL", configured.url)

    status, out, err = new_from(capsys, dirs, "seed-clusters", paste_at(tmp_path, carto.url), "--live")

    assert status == 0, err
    written = json.loads((dirs[0] / "workflows" / "seed-clusters.json").read_text())
    assert written["carto"]["api_base_url"] == carto.url  # the host the gateway will call for this workflow
    assert written["parameters"]["buffer_radius"]["type"] == "FLOAT64"  # the procedure's; a guess from 500: INT64
    assert any("INFORMATION_SCHEMA" in str(query) for query in carto.stats()["queries"])
    assert configured.stats()["queries"] == [] and configured.stats()["requests"] == {}


def test_live_does_not_send_the_deployments_token_to_a_pastes_other_host(
        capsys, dirs, carto, make_sandbox, tmp_path):
    elsewhere = make_sandbox(procedures=load_procedures(ROOT / "examples"))

    status, _, err = new_from(capsys, dirs, "seed-clusters", paste_at(tmp_path, elsewhere.url, token=False), "--live")

    assert status == 1 and "the deployment's token is not sent to another host" in err
    assert "Paste the curl with its token, or set CARTO_API_BASE_URL to that host" in err
    assert elsewhere.stats()["requests"] == {} and carto.stats()["queries"] == []
    assert CARTO_TOKEN not in err and not (dirs[0] / "workflows" / "seed-clusters.json").exists()


def test_live_that_cannot_reach_carto_names_the_url_it_tried(capsys, dirs, monkeypatch, tmp_path):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("CARTO_API_BASE_URL", "https://gcp-us-east1.api.carto.com")
    monkeypatch.setenv("CARTO_API_TOKEN", "deployment-token")

    status, _, err = new_from(capsys, dirs, "seed-clusters", paste_at(tmp_path, closed), "--live")

    assert status == 1
    assert (f"at {closed} (the paste's URL, which the workflow file names (CARTO_API_BASE_URL is "
            "https://gcp-us-east1.api.carto.com))") in err
    assert "SENTINEL" not in err and not (dirs[0] / "workflows" / "seed-clusters.json").exists()


def test_live_without_a_base_url_is_refused_clearly(capsys, dirs):
    status, _, err = new(capsys, dirs, "seed-clusters", "seed-body.json", "--live")
    assert status == 1 and "new --live needs CARTO's base URL" in err
    assert not (dirs[0] / "workflows" / "seed-clusters.json").exists()


# --- the token --------------------------------------------------------------------------------

@pytest.mark.parametrize("paste", sorted(p.name for p in PASTES.iterdir()))
def test_the_pasted_token_is_in_no_file_and_no_output(capsys, caplog, dirs, paste):
    assert CARTO_TOKEN in (PASTES / paste).read_text() or paste.endswith(".json")

    _, out, err = new(capsys, dirs, "seed-clusters", paste)

    assert CARTO_TOKEN not in out + err
    assert all(CARTO_TOKEN not in record.getMessage() for record in caplog.records)
    assert all(CARTO_TOKEN.encode() not in data for data in files_under(dirs[0].parent).values())


def test_the_output_says_where_the_token_belongs(capsys, dirs):
    out = new(capsys, dirs, "seed-clusters", "seed-post.txt")[1]
    assert "CARTO_API_TOKEN" in out and "Secret Manager" in out


def test_a_token_in_the_url_is_warned_about_and_one_in_a_header_is_not(capsys, dirs):
    assert "warning: the token came in a URL (access_token=" in new(capsys, dirs, "get", "seed-get.txt")[2]
    assert "warning" not in new(capsys, dirs, "post", "seed-post.txt")[2]


# --- end to end -------------------------------------------------------------------------------

def test_paste_new_check_render_send_runs_on_the_local_stack(capsys, dirs, pubsub_emulator, tmp_path, monkeypatch):
    from gateway.local.devstack import LocalStack
    from gateway.local.sandbox import load_procedures
    from tests.stackutil import EventInbox

    out = new(capsys, dirs, "seed-clusters", "seed-post.txt")[1]
    secret = re.search(r"^  SEED_CLUSTERS_SECRET=(\S+)", out, re.MULTILINE)[1]
    assert gateway(capsys, dirs, "check")[0] == 0
    example = str(dirs[1] / "seed-clusters.json")
    assert typed(json.loads(gateway(capsys, dirs, "render", "seed-clusters", example)[1])["queryParameters"]) == \
        typed(SEED_PARAMETERS)
    # The stack starts after `new`, as `make dev` would: its local CARTO job API derives the procedure from the file.
    # Its own project on the shared emulator: other stacks' subscriptions of the same names push elsewhere.
    project = f"{PROJECT}-new-{uuid.uuid4().hex[:6]}"
    stack = LocalStack(state_dir=tmp_path / "stack", project=project, schemas_dir=dirs[0],
                       pubsub_host=pubsub_emulator.host, env={"SEED_CLUSTERS_SECRET": secret, "GATEWAY_POLL_FIRST_S": "0.2"})
    stack.start()
    try:
        inbox = EventInbox(project, stack.topics["events"], f"test-new-{uuid.uuid4().hex[:8]}")
        monkeypatch.setenv("SEED_CLUSTERS_SECRET", secret)

        status, sent, _ = gateway(capsys, dirs, "send", "seed-clusters", example, "--url", stack.url("webhook"))
        assert status == 0 and sent.startswith("HTTP 202")
        job_id = json.loads(sent.split("\n", 1)[1])["job_id"]
        event = inbox.wait_for(lambda e: e.attributes.get("job_id") == job_id)

        assert event.attributes["outcome"] == "SUCCEEDED" and event.attributes["workflow"] == "seed-clusters"
        assert typed(event.data["parameters"]) == typed(SEED_PARAMETERS)
        procedure = "carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f"
        assert load_procedures(dirs[0])[procedure].parameters == {
            "number_of_clusters": "INT64", "buffer_radius": "INT64", "store_type": "STRING"}
        logs = files_under(stack.log_dir)
    finally:
        stack.stop()
    assert logs and all(CARTO_TOKEN.encode() not in data for data in logs.values())


def test_a_get_curl_with_urlencoded_fields_is_read_like_the_get_url():
    paste = read_paste("curl -G 'https://gcp-us-east1.api.carto.com/v3/sql/carto_dw/job' "
                       f"--data-urlencode 'query={SEED_QUERY}' "
                       f"--data-urlencode 'queryParameters={json.dumps(SEED_PARAMETERS)}' "
                       f"--data-urlencode 'access_token={CARTO_TOKEN}'")
    assert (paste.query, paste.parameters, paste.connection) == (SEED_QUERY, SEED_PARAMETERS, "carto_dw")
    assert paste.token_in_url and CARTO_TOKEN not in repr(paste)


def test_windows_line_ends_read_like_unix_ones():
    raw = (PASTES / "seed-windows.txt").read_bytes().decode()  # bytes: no newline translation on the way in
    assert "\r\n" in raw
    assert read_paste(raw) == read_paste(raw.replace("\r\n", "\n"))
    assert read_paste(raw).parameters == GOOD_PASTES["seed-windows.txt"]


@pytest.mark.parametrize("name", ["nl\n", "seed-clusters\n", "Seed", "_x", "a" * 64])
def test_a_name_that_is_not_a_whole_workflow_name_is_refused_and_nothing_written(capsys, dirs, name):
    before = files_under(dirs[0].parent)

    status, _, err = new(capsys, dirs, name, "seed-post.txt")

    assert status == 1 and "cannot be a workflow name" in err
    assert files_under(dirs[0].parent) == before
