"""Local secrets that stick: `new` writes a workflow's secret to the git-ignored `.env` beside the schemas
directory, `new --rotate-secret` replaces it without touching the workflow file, `make dev` and every CLI verb
read it (no `export`), and nothing deployed ever does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from gateway.cli import main
from gateway.local import emulators
from gateway.local.devstack import refusal_line
from tests.constants import ROOT

PASTE = ROOT / "tests" / "data" / "pastes" / "seed-post.txt"
VARIABLE = "SEED_CLUSTERS_SECRET"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's checkout: schemas/ with the meta-schema and no workflow, examples/, no secret in the environment."""
    (tmp_path / "schemas" / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / "schemas" / "workflow.schema.json", tmp_path / "schemas")
    for name in (VARIABLE, "GATEWAY_SCHEMAS_DIR", "CARTO_API_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def gateway(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def dotenv_value(path: Path) -> str:
    return re.search(rf"^{VARIABLE}='([^']+)'$", path.read_text(), re.MULTILINE)[1]


def test_new_writes_the_secret_to_dotenv_and_rotate_replaces_only_it(project, capsys):
    status, out = gateway(capsys, "new", "seed-clusters", "--from", str(PASTE))
    first = dotenv_value(project / ".env")
    workflow = (project / "schemas" / "workflows" / "seed-clusters.json").read_bytes()

    assert status == 0 and f"{VARIABLE}={first}" in out and str(project / ".env") in out
    assert oct((project / ".env").stat().st_mode & 0o777) == "0o600"

    status, out = gateway(capsys, "new", "seed-clusters", "--rotate-secret")
    second = dotenv_value(project / ".env")
    assert status == 0 and second != first and f"{VARIABLE}={second}" in out
    assert (project / "schemas" / "workflows" / "seed-clusters.json").read_bytes() == workflow

    status, out = gateway(capsys, "new", "seed-clusters", "--from", str(PASTE), "--force")
    assert status == 0 and "kept" in out and dotenv_value(project / ".env") == second  # senders keep working


def test_rotate_secret_of_a_workflow_that_does_not_exist_writes_nothing(project, capsys):
    status, out = gateway(capsys, "new", "nope", "--rotate-secret")
    assert status == 1 and "nope.json" in out and not (project / ".env").exists()


def test_a_verb_reads_dotenv_without_export_and_leaves_the_environment_as_it_was(project, capsys):
    gateway(capsys, "new", "seed-clusters", "--from", str(PASTE))
    status, out = gateway(capsys, "sign", "seed-clusters", "examples/seed-clusters.json")
    assert status == 0 and "webhook-signature: v1," in out
    assert VARIABLE not in os.environ


def test_an_exported_variable_wins_over_dotenv(project, capsys, monkeypatch):
    gateway(capsys, "new", "seed-clusters", "--from", str(PASTE))
    monkeypatch.setenv(VARIABLE, "whsec_" + "QUJD" * 8)
    signed = gateway(capsys, "sign", "seed-clusters", "examples/seed-clusters.json")[1]
    monkeypatch.delenv(VARIABLE)
    from_file = gateway(capsys, "sign", "seed-clusters", "examples/seed-clusters.json")[1]
    signature = re.compile(r"webhook-signature: (\S+)")
    assert signature.search(signed)[1] != signature.search(from_file)[1]


def test_dotenv_is_git_ignored_and_never_uploaded():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False).returncode == 0
    assert ".env" in (ROOT / ".gcloudignore").read_text().split()


def test_no_deployed_module_reads_dotenv():
    deployed = [ROOT / "main.py", *(p for p in (ROOT / "gateway").rglob("*.py")
                                    if p.relative_to(ROOT / "gateway").parts[0] not in ("cli", "local"))]
    readers = [str(p.relative_to(ROOT)) for p in deployed if re.search(r"dotenv|['\"]\.env['\"]", p.read_text())]
    assert readers == []


