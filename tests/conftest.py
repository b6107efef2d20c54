"""Shared fixtures: the real Pub/Sub, Firestore and Cloud Tasks emulators (started here, skipped with a
reason where the machine has none), a schemas directory with the test-only workflows, signing helpers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from gateway.local import demos, emulators
from gateway.local.demos import DEMO_SCHEMAS_DIR, workflow_files, write_demo_schemas

# In CI the property tests draw the same examples every run, so a red CI is a real finding that a
# re-run reproduces; on a developer's machine they keep exploring (and remember what failed).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CARTO_TOKEN = "carto-token-SENTINEL-7f3a9c"  # searched for in every answer, log and message
OPERATOR_TOKEN = "operator-token-SENTINEL-2b8e41"  # GATEWAY_OPERATOR_TOKENS of test instances; searched for too
# The demos' webhook secret variables, all set to SECRET (one variable per workflow, as `new` names them).
DEMO_SECRETS = dict.fromkeys(demos.DEMO_SECRETS, SECRET)
PROJECT = "test-project"
TASKS_QUEUE = f"projects/{PROJECT}/locations/local/queues/poll-checks"  # LocalStack's queue for PROJECT


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    """The real Pub/Sub emulator on a free loopback port; PUBSUB_EMULATOR_HOST points at it."""
    try:
        emulator = emulators.Emulator.start("pubsub", project=PROJECT, log_dir=tmp_path_factory.mktemp("pubsub"))
    except emulators.EmulatorMissing as exc:
        pytest.skip(f"Pub/Sub emulator unavailable: {exc}")
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    yield emulator
    emulator.stop()
    if previous is None:
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    else:
        os.environ["PUBSUB_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory):
    """The real Firestore emulator on a free loopback port; FIRESTORE_EMULATOR_HOST points at it."""
    try:
        emulator = emulators.Emulator.start("firestore", log_dir=tmp_path_factory.mktemp("firestore"))
    except emulators.EmulatorMissing as exc:
        pytest.skip(f"Firestore emulator unavailable: {exc}")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    yield emulator
    emulator.stop()
    os.environ.pop("FIRESTORE_EMULATOR_HOST", None)


@pytest.fixture(scope="session")
def tasks_emulator(tmp_path_factory):
    """The Cloud Tasks emulator (gcloud-tasks-emulator) on a free port, with LocalStack's queue for PROJECT."""
    try:
        emulator = emulators.Emulator.start("tasks", log_dir=tmp_path_factory.mktemp("tasks"), queues=(TASKS_QUEUE,))
    except (emulators.EmulatorMissing, RuntimeError, TimeoutError) as exc:
        pytest.skip(f"Cloud Tasks emulator unavailable: {exc}")
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def test_schemas(tmp_path_factory) -> Path:
    """schemas/ with the demo workflows of examples/workflows/ and the test-only ones of tests/data/workflows/."""
    target = write_demo_schemas(tmp_path_factory.mktemp("schemas") / "schemas")
    for path in (DATA / "workflows").glob("*.json"):
        shutil.copy(path, target / "workflows" / path.name)
    return target


@pytest.fixture
def schemas(tmp_path) -> Path:
    """A schemas directory with the meta-schema and the event schema, and no workflow: each test writes its own."""
    target = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", target)
    for path in (target / "workflows").glob("*.json"):
        path.unlink()
    return target


@pytest.fixture
def rig(test_schemas, tmp_path):
    """One gateway instance against a fresh local CARTO job API on a fake clock (tests/rigs.py)."""
    from tests.rigs import running_rig  # rigs imports this module's constants

    with running_rig(test_schemas, tmp_path) as built:
        yield built


def demo_workflow_files() -> list[Path]:
    """The demo workflows (examples/workflows/): every test that runs over "each workflow" runs over these."""
    return workflow_files(DEMO_SCHEMAS_DIR)


def load_json(path: Path):
    return json.loads(path.read_text())
