"""`python -m gateway`: each verb's help says what its arguments are, and `sign --curl` prints a command that,
run as printed, is accepted by the real webhook function on loopback."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest

from gateway.cli import main
from tests.apptools import build_app, function_client, settings_env
from tests.constants import ROOT
from tests.rigs import served

WORKFLOW = "the workflow's name: schemas/workflows/WORKFLOW.json, posted to at /hooks/WORKFLOW"
URL = "the webhook function's base URL; the body goes to URL/hooks/WORKFLOW"


def help_of(capsys, verb: str) -> str:
    """`python -m gateway VERB --help`, its lines joined as one (argparse wraps to the terminal's width)."""
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("verb", "sentences"), [
    ("render", [f"workflow {WORKFLOW}", "file a JSON payload, as a sender would POST it", "Nothing is sent."]),
    ("sign", [f"workflow {WORKFLOW}", "file the JSON payload to sign; what is sent must be these bytes unchanged",
              "--curl print a curl command (POSIX shell) that POSTs FILE with the headers to --url instead",
              f"--url URL {URL}"]),
    ("send", [f"workflow {WORKFLOW}", "file the JSON payload to sign and POST", f"--url URL {URL}"]),
    ("events", ["--workflow WORKFLOW only the events of this workflow", "only the events with this outcome"]),
    ("openapi", ["Print the OpenAPI 3.1 document of the webhook as JSON: one POST /hooks/WORKFLOW per workflow"]),
    ("dev", [f"--{name}-port {name.upper()}_PORT" for name in ("webhook", "poll", "submit", "console", "sandbox",
                                                               "pubsub", "tasks")]
     + [f"(default: {port})" for port in (8080, 8081, 8082, 8083, 8090, 8085, 8123)]),
])
def test_each_verbs_help_says_what_its_arguments_are(capsys, verb, sentences):
    text = help_of(capsys, verb)
    for sentence in sentences:
        assert sentence in text


@pytest.fixture
def webhook(test_schemas, sandbox, tmp_path, monkeypatch):
    """The real webhook function on a loopback port (wall clock: the CLI signs with it), the CLI's
    environment set as the gateway's (the same secrets)."""
    env = settings_env(test_schemas, sandbox.url, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with served(function_client(build_app(env)).application) as url:
        yield url


def test_sign_curl_prints_a_command_that_the_webhook_accepts_when_run(capsys, webhook, sandbox, test_schemas,
                                                                     monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # FILE given relative to here; the command is run from another directory

    status = main(["--schemas", str(test_schemas), "sign", "store-clusters", "examples/store-clusters.json", "--curl",
                   "--url", webhook])
    printed = capsys.readouterr()
    command = printed.out.strip()
    done = subprocess.run([*shlex.split(command), "-w", "\n%{http_code}"], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)

    assert status == 0 and command.startswith("curl ") and "\n" not in command and printed.err == ""
    assert f"@{ROOT / 'examples' / 'store-clusters.json'}" in shlex.split(command)
    answer, code = done.stdout.rsplit("\n", 1)
    assert code == "202", done.stdout + done.stderr
    assert json.loads(answer)["job_id"] == sandbox.jobs()[0].external_id


def test_sign_curl_for_a_static_token_warns_that_the_command_holds_the_secret(capsys, schemas, monkeypatch):
    shutil.copy(ROOT / "tests" / "data" / "workflows" / "auth" / "auth-bearer.json", schemas / "workflows")
    monkeypatch.setenv("AUTH_BEARER_TOKENS", "static-token-SENTINEL")

    status = main(["--schemas", str(schemas), "sign", "auth-bearer", str(ROOT / "examples" / "store-clusters.json"),
                   "--curl", "--url", "http://127.0.0.1:9"])
    printed = capsys.readouterr()

    assert status == 0 and "Authorization: Bearer static-token-SENTINEL" in shlex.split(printed.out)
    (warning,) = printed.err.splitlines()
    assert warning.startswith("warning: the bearer scheme's header is the shared secret itself")
    assert "shell history" in warning and "SENTINEL" not in warning