def test_a_refused_webhook_is_one_terminal_line_with_its_reason():
    line = json.dumps({"severity": "INFO", "message": "authentication refused: missing webhook-id header",
                       "event": "auth.refused", "route": "/hooks/seed-clusters", "workflow": "seed-clusters"})
    assert refusal_line(line) == "refused  /hooks/seed-clusters: authentication refused: missing webhook-id header"
    assert refusal_line(json.dumps({"event": "delivery.accepted"})) is None and refusal_line("not json") is None


# --- new → make dev → send, with no export ------------------------------------------------------------

def _dev(project: Path, env: dict[str, str]) -> tuple[subprocess.Popen, dict[str, int]]:
    ports = {name: emulators.free_port() for name in ("webhook", "poll", "submit", "console", "sandbox", "pubsub", "tasks")}
    argv = [sys.executable, "-m", "gateway", "dev", "--state-dir", str(project / ".state"),
            *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port)))]
    process = subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    return process, ports


def _shell(tmp: Path) -> dict[str, str]:
    """A fresh terminal's environment: no secret, no gateway settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "CARTO_", "PUBSUB_", "SEED_"))}
    return {**env, "PYTHONPATH": str(ROOT), "GOOGLE_CLOUD_PROJECT": f"localenv-{uuid.uuid4().hex[:6]}"}


@pytest.mark.stack
def test_new_then_dev_then_send_work_in_one_shell_and_in_two_without_export(project, capsys):
    try:
        emulators.find("pubsub")
        emulators.find("tasks")
    except emulators.EmulatorMissing as exc:
        pytest.skip(f"emulators unavailable: {exc}")
    assert gateway(capsys, "new", "seed-clusters", "--from", str(PASTE))[0] == 0
    shell_a = _shell(project)
    process, ports = _dev(project, shell_a)
    banner = ""
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything" not in banner and time.monotonic() < deadline and process.poll() is None:
            banner += process.stdout.readline()  # the whole banner: communicate() later reads past this buffer
        assert "Local stack is up" in banner, banner
        url = f"http://127.0.0.1:{ports['webhook']}"
        send = [sys.executable, "-m", "gateway", "send", "seed-clusters", "examples/seed-clusters.json", "--url", url]
        same_shell = subprocess.run(send, cwd=project, env=shell_a, capture_output=True, text=True, timeout=120)
        other_shell = subprocess.run(send, cwd=project, env=_shell(project), capture_output=True, text=True, timeout=120)
        unsigned = requests.post(f"{url}/hooks/seed-clusters", json={}, timeout=10)
        time.sleep(1.5)  # the refusal is echoed from the webhook's log
    finally:
        emulators.stop_process_group(process)
        rest = process.communicate(timeout=30)[0]

    assert same_shell.stdout.startswith("HTTP 202"), same_shell.stdout + same_shell.stderr
    assert other_shell.stdout.startswith("HTTP 202"), other_shell.stdout + other_shell.stderr
    assert unsigned.status_code == 401
    output = banner + rest
    assert "refused  /hooks/seed-clusters: authentication refused: missing webhook-id header" in output
    assert dotenv_value(project / ".env") not in output
    assert "carto.log" in output, output
    assert (project / ".state" / "carto.log").stat().st_size > 0
    assert "POST /v3/sql" not in output  # the local CARTO job API's request lines went to its log


@pytest.mark.stack
def test_dev_with_an_unset_secret_stops_before_saying_the_stack_is_up(project, capsys):
    try:
        emulators.find("pubsub")
        emulators.find("tasks")
    except emulators.EmulatorMissing as exc:
        pytest.skip(f"emulators unavailable: {exc}")
    assert gateway(capsys, "new", "seed-clusters", "--from", str(PASTE))[0] == 0
    (project / ".env").unlink()
    process, _ = _dev(project, _shell(project))
    try:
        output = process.communicate(timeout=120)[0]
    finally:
        emulators.stop_process_group(process)
    assert process.returncode == 1 and VARIABLE in output and "Local stack is up" not in output
