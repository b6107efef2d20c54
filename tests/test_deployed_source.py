"""What `gcloud functions deploy --source=.` uploads is enough to run: main.py imports and answers
from the uploaded files alone, without the local stack that .gcloudignore leaves out."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.constants import DEMO_SECRETS, ROOT, demo_workflow_files
from tests.deploytools import argcheck

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

LEFT_OUT = ("gateway/local/", "gateway/cli/", "tests/", "bench/", "deploy/", "client/", "examples/")


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory):
    """A copy of exactly the files gcloud would upload from this repository."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud is not installed: cannot compute the upload list")
    config = tmp_path_factory.mktemp("gcloud-config")
    listed = subprocess.run([gcloud, "meta", "list-files-for-upload", str(ROOT)], env=argcheck.offline_env(str(config)),
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=True)
    target = tmp_path_factory.mktemp("upload")
    for name in listed.stdout.split():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    return target, set(listed.stdout.split())


def test_the_upload_leaves_out_the_local_stack_tests_and_tools(uploaded):
    _, files = uploaded
    assert {"main.py", "requirements.txt", "schemas/workflow.schema.json", "gateway/intake.py"} <= files
    assert not [f for f in files if f.startswith(LEFT_OUT) or f.endswith(".md")]


def test_the_uploaded_source_serves_a_webhook_on_its_own(uploaded, tmp_path):
    source, _ = uploaded
    (source / "schemas" / "workflows").mkdir(exist_ok=True)
    for path in demo_workflow_files():  # as if the user had written them in schemas/workflows/
        shutil.copy(path, source / "schemas" / "workflows" / path.name)
    script = textwrap.dedent("""
        import json, sys, functions_framework
        app = functions_framework.create_app(target="webhook", source="main.py")
        health = app.test_client().get("/healthz")
        answer = app.test_client().get("/openapi.json", headers={"Authorization": "Bearer op-token-1"})
        import gateway
        print(json.dumps({"health": health.status_code, "status": answer.status_code,
                          "hooks": sorted(p for p in answer.get_json()["paths"] if p.startswith("/hooks/")),
                          "package": gateway.__file__,
                          "local_stack": sorted(m for m in sys.modules
                                                if m.startswith(("gateway.local", "gateway.cli", "workflow_gateway_client")))}))
    """)
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_SCHEMAS_DIR": "schemas", "CARTO_API_BASE_URL": "http://127.0.0.1:9",
           "CARTO_API_TOKEN": "t", **DEMO_SECRETS, "GOOGLE_CLOUD_PROJECT": "p",
           "GATEWAY_LEDGER": f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
           "GATEWAY_OPERATOR_TOKENS": "op-token-1"}
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=source, env=env, capture_output=True, text=True,
                          timeout=120, check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result["health"] == 200 and result["status"] == 200
    assert result["hooks"] == sorted(hook for path in demo_workflow_files()
                                     for hook in (f"/hooks/{path.stem}", f"/hooks/{path.stem}/validate"))
    assert result["local_stack"] == []
    assert result["package"].startswith(str(source))  # imported from the upload, not the repository


def test_the_uploaded_source_serves_the_console_with_its_templates_and_stylesheet(uploaded, tmp_path):
    source, files = uploaded
    assert {"gateway/console/templates/list.html", "gateway/console/static/console.css"} <= files
    script = textwrap.dedent("""
        import json, functions_framework
        client = functions_framework.create_app(target="console", source="main.py").test_client()
        page, css = client.get("/"), client.get("/assets/console.css")
        print(json.dumps({"page": page.status_code, "table": '<table id="deliveries">' in page.get_data(as_text=True),
                          "css": css.status_code}))
    """)
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_SCHEMAS_DIR": "schemas", "CARTO_API_BASE_URL": "http://127.0.0.1:9",
           "CARTO_API_TOKEN": "t", "GOOGLE_CLOUD_PROJECT": "p", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
           "GATEWAY_LEDGER": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"}
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=source, env=env, capture_output=True, text=True,
                          timeout=120, check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    assert __import__("json").loads(done.stdout.strip().splitlines()[-1]) == {"page": 200, "table": True, "css": 200}
