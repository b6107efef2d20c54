"""The local stack honours GATEWAY_SANDBOX_PROCEDURES, and `make dev` names the install command
where the emulator is missing."""

from __future__ import annotations

import json
import time
from argparse import Namespace

import pytest
import requests

from gateway.local import devstack, emulators
from gateway.local.devstack import DEV_TOKEN, LocalStack
from tests.constants import ROOT

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

SEED_PROCEDURE = "carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f"
SEED_QUERY = f"CALL `{SEED_PROCEDURE}`(@number_of_clusters,@buffer_radius,@store_type)"


def test_the_local_carto_api_takes_procedure_overrides_from_the_environment(tmp_path):
    overrides = tmp_path / "procedures.json"
    overrides.write_text(json.dumps({SEED_PROCEDURE: {"duration_s": 0, "error": "Query error: planted"}}))
    stack = LocalStack(state_dir=tmp_path / "state", schemas_dir=ROOT / "examples",
                       env={"GATEWAY_SANDBOX_PROCEDURES": str(overrides)})
    stack._start_sandbox()
    try:
        auth = {"Authorization": f"Bearer {DEV_TOKEN}"}
        params = {"number_of_clusters": 2, "buffer_radius": 1.0, "store_type": "x"}
        job = requests.post(f"{stack.sandbox.url}/v3/sql/carto_dw/job", headers=auth, timeout=5,
                            json={"query": SEED_QUERY, "queryParameters": params}).json()
        time.sleep(0.05)
        status = requests.get(f"{stack.sandbox.url}/v3/sql/carto_dw/job/{job['externalId']}", headers=auth,
                              timeout=5).json()["status"]
    finally:
        stack.stop()
    assert status["state"] == "DONE" and status["errorResult"]["message"] == "Query error: planted"


def _machine_without(monkeypatch, tmp_path, *, sdk_files=()):
    """PATH and the gcloud SDK roots as on a machine where only `sdk_files` exist (no gcloud, no java)."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("CLOUDSDK_ROOT_DIR", raising=False)
    monkeypatch.setattr(emulators, "_SDK_ROOTS", (str(tmp_path / "sdk"),))
    for relative in sdk_files:
        (tmp_path / "sdk" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sdk" / relative).write_text("#!/bin/sh\n")


def test_dev_without_the_emulator_stops_naming_the_install_command(monkeypatch, tmp_path, capsys):
    _machine_without(monkeypatch, tmp_path)

    code = devstack.run(Namespace(webhook_port=0, poll_port=0, sandbox_port=0, pubsub_port=0))

    err = capsys.readouterr().err
    assert code == 1 and "no pubsub emulator found" in err and "google-cloud-cli-pubsub-emulator" in err


def test_dev_with_the_emulator_but_no_java_says_so(monkeypatch, tmp_path, capsys):
    _machine_without(monkeypatch, tmp_path, sdk_files=["platform/pubsub-emulator/bin/cloud-pubsub-emulator"])

    code = devstack.run(Namespace(webhook_port=0, poll_port=0, sandbox_port=0, pubsub_port=0))

    err = capsys.readouterr().err
    assert code == 1 and "needs Java 17+" in err and "openjdk-17-jre-headless" in err
