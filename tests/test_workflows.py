"""Workflow definitions: every demo of examples/workflows/ loads and lints clean; a bad file stops the instance
with a message naming file, JSON path and problem."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from gateway.cli.check import lint
from gateway.cli.new import secret_env_name
from gateway.errors import ConfigError
from gateway.local.demos import DEMO_SCHEMAS_DIR, local_schemas_dir
from gateway.settings import Settings
from gateway.warehouses import scan
from gateway.workflows import load_registry, query_parameter_names
from tests.constants import ROOT, SECRET, demo_workflow_files

SEED = json.loads((ROOT / "examples" / "workflows" / "store-clusters.json").read_text())


def env_for_every_secret() -> dict[str, str]:
    """A value for every env:NAME a product workflow references."""
    names = set()
    for path in demo_workflow_files():
        auth = json.loads(path.read_text())["auth"]
        for scheme in auth if isinstance(auth, list) else []:
            for key in ("secrets", "tokens"):
                if key in scheme:
                    names.add(scheme[key][4:])
    return {name: SECRET for name in names}


@pytest.mark.parametrize("path", demo_workflow_files(), ids=lambda p: p.stem)
def test_every_workflow_file_loads_and_lints_clean(path):
    registry = load_registry(DEMO_SCHEMAS_DIR, env_for_every_secret())

    workflow = registry.get(path.stem)

    assert workflow is not None and workflow.schemes
    if workflow.positional:
        positions = sorted(spec.position for spec in workflow.parameters.values())
        assert positions == sorted(scan(workflow.query).positions) == list(range(1, len(positions) + 1))
    else:
        assert set(workflow.parameters) == set(query_parameter_names(workflow.query))
    assert [p for p in lint(registry) if p.startswith(f"{path.stem}:")] == []


def test_a_fresh_clone_holds_no_workflow_of_its_own():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: what a clone holds is what git tracks")
    tracked = subprocess.run(["git", "ls-files", "schemas/workflows"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked == ["schemas/workflows/README.md"]
    assert load_registry(ROOT / "schemas", {}).workflows == {}  # the README there is not a workflow file


def test_a_folder_with_a_readme_and_one_workflow_loads_that_one(schemas):
    (schemas / "workflows" / "notes.txt").write_text("not JSON")
    write(schemas, "flow", SEED)
    assert (schemas / "workflows" / "README.md").exists()
    assert list(load_registry(schemas, {"STORE_CLUSTERS_SECRET": SECRET}).workflows) == ["flow"]


@pytest.mark.parametrize("path", demo_workflow_files(), ids=lambda p: p.stem)
def test_each_demo_names_its_secret_as_new_would(path):
    assert re.findall(r"env:([A-Z0-9_]+)", path.read_text()) == [secret_env_name(path.stem)]


def test_the_local_stack_runs_the_demos_only_when_schemas_holds_none(schemas):
    assert local_schemas_dir(schemas) == DEMO_SCHEMAS_DIR
    write(schemas, "flow", SEED)
    assert local_schemas_dir(schemas) == schemas
    assert local_schemas_dir(schemas, demos=True) == DEMO_SCHEMAS_DIR


def write(schemas, name, definition):
    (schemas / "workflows" / f"{name}.json").write_text(json.dumps(definition))


def load_error(schemas, env=None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_registry(schemas, env if env is not None else {"STORE_CLUSTERS_SECRET": SECRET})
    return str(raised.value)


def test_a_meta_schema_violation_names_file_path_and_problem(schemas):
    write(schemas, "bad", {**SEED, "parameters": {**SEED["parameters"], "store_type": {"type": "VARCHAR", "from": "/s"}}})
    message = load_error(schemas)
    assert "bad.json" in message and "$.parameters.store_type.type" in message


def test_a_query_name_without_a_parameter_is_refused(schemas):
    write(schemas, "bad", {**SEED, "parameters": {k: v for k, v in SEED["parameters"].items() if k != "store_type"}})
    assert "@store_type has no entry in parameters" in load_error(schemas)


def test_a_parameter_the_query_does_not_use_is_refused(schemas):
    write(schemas, "bad", {**SEED, "parameters": {**SEED["parameters"], "extra": {"type": "STRING", "value": "x"}}})
    assert "$.parameters.extra: not used as @extra in the query" in load_error(schemas)


def test_a_default_that_does_not_bind_is_refused(schemas):
    parameters = {**SEED["parameters"], "number_of_clusters": {"type": "INT64", "from": "/clusters", "default": 2.5}}
    write(schemas, "bad", {**SEED, "parameters": parameters})
    assert "number_of_clusters" in load_error(schemas)


def test_a_workflow_without_auth_is_refused_unless_it_says_none(schemas):
    write(schemas, "open", {k: v for k, v in SEED.items() if k != "auth"})
    assert "auth" in load_error(schemas)
    write(schemas, "open", {**SEED, "auth": "none"})
    assert load_registry(schemas, {}).get("open").schemes


def test_a_missing_secret_variable_is_named_without_any_value(schemas):
    write(schemas, "flow", SEED)
    message = load_error(schemas, env={})
    assert "STORE_CLUSTERS_SECRET" in message


def test_an_invalid_payload_schema_is_refused(schemas):
    write(schemas, "bad", {**SEED, "payload": {"type": "no-such-type"}})
    assert "$.payload" in load_error(schemas)


def test_the_file_name_must_be_a_url_segment(schemas):
    write(schemas, "Bad_Name", SEED)
    assert "URL segment" in load_error(schemas)


def test_every_bad_file_is_reported_together(schemas):
    write(schemas, "one", {**SEED, "connection": ""})
    write(schemas, "two", {**SEED, "query": "SELECT 1"})
    message = load_error(schemas)
    assert "one.json" in message and "two.json" in message


def test_query_names_skip_literals_identifiers_and_comments():
    query = "CALL `p.d.x@y`(@a, '@b', \"@c\", @a /* @d */, @e) -- @f\n"
    assert query_parameter_names(query) == ["a", "e"]


def test_a_pointer_absent_from_the_payload_schema_is_a_lint_problem(schemas):
    parameters = {**SEED["parameters"], "store_type": {"type": "STRING", "from": "/store/kind"}}
    write(schemas, "typo", {**SEED, "parameters": parameters})
    problems = lint(load_registry(schemas, {"STORE_CLUSTERS_SECRET": SECRET}))
    assert problems == ["typo: parameters.store_type: pointer /store/kind is not declared in the payload schema"]


def test_settings_report_every_problem_together_and_hide_secrets():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"GATEWAY_MAX_BODY_BYTES": "big", "GATEWAY_LEDGER": "mysql://x", "CARTO_CLIENT_ID": "id"})
    message = str(raised.value)
    assert "GATEWAY_MAX_BODY_BYTES" in message and "GATEWAY_LEDGER" in message and "CARTO_CLIENT_SECRET" in message
    settings = Settings.from_env({"CARTO_API_TOKEN": "tok-SENTINEL"})
    assert "tok-SENTINEL" not in repr(settings)


@pytest.mark.parametrize(("admission", "field", "problem"), [
    ({"max_concurrent_jobs": 2.5}, "$.admission.max_concurrent_jobs", "integer"),
    ({"max_concurrent_jobs": "2"}, "$.admission.max_concurrent_jobs", "integer"),
    ({"max_concurrent_jobs": True}, "$.admission.max_concurrent_jobs", "integer"),
    ({"max_concurrent_jobs": 0}, "$.admission.max_concurrent_jobs", "minimum of 1"),
    ({"max_concurrent_jobs": -3}, "$.admission.max_concurrent_jobs", "minimum of 1"),
    ({"max_concurrent_jobs": 1, "when_busy": "drop"}, "$.admission.when_busy", "queue"),
    ({"when_busy": "queue"}, "$.admission", "max_concurrent_jobs"),
    ({"max_concurrent_jobs": 1, "wait": True}, "$.admission", "wait"),
], ids=["fraction", "string", "boolean", "zero", "negative", "unknown-when-busy", "when-busy-without-cap",
        "unknown-field"])
def test_a_bad_admission_block_names_the_file_and_the_field(schemas, admission, field, problem):
    write(schemas, "capped", {**SEED, "admission": admission})
    message = load_error(schemas)
    line = next(line for line in message.splitlines() if "capped.json" in line)
    assert f"{field}:" in line and problem in line


def test_an_admission_block_loads_with_queue_as_the_default(schemas):
    write(schemas, "capped", {**SEED, "admission": {"max_concurrent_jobs": 2}})
    write(schemas, "refusing", {**SEED, "admission": {"max_concurrent_jobs": 1, "when_busy": "refuse"}})
    registry = load_registry(schemas, {"STORE_CLUSTERS_SECRET": SECRET})
    capped, refusing = registry.get("capped"), registry.get("refusing")
    assert (capped.max_concurrent_jobs, capped.when_busy, capped.admitted) == (2, "queue", True)
    assert (refusing.max_concurrent_jobs, refusing.when_busy) == (1, "refuse")
    assert registry.get("store-clusters") is None or not registry.get("store-clusters").admitted
