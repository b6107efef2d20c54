"""A problem's `type` leads somewhere: `/problems/{code}` on the webhook says what went wrong and what to
do, for every code the error tree can produce, through the real functions-framework app."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from urllib.parse import urljoin

import pytest

import gateway
from gateway.errors import GatewayError, problem_types
from gateway.local.sandbox import serve
from tests.apptools import build_app, function_client, settings_env
from tests.constants import CARTO_TOKEN, ROOT, SECRET
from tests.stackutil import signed_headers


def _every_error_class() -> list[type[GatewayError]]:
    """Every GatewayError subclass in the package, wherever it is defined (import all modules first)."""
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if not module.name.endswith(".__main__"):  # running a __main__ would start a command
            importlib.import_module(module.name)
    found, todo = [], [GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


EVERY_CODE = sorted({cls.code for cls in _every_error_class()})


@pytest.fixture(scope="module")
def client(test_schemas, tmp_path_factory):
    sandbox = serve(token=CARTO_TOKEN)
    yield function_client(build_app(settings_env(test_schemas, sandbox.url, tmp_path_factory.mktemp("problems"))))
    sandbox.stop()


@pytest.mark.parametrize("code", EVERY_CODE)
def test_every_code_has_a_page_saying_what_happened_and_what_to_do(client, code):
    cls = problem_types()[code]
    response = client.get(f"/problems/{code}")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    page = response.get_data(as_text=True)
    assert page.startswith(f"{code}: {cls.title} (HTTP {cls.status})")
    assert f"What happened: {cls.what_happened}" in page and f"What to do: {cls.what_to_do}" in page


def test_each_code_carries_its_own_explanation_and_no_two_classes_share_a_code():
    own = [cls for cls in _every_error_class() if "code" in cls.__dict__]

    assert [cls for cls in own if not (cls.__dict__.get("what_happened") and cls.__dict__.get("what_to_do"))] == []
    codes = [cls.code for cls in own]
    assert len(codes) == len(set(codes)), codes


def test_the_index_lists_every_code_with_where_its_page_is(client):
    response = client.get("/problems")

    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    listed = {line.split()[0] for line in response.get_data(as_text=True).splitlines() if line.startswith("/problems/")}
    assert listed == {f"/problems/{code}" for code in EVERY_CODE}


def test_the_error_module_alone_knows_every_code():
    """/problems does not depend on which modules happen to be imported: gateway.errors alone lists every code."""
    script = "import json; from gateway.errors import problem_types; print(json.dumps(sorted(problem_types())))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert json.loads(out) == EVERY_CODE


@pytest.mark.parametrize(("method", "path", "signed", "code"), [
    ("POST", "/hooks/store-clusters", False, "bad-signature"),
    ("POST", "/hooks/store-clusters", True, "malformed-json"),
    ("POST", "/hooks/no-such-workflow", False, "not-found"),
    ("PUT", "/jobs/some-job", False, "method-not-allowed"),
])
def test_following_a_problems_type_leads_to_its_explanation(client, method, path, signed, code):
    url, body = "http://gateway.test" + path, b"{not json"
    headers = signed_headers(SECRET, body) if signed else {"Content-Type": "application/json"}  # signed now: fresh
    problem = client.open(url, method=method, data=body, headers=headers).get_json(force=True)

    assert problem["code"] == code and problem["type"] == f"/problems/{code}"
    page = client.get(urljoin(url, problem["type"]))
    assert page.status_code == 200 and page.get_data(as_text=True).startswith(f"{code}: ")


@pytest.mark.parametrize("path", ["/problems/no-such-code", "/problems/Not_A_Code", "/problems/a/b"])
def test_an_unknown_code_is_a_404_problem(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.get_json(force=True)["type"] == "/problems/not-found"


def test_problem_pages_are_read_only(client):
    response = client.post("/problems/not-found", data=b"{}", headers={"Content-Type": "application/json"})

    assert response.status_code == 405 and response.headers["Allow"] == "GET"
