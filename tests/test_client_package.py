"""client/ is a distribution of its own: it builds and installs in a fresh virtualenv with only its
declared dependencies (from the package index), imports there, and works without the gateway."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from tests.clienttools import install_client

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

CHECK = textwrap.dedent("""
    import importlib.util, json, sys

    def absent(name):
        try:
            return importlib.util.find_spec(name) is None
        except ModuleNotFoundError:  # its parent package is missing
            return True

    import workflow_gateway_client as client
    from importlib.metadata import requires
    attributes = {"ce-id": "job-1:SUCCEEDED", "ce-type": "com.carto.workflows.job.succeeded", "job_id": "job-1"}
    data = {"job_id": "job-1", "workflow": "w", "outcome": "SUCCEEDED", "state": "DONE", "error": None,
            "delivery_id": None, "submitted_at": "2026-12-01T10:00:00.000Z", "finished_at": "2026-12-01T10:00:01.500Z",
            "duration_s": 1.5, "checks": 1, "parameters": {}, "queued_s": 0}
    event = client.parse_event((attributes, json.dumps(data).encode()))
    print(json.dumps({
        "file": client.__file__,
        "requires": sorted(requires("workflow-gateway-client")),
        "absent": {name: absent(name) for name in ("functions_framework", "gateway", "flask", "google.cloud.pubsub_v1")},
        "event": [event.ce_id, event.duration_s],
        "error": client.GatewayError("x", status=503, code="unavailable").retryable,
        "loaded": sorted(m for m in ("requests", "google.auth", "urllib3") if m in sys.modules),
    }))
""")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """An empty virtualenv with only the client installed in it (tests/clienttools.py)."""
    where = tmp_path_factory.mktemp("client-venv")
    try:
        return install_client(where), where
    except OSError as exc:
        pytest.skip(f"cannot create a virtualenv here: {exc}")


def test_the_client_installs_alone_and_imports_without_the_gateway(fresh_venv):
    python, where = fresh_venv

    done = subprocess.run([str(python), "-I", "-c", CHECK], cwd=where, capture_output=True, text=True, timeout=120,
                          check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(where / "venv"))  # the installed copy, not the repository's
    assert [r.split(";")[0].split(">")[0].split("<")[0] for r in result["requires"] if "extra" not in r] == [
        "google-auth", "requests"]
    assert result["absent"] == {"functions_framework": True, "gateway": True, "flask": True,
                                "google.cloud.pubsub_v1": True}
    assert result["event"] == ["job-1:SUCCEEDED", 1.5] and result["error"] is True
    assert result["loaded"] == []  # a subscriber that only parses events never imports the HTTP stack


def test_publish_request_without_the_pubsub_extra_says_how_to_get_it(fresh_venv):
    python, where = fresh_venv
    script = ("import workflow_gateway_client as c\n"
              "try:\n    c.publish_request('p', 'w', {})\nexcept ImportError as e:\n    print(e)\n")

    done = subprocess.run([str(python), "-I", "-c", script], cwd=where, capture_output=True, text=True, timeout=60,
                          check=False)

    assert "workflow-gateway-client[pubsub]" in done.stdout, done.stderr[-2000:]
