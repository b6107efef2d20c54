"""Shared fixtures: the real Pub/Sub, Firestore and Cloud Tasks emulators (started here, skipped with a
reason where the machine has none), a schemas directory with the test-only workflows, signing helpers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from gateway.local import emulators
from gateway.local.demos import write_demo_schemas
from gateway.local.sandbox import serve
from tests.apptools import FakeClock
from tests.constants import DATA, PROJECT, ROOT, TASKS_QUEUE
from tests.stackutil import emulator_unavailable

# In CI the property tests draw the same examples every run, so a red CI is a real finding that a
# re-run reproduces; on a developer's machine they keep exploring (and remember what failed).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")



EMULATOR_FIXTURES = frozenset({"pubsub_emulator", "firestore_emulator", "tasks_emulator"})


def pytest_collection_modifyitems(items):
    """A test that needs an emulator, itself or through another fixture, is a `stack` test (`make test-fast`
    leaves them out); modules that start the local stack or other processes say so with `pytestmark`."""
    for item in items:
        if EMULATOR_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    """The real Pub/Sub emulator on a free loopback port; PUBSUB_EMULATOR_HOST points at it."""
    try:
        emulator = emulators.Emulator.start("pubsub", project=PROJECT, log_dir=tmp_path_factory.mktemp("pubsub"))
    except (emulators.EmulatorMissing, RuntimeError, TimeoutError) as exc:
        emulator_unavailable("Pub/Sub", exc)
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
    except (emulators.EmulatorMissing, RuntimeError, TimeoutError) as exc:
        emulator_unavailable("Firestore", exc)
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
        emulator_unavailable("Cloud Tasks", exc)
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
    from tests.rigs import running_rig

    with running_rig(test_schemas, tmp_path) as built:
        yield built


@pytest.fixture
def clock() -> FakeClock:
    """The test's clock: time that moves only when slept on or advanced."""
    return FakeClock()


@pytest.fixture
def make_sandbox(clock):
    """Starts a local CARTO job API (`gateway.local.sandbox.serve(**options)`) that stops when the test ends;
    `on_clock=True` runs its jobs on the test's `clock`."""
    servers = []

    def make(*, on_clock: bool = False, **options):
        server = serve(**options, **({"clock": clock.now} if on_clock else {}))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sandbox(request, make_sandbox):
    """The test's local CARTO job API, with the options of its nearest `@pytest.mark.sandbox(...)` (the test's,
    else its module's `pytestmark`): those of `make_sandbox`."""
    marker = request.node.get_closest_marker("sandbox")
    return make_sandbox(**(marker.kwargs if marker else {}))
