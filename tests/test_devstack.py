"""The local stack honours GATEWAY_SANDBOX_PROCEDURES, and `make dev` names the install command
where the emulator is missing."""

from __future__ import annotations

import json
import time
from argparse import Namespace

import requests

from gateway.local import devstack, emulators
from gateway.local.devstack import DEV_TOKEN, LocalStack
from tests.conftest import ROOT

SEED_PROCEDURE = "carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f"
SEED_QUERY = f"CALL `{SEED_PROCEDURE}`(@number_of_clusters,@buffer_radius,@store_type)"


def test_the_local_carto_api_takes_procedure_overrides_from_the_environment(tmp_path):
    overrides = tmp_path / "procedures.json"
    overrides.write_text(json.dumps({SEED_PROCEDURE: {"duration_s": 0, "error": "Query error: planted"}}))
    stack = LocalStack(state_dir=tmp_path / "state", schemas_dir=ROOT / "schemas",
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


def test_dev_without_the_emulator_stops_naming_the_install_command(monkeypatch, capsys):
    def missing(kind):
        raise emulators.EmulatorMissing(f"no {kind} emulator found; {emulators.INSTALL_HINT}")

    monkeypatch.setattr(emulators, "find", missing)

    code = devstack.run(Namespace(webhook_port=0, poll_port=0, sandbox_port=0, pubsub_port=0))

    assert code == 1 and "google-cloud-cli-pubsub-emulator" in capsys.readouterr().err
