"""deploy/deploy-subscriber.sh: what it would run (a private HTTP function, its invoker, a filtered
push subscription) and that gcloud's own parser accepts every command. (The Pub/Sub emulator
ignores subscription filters, so whether Pub/Sub applies this one is not shown here.)"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploytools import argcheck

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "deploy-subscriber.sh"
TRIGGER_SA = "gateway-trigger@my-gcp-project.iam.gserviceaccount.com"  # deploy.sh's push identity (env.example)


def dry_run(*args: str) -> tuple[list[tuple[str, ...]], str]:
    done = subprocess.run(["bash", str(SCRIPT), "--env", str(REPO / "deploy" / "env.example"), "--dry-run", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr
    return argcheck.commands_from_script(done.stdout), done.stdout


def flags(argv: tuple[str, ...]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)


def staged_dir(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("# source staged in "))
    return Path(line.removeprefix("# source staged in ").split(" (")[0])


@pytest.fixture(scope="module")
def deployed():
    commands, output = dry_run("--workflow", "store-clusters", "--workflow", "slow-report", "--outcome", "FAILED")
    staged = staged_dir(output)
    yield commands, staged
    shutil.rmtree(staged, ignore_errors=True)


FILTER = '(attributes.workflow = "store-clusters" OR attributes.workflow = "slow-report") AND attributes.outcome = "FAILED"'


def test_the_subscription_pushes_filtered_events_with_the_trigger_identitys_token(deployed):
    commands, _ = deployed
    create = next(argv for argv in commands if argv[1:4] == ("pubsub", "subscriptions", "create"))

    assert create[4] == "gateway-subscriber-push"
    assert flags(create).items() >= {"topic": "workflow-job-events", "message-filter": FILTER,
                                 "push-endpoint": "https://gateway-subscriber-dry-run.a.run.app",
                                 "push-auth-service-account": TRIGGER_SA}.items()


def test_the_function_is_private_and_only_the_trigger_identity_may_invoke_it(deployed):
    commands, staged = deployed
    deploy = next(argv for argv in commands if argv[1:3] == ("functions", "deploy"))
    invoker = next(argv for argv in commands if argv[1:3] == ("functions", "add-invoker-policy-binding"))

    assert "--trigger-http" in deploy and "--no-allow-unauthenticated" in deploy
    assert flags(deploy)["entry-point"] == "on_job_event" and flags(deploy)["source"] == str(staged)
    assert flags(invoker)["member"] == f"serviceAccount:{TRIGGER_SA}"


def test_the_source_carries_the_client_from_the_checkout(deployed):
    _, staged = deployed

    assert (staged / "main.py").read_text() == (REPO / "examples" / "subscriber" / "main.py").read_text()
    requirements = (staged / "requirements.txt").read_text().splitlines()
    assert "./client" in requirements and not any("git+" in line for line in requirements)
    assert (staged / "client" / "pyproject.toml").is_file()
    assert (staged / "client" / "src" / "workflow_gateway_client" / "_events.py").is_file()


def test_without_filters_every_event_is_pushed():
    commands, output = dry_run()
    shutil.rmtree(staged_dir(output), ignore_errors=True)
    create = next(argv for argv in commands if argv[1:4] == ("pubsub", "subscriptions", "create"))

    assert "message-filter" not in flags(create)


@pytest.mark.parametrize("args, message", [(("--outcome", "DONE"), "--outcome must be one of"),
                                           (("--workflow", 'x" OR "1'), "not a workflow name")])
def test_bad_filters_are_refused_before_any_command(args, message):
    done = subprocess.run(["bash", str(SCRIPT), "--env", str(REPO / "deploy" / "env.example"), "--dry-run", *args],
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode != 0 and message in done.stderr and "gcloud" not in done.stdout


def test_delete_removes_the_subscription_and_the_function():
    commands, _ = dry_run("--name", "crm-failures", "--delete")

    assert [argv[1:5] for argv in commands] == [("pubsub", "subscriptions", "delete", "crm-failures-push"),
                                               ("functions", "delete", "crm-failures", "--gen2")]


def test_every_command_parses_with_the_real_gcloud(deployed):
    sdk = argcheck.find_sdk()
    if sdk is None:
        pytest.skip("gcloud CLI not found on PATH: cannot parse-check the subscriber's deploy commands")
    commands = deployed[0] + dry_run("--name", "crm-failures", "--delete")[0]

    verdicts = argcheck.check(commands, sdk)

    assert [f"{v.outcome}: {v.detail}\n  {shlex.join(v.argv)}" for v in verdicts if not v.ok] == []
