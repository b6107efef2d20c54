"""deploy/: what the scripts would run, that re-runs are idempotent, and that gcloud parses it.

The dry runs use deploy/env.example as shipped, with workflow files from a temporary source
tree (SOURCE_DIR) so the secrets they name are known. Real-mode runs use a recording fake
`gcloud` on PATH. The parse checks run every printed command through the installed gcloud
CLI with a throw-away config directory and no credentials (deploy/gcloud_argcheck.py).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.constants import DEMO_SECRETS, demo_workflow_files
from tests.deploytools import argcheck

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ENV_EXAMPLE = DEPLOY / "env.example"
PROJECT = "my-gcp-project"  # as in env.example
FUNCTIONS = ("webhook", "poll", "submit", "sweep", "console")
TASK_SCHEDULERS = ("webhook", "poll", "submit", "sweep")  # status checks, and hand-offs of queued deliveries



WORKFLOWS = {
    "store-clusters": {
        "auth": [
            {"scheme": "standard-webhooks", "secrets": "env:STORE_CLUSTERS_SECRET"}
        ],
    },
    "partner-orders": {
        "auth": [
            {"scheme": "bearer", "tokens": "env:PARTNER_TOKENS"},
            {"scheme": "google-id-token", "audience": "https://example.test"},
        ],
        "carto": {"token": "env:PARTNER_CARTO_TOKEN"},
    },
}
# Only webhook reads these: the senders' secrets and the operator tokens of /jobs and /openapi.json.
AUTH_SECRETS = {"STORE_CLUSTERS_SECRET", "PARTNER_TOKENS", "GATEWAY_OPERATOR_TOKENS"}
ALL_SECRETS = AUTH_SECRETS | {"PARTNER_CARTO_TOKEN", "CARTO_API_TOKEN"}

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Recording fake gcloud: FAKE_GCLOUD_WORLD is "empty" (nothing exists) or "deployed".
printf '%s\x1f' "$@" >>"$FAKE_GCLOUD_LOG"
printf '\n' >>"$FAKE_GCLOUD_LOG"
args=" $* "
deployed() { [[ $FAKE_GCLOUD_WORLD == deployed ]]; }
case "$1 $2 $3" in
  "secrets versions add") cat >"$FAKE_GCLOUD_LOG.stdin.$4" ;;
  "secrets versions list") deployed && echo "projects/p/secrets/$4/versions/1" ;;
  "projects describe "*) echo 123456789 ;;
  "pubsub subscriptions pull") printf '%s' "${FAKE_GCLOUD_PULLED:-[]}" ;;
  "functions describe "*)
    if [[ $args == *eventTrigger* ]]; then echo "projects/p/locations/r/triggers/$3-trigger"
    else echo "https://$3.a.run.app"; fi ;;
  "eventarc triggers describe") echo "projects/p/subscriptions/${4##*/}-sub" ;;
  "firestore indexes fields")
    [[ $4 == list ]] && deployed && printf 'projects/p/databases/d/collectionGroups/c/fields/%s\n' expires_at parameters parameter_sources \
      query error last_answer result updated_at submitted_at deadline_at last_check_at finished_at queued_at ;;
  "firestore indexes composite")
    if [[ $4 == list ]] && deployed; then
      for fields in workflow outcome workflow:ASCENDING:outcome state workflow:ASCENDING:state outcome:ASCENDING:state \
                    workflow:ASCENDING:outcome:ASCENDING:state; do
        printf 'deliveries\t%s:ASCENDING:created_at:DESCENDING:__name__:DESCENDING\n' "$fields"
      done
    fi ;;
  "firestore fields ttls")
    [[ $4 == list ]] && deployed && echo "projects/p/databases/(default)/collectionGroups/c/fields/expires_at" ;;
  "firestore databases describe")
    deployed || exit 1
    [[ $args == *'value(type)'* ]] && echo FIRESTORE_NATIVE ;;
  "beta monitoring channels")
    if [[ $4 == create ]]; then echo "projects/p/notificationChannels/123"
    elif [[ $4 == list ]] && deployed; then echo "projects/my-gcp-project/notificationChannels/DRY_RUN"; fi ;;
  "monitoring dashboards list") deployed && echo DRY_RUN_DASHBOARD ;;
  "alpha monitoring policies") [[ $4 == list ]] && deployed && echo DRY_RUN_POLICY ;;
  *) if [[ $args == *" describe "* || $args == *" delete "* || $args == *remove-iam* ]] && ! deployed; then
       echo "ERROR: NOT_FOUND: $3 does not exist" >&2; exit 1
     fi ;;
esac
exit 0
"""


# --- running the scripts ------------------------------------------------------------------


RENDER_DIR = tempfile.mkdtemp(prefix="deploy-monitoring-")
atexit.register(shutil.rmtree, RENDER_DIR, True)


def write_source_tree(root: Path, workflows: dict = WORKFLOWS) -> Path:
    """A source tree whose schemas/workflows/ holds the given workflow files."""
    folder = root / "schemas" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    for name, workflow in workflows.items():
        (folder / f"{name}.json").write_text(json.dumps(workflow))
    return root


def script_env(
    source: Path, extra: dict[str, str] | None = None, path: str | None = None
) -> dict:
    env = {
        "PATH": path or os.environ["PATH"],
        "HOME": str(source),
        "SOURCE_DIR": str(source),
        "TMPDIR": RENDER_DIR,  # where deploy renders the monitoring configs (a dry run keeps them)
    }
    env.update(extra or {})
    return env


def run_script(
    name: str, *args: str, env: dict, check: bool = True
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", str(DEPLOY / name), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def dry_run(
    name: str, source: Path, *args: str, env_file: Path = ENV_EXAMPLE
) -> list[tuple]:
    done = run_script(
        name, "--env", str(env_file), "--dry-run", *args, env=script_env(source)
    )
    return argcheck.commands_from_script(done.stdout)


def with_prefix(commands: list[tuple], *words: str) -> list[tuple]:
    return [argv for argv in commands if argv[1 : 1 + len(words)] == words]


def flags(argv: tuple) -> dict[str, str | bool]:
    """--name=value flags as a dict; bare --flags map to True."""
    found: dict[str, str | bool] = {}
    for word in argv:
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            found[name] = value if "=" in word else True
    return found


def deploy_of(commands: list[tuple], fn: str) -> tuple:
    (argv,) = [
        a
        for a in with_prefix(commands, "functions", "deploy")
        if a[3] == f"gateway-{fn}"
    ]
    return argv


def sa(name: str) -> str:
    return f"serviceAccount:gateway-{name}@{PROJECT}.iam.gserviceaccount.com"


class FakeGcloud:
    """A recording `gcloud` on PATH whose project is empty or already deployed."""

    def __init__(self, folder: Path, world: str = "empty"):
        self.log = folder / "gcloud.log"
        binary = folder / "bin" / "gcloud"
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text(FAKE_GCLOUD)
        binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
        self.path = f"{binary.parent}{os.pathsep}{os.environ['PATH']}"
        self.env = {"FAKE_GCLOUD_LOG": str(self.log), "FAKE_GCLOUD_WORLD": world}

    def calls(self) -> list[tuple]:
        if not self.log.exists():
            return []
        return [
            ("gcloud", *line.split("\x1f")[:-1])
            for line in self.log.read_text().splitlines()
        ]

    def stdin_of_secret(self, name: str) -> str:
        return Path(f"{self.log}.stdin.{name}").read_text()


SECRET_VALUES = {name: f"value-of-{name.lower()}-s3cr3t" for name in ALL_SECRETS}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_source_tree(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def deploy_commands(source) -> list[tuple]:
    return dry_run("deploy.sh", source)


@pytest.fixture(scope="module")
def teardown_commands(source) -> list[tuple]:
    return dry_run("teardown.sh", source)


# --- deploy --dry-run: what it would create ---------------------------------------------


def test_topics_for_tracking_events_requests_and_dead_letters_are_created(
    deploy_commands,
):
    created = {
        argv[4] for argv in with_prefix(deploy_commands, "pubsub", "topics", "create")
    }
    assert created == {
        "workflow-jobs",
        "workflow-job-events",
        "workflow-requests",
        "workflow-jobs-dead-letter",
        "workflow-requests-dead-letter",
    }


def test_each_resource_is_described_before_it_is_created(deploy_commands):
    lines = [shlex.join(argv) for argv in deploy_commands]
    for index, line in enumerate(lines):
        if " create " in line:
            # A composite index, a dashboard, an alert policy and a notification channel have generated
            # ids: they are probed by listing.
            listed = (" indexes composite create ", " monitoring dashboards create ", " monitoring policies create ",
                      " monitoring channels create ")
            probe = " list " if any(kind in line for kind in listed) else " describe "
            assert probe in lines[index - 1], line


def test_dead_letters_are_kept_by_a_subscription(deploy_commands):
    subscriptions = with_prefix(deploy_commands, "pubsub", "subscriptions", "create")
    topics = {flags(argv)["topic"] for argv in subscriptions}
    assert topics == {"workflow-jobs-dead-letter", "workflow-requests-dead-letter"}
    assert all(flags(argv)["expiration-period"] == "never" for argv in subscriptions)


@pytest.mark.parametrize(
    ("fn", "trigger"),
    [
        ("webhook", "trigger-http"),
        ("poll", "trigger-topic"),
        ("submit", "trigger-topic"),
        ("sweep", "trigger-http"),
        ("console", "trigger-http"),
    ],
)
def test_each_function_is_second_gen_with_its_entry_point_and_trigger(
    deploy_commands, fn, trigger
):
    deployed = flags(deploy_of(deploy_commands, fn))
    assert deployed["gen2"] is True
    assert deployed["entry-point"] == fn
    assert deployed["runtime"] in {"python311", "python312"}
    assert deployed["service-account"] == sa(fn).removeprefix("serviceAccount:")
    assert trigger in deployed


def test_the_source_is_the_source_tree(deploy_commands, source):
    assert {flags(deploy_of(deploy_commands, fn))["source"] for fn in FUNCTIONS} == {
        str(source)
    }


def test_only_the_webhook_is_public(deploy_commands):
    public = {
        fn
        for fn in FUNCTIONS
        if "allow-unauthenticated" in flags(deploy_of(deploy_commands, fn))
    }
    assert public == {"webhook"}
    assert "no-allow-unauthenticated" in flags(deploy_of(deploy_commands, "sweep"))
    assert "no-allow-unauthenticated" in flags(deploy_of(deploy_commands, "console"))


@pytest.mark.parametrize(
    ("fn", "topic"), [("poll", "workflow-jobs"), ("submit", "workflow-requests")]
)
def test_event_functions_retry_on_failure_under_the_trigger_identity(
    deploy_commands, fn, topic
):
    deployed = flags(deploy_of(deploy_commands, fn))
    assert deployed["trigger-topic"] == topic
    assert deployed["retry"] is True
    assert deployed["trigger-service-account"] == sa("trigger").removeprefix(
        "serviceAccount:"
    )


def test_poll_checks_once_per_invocation_and_serves_many_checks_per_instance(deploy_commands):
    poll = flags(deploy_of(deploy_commands, "poll"))
    assert poll["timeout"] == "120s"  # one status check and a short inline wait, never a job's whole run
    assert int(poll["concurrency"]) > 1
    assert float(poll["cpu"]) >= 1
    assert float(env_vars(deploy_of(deploy_commands, "poll"))["GATEWAY_POLL_INLINE_S"]) <= 10


def test_tracking_subscription_gets_backoff_bounds_and_a_dead_letter_policy(
    deploy_commands,
):
    (lookup,) = [
        a
        for a in with_prefix(deploy_commands, "eventarc", "triggers", "describe")
        if "gateway-poll" in a[4]
    ]
    assert flags(lookup)["format"] == "value(transport.pubsub.subscription)"
    (update,) = [
        a
        for a in with_prefix(deploy_commands, "pubsub", "subscriptions", "update")
        if "gateway-poll" in a[4]
    ]
    policy = flags(update)
    assert (policy["min-retry-delay"], policy["max-retry-delay"]) == ("10s", "600s")
    assert policy["dead-letter-topic"] == "workflow-jobs-dead-letter"
    assert policy["max-delivery-attempts"] == "100"
    assert int(policy["ack-deadline"]) > 540  # longer than poll's timeout


def test_pubsub_service_agent_may_move_dead_letters(deploy_commands):
    agent = (
        "serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
    )
    grants = {
        (argv[2], argv[4], flags(argv)["role"])
        for argv in deploy_commands
        if "add-iam-policy-binding" in argv and flags(argv).get("member") == agent
    }
    assert ("topics", "workflow-jobs-dead-letter", "roles/pubsub.publisher") in grants
    assert any(
        kind == "subscriptions"
        and "gateway-poll" in name
        and role == "roles/pubsub.subscriber"
        for kind, name, role in grants
    )


def test_every_function_gets_the_settings_of_design_section_9(deploy_commands):
    for fn in FUNCTIONS:
        settings = dict(
            pair.split("=", 1)
            for pair in flags(deploy_of(deploy_commands, fn))["set-env-vars"].split(",")
        )
        assert settings["GOOGLE_CLOUD_PROJECT"] == PROJECT
        assert settings["GATEWAY_LEDGER"] == "firestore://deliveries"
        assert {
            "GATEWAY_SCHEMAS_DIR",
            "CARTO_API_BASE_URL",
            "GATEWAY_JOBS_TOPIC",
            "GATEWAY_EVENTS_TOPIC",
            "GATEWAY_REQUESTS_TOPIC",
            "GATEWAY_MAX_BODY_BYTES",
        } <= settings.keys()


def mapped_secrets(commands: list[tuple], fn: str) -> dict[str, str]:
    pairs = flags(deploy_of(commands, fn))["set-secrets"].split(",")
    return dict(pair.split("=", 1) for pair in pairs)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_each_function_reads_only_the_secrets_it_needs_from_their_latest_version(deploy_commands, fn):
    # Only webhook verifies senders; the others load the registry without webhook secrets (main.py).
    needed = ALL_SECRETS if fn == "webhook" else ALL_SECRETS - AUTH_SECRETS
    assert mapped_secrets(deploy_commands, fn) == {name: f"{name}:latest" for name in needed}


def test_each_secret_named_by_a_workflow_is_created(deploy_commands):
    created = {argv[3] for argv in with_prefix(deploy_commands, "secrets", "create")}
    assert created == ALL_SECRETS


def test_a_new_workflow_adds_its_secret_without_a_script_change(tmp_path):
    extra = {
        "github-push": {
            "auth": [{"scheme": "github", "secrets": "env:GITHUB_PUSH_SECRET"}]
        }
    }
    source = write_source_tree(tmp_path, {**WORKFLOWS, **extra})
    commands = dry_run("deploy.sh", source)
    assert "GITHUB_PUSH_SECRET" in mapped_secrets(commands, "webhook")


@pytest.mark.parametrize("workflow", demo_workflow_files(), ids=lambda p: p.stem)
def test_each_demo_workflow_gets_the_secrets_it_names(workflow, tmp_path):
    source = write_source_tree(tmp_path, {workflow.stem: json.loads(workflow.read_text())})
    names = set(re.findall(r"env:([A-Z_][A-Z0-9_]*)", workflow.read_text()))
    commands = dry_run("deploy.sh", source)
    assert names <= set(mapped_secrets(commands, "webhook"))


def test_a_fresh_clone_does_not_deploy_and_names_new():
    done = run_script("deploy.sh", "--env", str(ENV_EXAMPLE), "--dry-run", env=script_env(REPO), check=False)
    assert done.returncode != 0
    assert "no workflow file in schemas/workflows/" in done.stderr and "python -m gateway new" in done.stderr
    assert argcheck.commands_from_script(done.stdout) == []  # refused before any gcloud command


def test_the_dry_run_of_the_users_workflow_mounts_no_demo_secret(tmp_path):
    mine = {"my-stores": {"auth": [{"scheme": "standard-webhooks", "secrets": "env:MY_STORES_SECRET"}]}}
    commands = dry_run("deploy.sh", write_source_tree(tmp_path, mine))
    mounted = {name for fn in FUNCTIONS for name in mapped_secrets(commands, fn)}
    assert "MY_STORES_SECRET" in mounted
    assert not [name for name in DEMO_SECRETS for argv in commands if name in " ".join(argv)]


def test_client_credentials_replace_the_token_when_a_client_id_is_set(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "CARTO_CLIENT_ID=client-123\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    webhook = flags(deploy_of(commands, "webhook"))
    assert "CARTO_CLIENT_SECRET" in mapped_secrets(commands, "webhook")
    assert "CARTO_API_TOKEN" not in mapped_secrets(commands, "webhook")
    assert "CARTO_CLIENT_ID=client-123" in webhook["set-env-vars"].split(",")


def expected_grants() -> set[tuple[str, str, str]]:
    """(member, resource, role) for every runtime identity: the least each one needs."""
    grants = {
        (sa(fn), f"project:{PROJECT}", "roles/datastore.user") for fn in FUNCTIONS
    }
    grants |= {
        (sa(fn), "topic:workflow-jobs", "roles/pubsub.publisher") for fn in FUNCTIONS
    }
    grants |= {
        (sa(fn), "topic:workflow-job-events", "roles/pubsub.publisher")
        for fn in ("webhook", "poll", "sweep", "console")  # webhook: DELETE /jobs/{id} publishes the event
    }
    grants |= {
        (sa(fn), f"secret:{name}", "roles/secretmanager.secretAccessor")
        for fn in FUNCTIONS
        for name in (ALL_SECRETS if fn == "webhook" else ALL_SECRETS - AUTH_SECRETS)
    }
    grants |= {
        (sa("trigger"), f"function:gateway-{fn}", "roles/run.invoker")
        for fn in ("poll", "submit")
    }
    grants |= {(sa("scheduler"), "function:gateway-sweep", "roles/run.invoker")}
    # Status checks and submit hand-offs: webhook, poll, submit and sweep enqueue on the queue, naming
    # poll's identity as the tasks' OIDC account (actAs); poll's identity may invoke poll, nothing else
    # changes about who may. The console enqueues nothing.
    grants |= {(sa(fn), f"queue:{QUEUE}", "roles/cloudtasks.enqueuer") for fn in TASK_SCHEDULERS}
    grants |= {(sa(fn), f"service-account:{POLL_SA}", "roles/iam.serviceAccountUser") for fn in TASK_SCHEDULERS}
    grants |= {(sa("poll"), "function:gateway-poll", "roles/run.invoker")}
    grants |= {(sa("build"), f"project:{PROJECT}", role) for role in BUILD_ROLES}
    return grants


BUILD_ROLES = ("roles/cloudbuild.builds.builder", "roles/logging.logWriter", "roles/artifactregistry.writer",
               "roles/storage.objectViewer")


def granted(commands: list[tuple]) -> set[tuple[str, str, str]]:
    kinds = {
        "projects": "project",
        "topics": "topic",
        "secrets": "secret",
        "functions": "function",
        "queues": "queue",
        "service-accounts": "service-account",
    }
    found = set()
    for argv in commands:
        options = flags(argv)
        if not str(options.get("member", "")).startswith("serviceAccount:gateway-"):
            continue
        kind = argv[1] if argv[1] in kinds else argv[2]
        name = argv[3] if argv[1] in kinds else argv[4]
        role = options.get("role", "roles/run.invoker")  # add-invoker-policy-binding
        found.add((options["member"], f"{kinds[kind]}:{name}", role))
    return found


def test_service_accounts_get_exactly_their_least_roles(deploy_commands):
    assert granted(deploy_commands) == expected_grants()


def test_a_service_account_is_created_for_each_identity(deploy_commands):
    created = {
        argv[4]
        for argv in with_prefix(deploy_commands, "iam", "service-accounts", "create")
    }
    assert created == {
        f"gateway-{name}" for name in (*FUNCTIONS, "scheduler", "trigger", "build")
    }


def test_scheduler_calls_sweep_every_five_minutes_with_an_oidc_token(deploy_commands):
    (job,) = with_prefix(deploy_commands, "scheduler", "jobs", "create", "http")
    options = flags(job)
    assert options["schedule"] == "*/5 * * * *"
    assert (
        options["uri"]
        == options["oidc-token-audience"]
        == "https://gateway-sweep-dry-run.a.run.app"
    )
    assert options["oidc-service-account-email"] == sa("scheduler").removeprefix(
        "serviceAccount:"
    )


def test_firestore_ledger_is_native_with_a_ttl_on_expires_at(deploy_commands):
    (database,) = with_prefix(deploy_commands, "firestore", "databases", "create")
    assert flags(database)["type"] == "firestore-native"
    assert flags(database)["database"] == "(default)"
    (ttl,) = with_prefix(deploy_commands, "firestore", "fields", "ttls", "update")
    assert ttl[5] == "expires_at"
    assert flags(ttl)["collection-group"] == "deliveries"
    assert flags(ttl)["enable-ttl"] is True


# The ledger's queries (gateway/ledger/firestore.py): find_job (job_id ==), find_delivery
# (delivery_id ==), stale (sweep_at <) and the console's list (created_at, newest first).
QUERIED_LEDGER_FIELDS = {"job_id", "delivery_id", "sweep_at", "created_at"}
LEDGER_TIMESTAMPS = {"updated_at", "submitted_at", "deadline_at", "last_check_at", "finished_at", "expires_at",
                     "queued_at"}


def test_ledger_fields_never_queried_are_not_indexed(deploy_commands):
    updates = with_prefix(deploy_commands, "firestore", "indexes", "fields", "update")
    # Large fields, and every timestamp no query uses: an indexed field whose values only grow caps
    # the collection's writes at about 500 per second.
    assert {argv[5] for argv in updates} == {"parameters", "parameter_sources", "query", "error", "last_answer",
                                             "result"} | LEDGER_TIMESTAMPS
    assert all(flags(argv)["disable-indexes"] is True for argv in updates)
    assert all(flags(argv)["collection-group"] == "deliveries" for argv in updates)


def test_the_fields_the_ledger_queries_keep_their_indexes(deploy_commands):
    import inspect

    from gateway.ledger import firestore

    source = inspect.getsource(firestore)
    assert all(f'"{name}"' in source for name in QUERIED_LEDGER_FIELDS)  # the two queries still use them
    updated = {argv[5] for argv in with_prefix(deploy_commands, "firestore", "indexes", "fields", "update")}
    assert not updated & QUERIED_LEDGER_FIELDS
    for name in LEDGER_TIMESTAMPS:  # no query filters or orders on a field exempted here
        assert not re.search(rf'FieldFilter\("{name}"|order_by\("{name}"', source), name


def test_the_consoles_composite_indexes_are_those_its_queries_need(deploy_commands):
    from gateway.ledger.firestore import CONSOLE_INDEXES

    made = set()
    for argv in with_prefix(deploy_commands, "firestore", "indexes", "composite", "create"):
        assert flags(argv)["collection-group"] == "deliveries" and flags(argv)["database"] == "(default)"
        configs = [word.split("=", 1)[1] for word in argv if word.startswith("--field-config=")]
        made.add(tuple(dict(pair.split("=") for pair in config.split(","))["field-path"] for config in configs))
        assert configs[-1] == "field-path=created_at,order=descending"
    assert made == set(CONSOLE_INDEXES)


def test_the_console_is_private_and_opened_by_the_operators_listed(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "CONSOLE_INVOKERS=user:ops@example.com,group:oncall@example.com\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    bindings = [argv for argv in with_prefix(commands, "functions", "add-invoker-policy-binding")
                if argv[3] == "gateway-console"]
    assert {flags(argv)["member"] for argv in bindings} == {"user:ops@example.com", "group:oncall@example.com"}
    viewers = [argv for argv in with_prefix(commands, "run", "services", "add-iam-policy-binding") if argv[4] == "gateway-console"]
    # `gcloud run services proxy` needs run.services.get, which run.invoker lacks
    assert {(flags(argv)["member"], flags(argv)["role"]) for argv in viewers} == {
        ("user:ops@example.com", "roles/run.viewer"), ("group:oncall@example.com", "roles/run.viewer")}
    console = flags(deploy_of(commands, "console"))
    assert console["max-instances"] == "1"  # its CSRF key lives in the one instance


def test_a_named_ledger_database_is_used_everywhere(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(
        ENV_EXAMPLE.read_text() + "GATEWAY_LEDGER=firestore://jobs?database=gateway\n"
    )
    commands = dry_run("deploy.sh", source, env_file=env_file)
    firestore = with_prefix(commands, "firestore")
    assert {flags(argv)["database"] for argv in firestore} == {"gateway"}
    ttl = with_prefix(commands, "firestore", "fields", "ttls", "update")
    assert flags(ttl[0])["collection-group"] == "jobs"


def test_every_command_names_the_project(deploy_commands):
    assert all(flags(argv).get("project") == PROJECT for argv in deploy_commands)


def test_dry_run_runs_no_gcloud(tmp_path, source):
    fake = FakeGcloud(tmp_path)
    run_script(
        "deploy.sh",
        "--env",
        str(ENV_EXAMPLE),
        "--dry-run",
        env=script_env(source, fake.env, path=fake.path),
    )
    assert fake.calls() == []


def test_a_missing_settings_file_says_how_to_make_one(tmp_path, source):
    done = run_script(
        "deploy.sh",
        "--env",
        str(tmp_path / "nope"),
        "--dry-run",
        env=script_env(source),
        check=False,
    )
    assert done.returncode != 0
    assert "cp deploy/env.example deploy/env" in done.stderr


def refused_dry_run(tmp_path: Path, source: Path, settings: str) -> str:
    """Run deploy.sh --dry-run on a settings file with `settings`; it must fail: its stderr."""
    env_file = tmp_path / "env"
    env_file.write_text(settings)
    done = run_script("deploy.sh", "--env", str(env_file), "--dry-run", env=script_env(source), check=False)
    assert done.returncode != 0
    return done.stderr


def test_missing_settings_are_reported_together(tmp_path, source):
    assert "PROJECT REGION CARTO_API_BASE_URL" in refused_dry_run(tmp_path, source, "PROJECT=\nREGION=\n")


def test_a_sqlite_ledger_is_refused_in_the_cloud(tmp_path, source):
    settings = ENV_EXAMPLE.read_text() + "GATEWAY_LEDGER=sqlite:///tmp/ledger.db\n"
    assert "firestore://" in refused_dry_run(tmp_path, source, settings)


def test_a_setting_with_a_comma_is_refused(tmp_path, source):
    settings = ENV_EXAMPLE.read_text() + "CARTO_API_BASE_URL=https://a,b\n"
    assert "CARTO_API_BASE_URL" in refused_dry_run(tmp_path, source, settings)


# --- status checks: the Cloud Tasks queue, who may enqueue, poll's URL -------------------------------

QUEUE = "gateway-poll-checks"
QUEUE_PATH = f"projects/{PROJECT}/locations/europe-west1/queues/{QUEUE}"
POLL_SA = f"gateway-poll@{PROJECT}.iam.gserviceaccount.com"
DRY_RUN_POLL_URL = "https://gateway-poll-dry-run.a.run.app"  # what a dry run's URL lookups print


def duration_s(text: str) -> int:
    assert re.fullmatch(r"[0-9]+s", text), text
    return int(text[:-1])


def test_the_queue_of_status_checks_is_created_with_retries_and_a_dispatch_limit(deploy_commands):
    (probe,) = with_prefix(deploy_commands, "tasks", "queues", "describe")
    (queue,) = with_prefix(deploy_commands, "tasks", "queues", "create")
    options = flags(queue)

    assert probe[4] == queue[4] == QUEUE and options["location"] == flags(probe)["location"] == "europe-west1"
    assert deploy_commands.index(probe) < deploy_commands.index(queue)  # described first: idempotent
    assert duration_s(options["min-backoff"]) >= 1 and duration_s(options["max-backoff"]) >= duration_s(options["min-backoff"])
    assert int(options["max-attempts"]) > 1 and int(options["max-doublings"]) >= 1
    assert duration_s(options["max-retry-duration"]) >= 21600  # the longest deadline of these workflows: the default
    assert 0 < float(options["max-dispatches-per-second"]) <= 500
    assert 0 < int(options["max-concurrent-dispatches"]) <= 20 * 40  # poll's instances x concurrency


def test_the_queue_retries_at_least_as_long_as_the_longest_workflow_deadline(tmp_path):
    workflows = {**WORKFLOWS, "day-long": {**WORKFLOWS["store-clusters"], "tracking": {"deadline_s": 86400}}}
    commands = dry_run("deploy.sh", write_source_tree(tmp_path, workflows))

    (queue,) = with_prefix(commands, "tasks", "queues", "create")
    assert duration_s(flags(queue)["max-retry-duration"]) >= 86400


def test_a_second_deploy_updates_the_queue_in_place(second_deploy):
    fake, done = second_deploy
    assert done.returncode == 0, done.stderr

    assert with_prefix(fake.calls(), "tasks", "queues", "create") == []
    (update,) = with_prefix(fake.calls(), "tasks", "queues", "update")
    assert update[4] == QUEUE and "max-retry-duration" in flags(update)


def test_the_queue_update_parses_with_the_real_gcloud(sdk, second_deploy):
    fake, _ = second_deploy
    updates = [argv for argv in fake.calls() if argv[1:4] in (("tasks", "queues", "update"), ("run", "services", "update"))]
    assert updates and all(verdict.ok for verdict in argcheck.check(updates, sdk)), updates


@pytest.mark.parametrize("fn", TASK_SCHEDULERS)
def test_the_functions_that_enqueue_checks_or_hand_offs_do_so_on_the_queue_as_polls_identity(deploy_commands, fn):
    settings = env_vars(deploy_of(deploy_commands, fn))

    assert settings["GATEWAY_TASKS_QUEUE"] == QUEUE_PATH
    assert settings["GATEWAY_TASKS_SERVICE_ACCOUNT"] == POLL_SA


def test_the_console_enqueues_nothing(deploy_commands):
    assert not {"GATEWAY_TASKS_QUEUE", "GATEWAY_POLL_URL"} & env_vars(deploy_of(deploy_commands, "console")).keys()


@pytest.mark.parametrize("fn, setting", [("webhook", "GATEWAY_OPERATOR_AUDIENCES"), ("console", "GATEWAY_CONSOLE_HOSTS")])
def test_on_a_first_deploy_a_functions_own_url_is_set_right_after_it_exists(deploy_commands, fn, setting):
    deployed = deploy_of(deploy_commands, fn)
    (update,) = [c for c in with_prefix(deploy_commands, "run", "services", "update") if c[4] == f"gateway-{fn}"]

    assert setting not in env_vars(deployed)  # unknown before the function exists
    assert deploy_commands.index(deployed) < deploy_commands.index(update)
    assert flags(update)["update-env-vars"] == f"{setting}=https://gateway-{fn}-dry-run.a.run.app"


def test_every_function_gets_the_inline_submit_budget(deploy_commands):
    for fn in FUNCTIONS:
        assert env_vars(deploy_of(deploy_commands, fn))["GATEWAY_SUBMIT_INLINE_S"] == "2"


def test_on_a_first_deploy_polls_url_is_set_once_poll_exists_and_before_anything_hands_off(deploy_commands):
    poll = deploy_of(deploy_commands, "poll")
    (update,) = [c for c in with_prefix(deploy_commands, "run", "services", "update") if c[4] == "gateway-poll"]

    assert "GATEWAY_POLL_URL" not in env_vars(poll)  # unknown before poll exists
    assert update[4] == "gateway-poll" and flags(update)["update-env-vars"] == f"GATEWAY_POLL_URL={DRY_RUN_POLL_URL}"
    for fn in ("webhook", "submit", "sweep"):  # deployed after: their hand-offs and checks have a target
        later = deploy_of(deploy_commands, fn)
        assert deploy_commands.index(poll) < deploy_commands.index(update) < deploy_commands.index(later)
        assert env_vars(later)["GATEWAY_POLL_URL"] == DRY_RUN_POLL_URL


def test_on_a_later_deploy_poll_gets_its_known_url_directly(second_deploy):
    fake, _ = second_deploy
    calls = fake.calls()
    (poll,) = [argv for argv in with_prefix(calls, "functions", "deploy") if argv[3] == "gateway-poll"]

    assert env_vars(poll)["GATEWAY_POLL_URL"] == "https://gateway-poll.a.run.app"
    assert with_prefix(calls, "run", "services", "update") == []


def test_the_cloud_tasks_api_is_enabled(deploy_commands):
    (enable,) = with_prefix(deploy_commands, "services", "enable")
    assert "cloudtasks.googleapis.com" in enable


# --- rotation: two variables, two versions of one secret; the operators ---------------------------

ROTATING = {"store-clusters": {"auth": [{"scheme": "standard-webhooks",
                                        "secrets": ["env:STORE_CLUSTERS_SECRET", "env:STORE_CLUSTERS_SECRET_PREVIOUS"]}]}}
ROTATION_SETTINGS = ("SECRET_VERSIONS=STORE_CLUSTERS_SECRET_PREVIOUS=STORE_CLUSTERS_SECRET:3\n"
                     "GATEWAY_OPERATORS=oncall@example.com,ci@my-gcp-project.iam.gserviceaccount.com\n")


@pytest.fixture(scope="module")
def rotating(tmp_path_factory) -> tuple[list[tuple], list[tuple]]:
    """(deploy, teardown --delete-secrets) dry runs of a workflow rotating its secret, with two operator emails."""
    folder = tmp_path_factory.mktemp("rotating")
    source = write_source_tree(folder / "source", ROTATING)
    env_file = folder / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + ROTATION_SETTINGS)
    return (dry_run("deploy.sh", source, env_file=env_file),
            dry_run("teardown.sh", source, "--delete-secrets", env_file=env_file))


def test_a_rotation_maps_two_variables_to_two_versions_of_one_secret(rotating):
    deploy, _ = rotating

    assert mapped_secrets(deploy, "webhook") == {
        "STORE_CLUSTERS_SECRET": "STORE_CLUSTERS_SECRET:latest",
        "STORE_CLUSTERS_SECRET_PREVIOUS": "STORE_CLUSTERS_SECRET:3",
        "GATEWAY_OPERATOR_TOKENS": "GATEWAY_OPERATOR_TOKENS:latest", "CARTO_API_TOKEN": "CARTO_API_TOKEN:latest"}
    assert {argv[3] for argv in with_prefix(deploy, "secrets", "create")} == {
        "STORE_CLUSTERS_SECRET", "GATEWAY_OPERATOR_TOKENS", "CARTO_API_TOKEN"}  # no secret of the second name
    assert {(member, resource) for member, resource, role in granted(deploy)
            if role == "roles/secretmanager.secretAccessor" and member == sa("webhook")} == {
        (sa("webhook"), f"secret:{name}") for name in ("STORE_CLUSTERS_SECRET", "GATEWAY_OPERATOR_TOKENS", "CARTO_API_TOKEN")}


def test_teardown_deletes_the_one_secret_behind_both_rotation_variables(rotating):
    _, teardown = rotating

    assert {argv[3] for argv in with_prefix(teardown, "secrets", "delete")} == {
        "STORE_CLUSTERS_SECRET", "GATEWAY_OPERATOR_TOKENS", "CARTO_API_TOKEN"}


def env_vars(argv: tuple) -> dict[str, str]:
    """--set-env-vars as a dict, with gcloud's alternate delimiter (`^;^a=1;b=2`) understood."""
    value = flags(argv)["set-env-vars"]
    delimiter = ","
    if value.startswith("^"):
        delimiter, value = value[1:].split("^", 1)
    return dict(pair.split("=", 1) for pair in value.split(delimiter))


def test_the_operators_emails_are_set_on_the_webhook_only(rotating):
    deploy, _ = rotating

    webhook = env_vars(deploy_of(deploy, "webhook"))
    assert webhook["GATEWAY_OPERATORS"] == "oncall@example.com,ci@my-gcp-project.iam.gserviceaccount.com"
    assert webhook["GATEWAY_LEDGER"] == "firestore://deliveries"  # the other settings still there
    assert all("GATEWAY_OPERATORS" not in env_vars(deploy_of(deploy, fn)) for fn in ("poll", "submit", "sweep"))


def test_the_operator_tokens_are_a_secret_of_the_webhook_only(deploy_commands):
    assert mapped_secrets(deploy_commands, "webhook")["GATEWAY_OPERATOR_TOKENS"] == "GATEWAY_OPERATOR_TOKENS:latest"
    assert all("GATEWAY_OPERATOR_TOKENS" not in mapped_secrets(deploy_commands, fn) for fn in ("poll", "submit", "sweep"))


@pytest.mark.parametrize("settings, message", [
    ("SECRET_VERSIONS=NOT_REFERENCED=STORE_CLUSTERS_SECRET:2\n", "NOT_REFERENCED, which no workflow"),
    ("SECRET_VERSIONS=STORE_CLUSTERS_SECRET=STORE_CLUSTERS_SECRET:v2\n", "VARIABLE=SECRET:VERSION"),
    ("GATEWAY_OPERATORS=oncall\n", "GATEWAY_OPERATORS must be comma-separated email addresses"),
])
def test_a_bad_rotation_or_operator_setting_is_refused(tmp_path, source, settings, message):
    assert message in refused_dry_run(tmp_path, source, ENV_EXAMPLE.read_text() + settings)


# --- teardown --dry-run ---------------------------------------------------------------------


def test_teardown_deletes_the_functions_schedule_topics_and_accounts(teardown_commands):
    def deleted(*path: str, at: int) -> set[str]:
        return {argv[at] for argv in with_prefix(teardown_commands, *path, "delete")}

    assert deleted("functions", at=3) == {f"gateway-{fn}" for fn in (*FUNCTIONS, "subscriber")}
    assert deleted("scheduler", "jobs", at=4) == {"gateway-sweep"}
    assert deleted("pubsub", "topics", at=4) == {
        "workflow-jobs",
        "workflow-job-events",
        "workflow-requests",
        "workflow-jobs-dead-letter",
        "workflow-requests-dead-letter",
    }
    assert deleted("pubsub", "subscriptions", at=4) == {
        "workflow-jobs-dead-letter-kept",
        "workflow-requests-dead-letter-kept",
        "gateway-subscriber-push",  # deploy-subscriber.sh's
    }
    assert deleted("iam", "service-accounts", at=4) == {
        sa(name).removeprefix("serviceAccount:")
        for name in (*FUNCTIONS, "scheduler", "trigger", "build", "sub")
    }
    (queue,) = with_prefix(teardown_commands, "tasks", "queues", "delete")
    assert queue[4] == QUEUE and flags(queue)["location"] == "europe-west1"


def test_teardown_revokes_every_role_deploy_granted_on_what_it_keeps(teardown_commands):
    revoked = {
        (flags(a)["member"], a[3], flags(a)["role"])
        for a in teardown_commands
        if a[2] == "remove-iam-policy-binding"
    }
    kept = {
        (member, resource.split(":", 1)[1], role)
        for member, resource, role in expected_grants()
        if resource.startswith(("project:", "secret:"))
    }
    assert revoked == kept


def test_teardown_keeps_secrets_and_the_database_by_default(teardown_commands):
    assert with_prefix(teardown_commands, "secrets", "delete") == []
    assert with_prefix(teardown_commands, "firestore") == []


def test_teardown_deletes_secrets_when_asked(source):
    commands = dry_run("teardown.sh", source, "--delete-secrets")
    assert {
        argv[3] for argv in with_prefix(commands, "secrets", "delete")
    } == ALL_SECRETS


def test_teardown_refuses_to_run_unattended_without_yes(tmp_path, source):
    fake = FakeGcloud(tmp_path)
    done = run_script(
        "teardown.sh",
        "--env",
        str(ENV_EXAMPLE),
        env=script_env(source, fake.env, path=fake.path),
        check=False,
    )
    assert done.returncode != 0
    assert "--yes" in done.stderr
    assert fake.calls() == []


# --- real runs against a recording fake gcloud -------------------------------------------


def real_deploy(folder: Path, source: Path, world: str, secrets: dict[str, str]):
    fake = FakeGcloud(folder, world)
    done = run_script(
        "deploy.sh",
        "--env",
        str(ENV_EXAMPLE),
        env=script_env(source, {**fake.env, **secrets}, path=fake.path),
        check=False,
    )
    return fake, done


@pytest.fixture(scope="module")
def first_deploy(tmp_path_factory, source):
    """A real run on an empty project, secret values in the deployer's environment."""
    return real_deploy(tmp_path_factory.mktemp("first"), source, "empty", SECRET_VALUES)


@pytest.fixture(scope="module")
def second_deploy(tmp_path_factory, source):
    """A real run on a project where everything exists already."""
    return real_deploy(tmp_path_factory.mktemp("second"), source, "deployed", {})


def created(commands: list[tuple]) -> set[tuple]:
    """The command path and name of each create (placeholders of a dry run, and the folder of the rendered
    monitoring configs, differ in flags)."""
    return {tuple(word for word in argv if not word.startswith("--"))[:5] for argv in commands if "create" in argv}


def test_first_deploy_creates_what_the_dry_run_showed(first_deploy, deploy_commands):
    fake, done = first_deploy
    assert done.returncode == 0, done.stderr
    assert created(fake.calls()) == created(deploy_commands)


def test_second_deploy_creates_nothing_and_updates_in_place(second_deploy):
    fake, done = second_deploy
    assert done.returncode == 0, done.stderr
    calls = fake.calls()
    assert [argv for argv in calls if "create" in argv or "add" in argv[:4]] == []
    assert len(with_prefix(calls, "functions", "deploy")) == 5
    assert len(with_prefix(calls, "scheduler", "jobs", "update", "http")) == 1
    assert [argv for argv in with_prefix(calls, "firestore") if "update" in argv] == []


def test_real_deploy_updates_the_subscription_eventarc_created(second_deploy):
    fake, _ = second_deploy
    updated = {
        argv[4]
        for argv in with_prefix(fake.calls(), "pubsub", "subscriptions", "update")
    }
    assert updated == {
        "projects/p/subscriptions/gateway-poll-trigger-sub",
        "projects/p/subscriptions/gateway-submit-trigger-sub",
    }


def test_a_first_secret_value_goes_through_stdin_never_a_command_line(first_deploy):
    fake, done = first_deploy
    assert fake.stdin_of_secret("CARTO_API_TOKEN") == SECRET_VALUES["CARTO_API_TOKEN"]
    everything_visible = (
        "".join(map(shlex.join, fake.calls())) + done.stdout + done.stderr
    )
    assert not any(value in everything_visible for value in SECRET_VALUES.values())


def test_deploy_stops_before_the_functions_when_a_secret_has_no_value(tmp_path, source):
    fake, done = real_deploy(tmp_path, source, "empty", {})
    assert done.returncode != 0
    assert "gcloud secrets versions add CARTO_API_TOKEN --data-file=-" in done.stderr
    assert with_prefix(fake.calls(), "functions", "deploy") == []


def real_teardown(tmp_path: Path, source: Path, world: str):
    fake = FakeGcloud(tmp_path, world)
    done = run_script(
        "teardown.sh",
        "--env",
        str(ENV_EXAMPLE),
        "--yes",
        env=script_env(source, fake.env, path=fake.path),
        check=False,
    )
    return fake, done


def test_teardown_runs_what_its_dry_run_showed(tmp_path, source, teardown_commands):
    fake, done = real_teardown(tmp_path, source, "deployed")
    assert done.returncode == 0, done.stderr
    assert fake.calls() == teardown_commands


def test_teardown_of_a_removed_gateway_finds_everything_already_gone(tmp_path, source):
    fake, done = real_teardown(tmp_path, source, "empty")
    assert done.returncode == 0, done.stderr
    deletes = [argv for argv in fake.calls() if "list" not in argv[:5]]  # lookups find nothing: no delete follows
    assert done.stderr.count("(already gone)") == len(deletes)


def test_replay_republishes_each_dead_letter_with_its_attributes_then_acks_it(
    tmp_path, source
):
    data = '{"job_id": "job_1", "workflow": "store-clusters"}'
    pulled = [
        {
            "ackId": "ack-1",
            "message": {
                "data": base64.b64encode(data.encode()).decode(),
                "attributes": {
                    "workflow": "store-clusters",
                    "note": "a,b",
                    "CloudPubSubDeadLetterSourceDeliveryCount": "100",
                },
            },
        }
    ]
    fake = FakeGcloud(tmp_path, "deployed")
    env = {**fake.env, "FAKE_GCLOUD_PULLED": json.dumps(pulled)}
    run_script(
        "replay-dead-letters.sh",
        "--env",
        str(ENV_EXAMPLE),
        env=script_env(source, env, path=fake.path),
    )
    _, publish, ack = fake.calls()
    assert publish[1:5] == ("pubsub", "topics", "publish", "workflow-jobs")
    assert flags(publish)["message"] == data
    assert flags(publish)["attribute"] == "^;^note=a,b;workflow=store-clusters"
    assert ack[1:5] == (
        "pubsub",
        "subscriptions",
        "ack",
        "workflow-jobs-dead-letter-kept",
    )
    assert flags(ack)["ack-ids"] == "ack-1"


# --- every command through the real gcloud parser ----------------------------------------


@pytest.fixture(scope="module")
def sdk():
    found = argcheck.find_sdk()
    if found is None:
        pytest.skip(
            "gcloud CLI not found on PATH: cannot parse-check the deploy commands "
            "(install the Google Cloud SDK to run these tests)"
        )
    return found


MISSPELT = tuple(
    shlex.split("gcloud functions deploy gateway-poll --region=europe-west1 --retyr")
)
BAD_VALUE = tuple(
    shlex.split("gcloud pubsub subscriptions update s --max-delivery-attempts=1000")
)


@pytest.fixture(scope="module")
def verdicts(sdk, source, deploy_commands, teardown_commands, rotating, console_invokers,
             private_webhook) -> dict[tuple, object]:
    replay = dry_run("replay-dead-letters.sh", source) + dry_run(
        "replay-dead-letters.sh", source, "--requests"
    )
    rotation_deploy, rotation_teardown = rotating
    commands = list(
        dict.fromkeys(
            [*deploy_commands, *teardown_commands, *replay, *rotation_deploy, *rotation_teardown,
             *console_invokers, *private_webhook, *dry_run("deploy-subscriber.sh", source), MISSPELT, BAD_VALUE]
        )
    )
    return {verdict.argv: verdict for verdict in argcheck.check(commands, sdk)}


@pytest.fixture(scope="module")
def console_invokers(tmp_path_factory, source) -> list[tuple]:
    """The console's invoker bindings of a deploy whose settings name operators."""
    env_file = tmp_path_factory.mktemp("invokers") / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "CONSOLE_INVOKERS=user:ops@example.com\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    return [argv for argv in commands if "gateway-console" in argv[3:5] and "policy-binding" in " ".join(argv[2:4])]


@pytest.fixture(scope="module")
def private_webhook(tmp_path_factory, source) -> list[tuple]:
    """A deploy for a project with domain-restricted sharing."""
    env_file = tmp_path_factory.mktemp("drs") / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "WEBHOOK_ACCESS=no-invoker-iam-check\n")
    return dry_run("deploy.sh", source, env_file=env_file)


def failures(verdicts: dict, commands: list[tuple]) -> list[str]:
    return [
        f"{verdicts[argv].outcome}: {verdicts[argv].detail}\n  {shlex.join(argv)}"
        for argv in commands
        if not verdicts[argv].ok
    ]


def test_every_deploy_command_parses_with_the_real_gcloud(verdicts, deploy_commands):
    assert failures(verdicts, deploy_commands) == []


def test_every_rotation_and_operator_command_parses_with_the_real_gcloud(verdicts, rotating):
    deploy, teardown = rotating
    assert failures(verdicts, deploy) == [] and failures(verdicts, teardown) == []


def test_the_consoles_invoker_bindings_parse_with_the_real_gcloud(verdicts, console_invokers):
    # run.invoker and run.viewer for the one operator; both removed from the pretended former one
    assert len(console_invokers) == 4
    assert failures(verdicts, console_invokers) == []


def test_the_domain_restricted_deploy_parses_with_the_real_gcloud(verdicts, private_webhook):
    assert failures(verdicts, private_webhook) == []


def test_every_teardown_command_parses_with_the_real_gcloud(
    verdicts, teardown_commands
):
    assert failures(verdicts, teardown_commands) == []


def test_every_replay_command_parses_with_the_real_gcloud(verdicts, source):
    replay = dry_run("replay-dead-letters.sh", source)
    assert len(replay) == 3
    assert failures(verdicts, replay) == []


def test_the_checker_catches_a_misspelt_flag(verdicts):
    verdict = verdicts[MISSPELT]
    assert verdict.outcome == argcheck.PARSE_ERROR
    assert "unrecognized arguments: --retyr" in verdict.detail


def test_the_checker_catches_a_value_the_flag_refuses(verdicts):
    verdict = verdicts[BAD_VALUE]
    assert verdict.outcome == argcheck.PARSE_ERROR
    assert "argument --max-delivery-attempts" in verdict.detail


def test_the_checker_agrees_with_one_gcloud_process_per_command(sdk, deploy_commands):
    sample = [deploy_of(deploy_commands, "poll"), MISSPELT]
    separate = argcheck.check_separately(sample, sdk)
    assert [v.outcome for v in separate] == [argcheck.PARSED, argcheck.PARSE_ERROR]
    assert [v.outcome for v in argcheck.check(sample, sdk)] == [
        v.outcome for v in separate
    ]


def test_a_parsed_command_stops_at_credentials_not_later():
    verdict = argcheck.classify(
        ("gcloud",), 1, f"ERROR: (gcloud.x) {argcheck.NO_CREDENTIALS}.\n"
    )
    assert verdict.ok


def test_any_other_failure_is_not_taken_for_parsed():
    verdict = argcheck.classify(
        ("gcloud",), 1, "ERROR: (gcloud.x) Invalid value for [--region].\n"
    )
    assert (verdict.ok, verdict.outcome) == (False, argcheck.FAILED)


def test_the_upload_leaves_out_tests_and_the_local_stack(sdk, tmp_path):
    tree = [
        "main.py",
        "requirements.txt",
        "requirements-dev.txt",
        "README.md",
        "Makefile",
        "pytest.ini",
        "gateway/__init__.py",
        "gateway/http.py",
        "gateway/local/__init__.py",
        "gateway/local/devstack.py",
        "gateway/local/emulators.py",
        "gateway/local/sandbox/__init__.py",
        "gateway/local/sandbox/server.py",
        "gateway/cli/__init__.py",
        "gateway/cli/check.py",
        "examples/store-clusters.json",
        "schemas/workflows/a.json",
        "tests/test_a.py",
        "bench/b.py",
        ".venv/lib/x.py",
        ".state/ledger.db",
        "deploy/env",
        ".ci/run",
        "gateway/__pycache__/http.cpython-311.pyc",
        "gateway/auth/__pycache__/config.cpython-311.pyc",
        "gateway/local/__pycache__/devstack.cpython-311.pyc",
        "tests/__pycache__/test_a.cpython-311.pyc",
        "__pycache__/main.cpython-311.pyc",
    ]
    source = tmp_path / "source"
    for name in tree:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("")
    (source / ".gcloudignore").write_text((REPO / ".gcloudignore").read_text())
    done = subprocess.run(
        [str(sdk.gcloud), "meta", "list-files-for-upload", str(source)],
        env=argcheck.offline_env(str(tmp_path / "config")),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert set(done.stdout.split()) == {
        "main.py",
        "requirements.txt",
        "gateway/__init__.py",
        "gateway/http.py",
        "gateway/__pycache__/http.cpython-311.pyc",  # the bytecode deploy.sh compiled for the runtime
        "gateway/auth/__pycache__/config.cpython-311.pyc",
        "schemas/workflows/a.json",
    }


# --- operating it: instances, log-based metrics, the dashboard, alert policies and their channel -----------

METRIC_NAMES = {f"gateway/{path.stem}" for path in (DEPLOY / "metrics").glob("*.yaml")}


def rendered_file(argv: tuple, flag: str) -> dict:
    """The config a monitoring command reads (a dry run keeps the rendered files)."""
    return json.loads(Path(flags(argv)[flag]).read_text())


def test_webhook_keeps_the_warm_instances_and_each_function_the_max_instances_of_the_settings(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "WEBHOOK_MIN_INSTANCES=1\nWEBHOOK_MAX_INSTANCES=50\n"
                        "POLL_MAX_INSTANCES=7\nSUBMIT_MAX_INSTANCES=3\nSWEEP_MAX_INSTANCES=2\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    sizes = {fn: (flags(deploy_of(commands, fn)).get("min-instances"), flags(deploy_of(commands, fn))["max-instances"])
             for fn in FUNCTIONS}
    assert sizes == {"webhook": ("1", "50"), "poll": (None, "7"), "submit": (None, "3"), "sweep": (None, "2"),
                     "console": (None, "1")}


def test_the_instance_defaults_are_those_env_example_documents(deploy_commands):
    documented = dict(re.findall(r"^([A-Z_]+_INSTANCES)=([0-9]+)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    lib = (DEPLOY / "lib.sh").read_text()
    for name, value in documented.items():
        assert f'"${{{name}:={value}}}"' in lib, f"{name}: the default in lib.sh differs from env.example"
    webhook = flags(deploy_of(deploy_commands, "webhook"))
    assert (webhook["min-instances"], webhook["max-instances"]) == (
        documented["WEBHOOK_MIN_INSTANCES"], documented["WEBHOOK_MAX_INSTANCES"])
    assert flags(deploy_of(deploy_commands, "poll"))["max-instances"] == documented["POLL_MAX_INSTANCES"]


@pytest.mark.parametrize("settings", ["WEBHOOK_MIN_INSTANCES=30\n", "POLL_MAX_INSTANCES=many\n",
                                      "ALERT_FAILED_RATIO=2\n", "ALERT_EMAIL=a@b.c,d@e.f\n",
                                      "ALERT_CHANNEL=oncall\n"])
def test_a_bad_instance_or_alert_setting_is_refused(tmp_path, source, settings):
    name = settings.split("=")[0]
    assert name in refused_dry_run(tmp_path, source, ENV_EXAMPLE.read_text() + settings)


def test_each_log_metric_is_created_from_its_rendered_config(deploy_commands):
    created = with_prefix(deploy_commands, "logging", "metrics", "create")
    assert {argv[4] for argv in created} == METRIC_NAMES
    for argv in created:
        config = Path(flags(argv)["config-from-file"]).read_text()
        assert '"^gateway-(webhook|poll|submit|sweep|console)$"' in config  # this deployment's functions only
        assert "${" not in config


def test_a_second_deploy_updates_the_metrics_dashboard_and_policies_in_place(second_deploy):
    fake, _ = second_deploy
    calls = fake.calls()
    assert {argv[4] for argv in with_prefix(calls, "logging", "metrics", "update")} == METRIC_NAMES
    assert [argv[4] for argv in with_prefix(calls, "monitoring", "dashboards", "update")] == ["DRY_RUN_DASHBOARD"]
    assert len(with_prefix(calls, "alpha", "monitoring", "policies", "update")) == len(list((DEPLOY / "alerts").glob("*.json")))
    assert with_prefix(calls, "beta", "monitoring", "channels", "create") == []  # the email's channel exists


def test_the_alert_email_gets_a_channel_labelled_as_deploys_and_every_policy_names_it(deploy_commands):
    (lookup,) = with_prefix(deploy_commands, "beta", "monitoring", "channels", "list")
    (channel,) = with_prefix(deploy_commands, "beta", "monitoring", "channels", "create")
    assert 'labels.email_address="oncall@example.com"' in flags(lookup)["filter"]
    assert flags(channel)["type"] == "email"
    assert flags(channel)["channel-labels"] == "email_address=oncall@example.com"
    assert flags(channel)["user-labels"] == "gateway_deploy=gateway"
    policies = with_prefix(deploy_commands, "alpha", "monitoring", "policies", "create")
    assert len(policies) == len(list((DEPLOY / "alerts").glob("*.json"))) >= 6
    for argv in policies:
        assert rendered_file(argv, "policy-from-file")["notificationChannels"] == [
            f"projects/{PROJECT}/notificationChannels/DRY_RUN"]


def test_an_existing_channel_is_used_as_it_is(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + f"ALERT_CHANNEL=projects/{PROJECT}/notificationChannels/777\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    assert with_prefix(commands, "beta", "monitoring", "channels") == []
    for argv in with_prefix(commands, "alpha", "monitoring", "policies", "create"):
        assert rendered_file(argv, "policy-from-file")["notificationChannels"] == [
            f"projects/{PROJECT}/notificationChannels/777"]


def test_the_dashboard_and_alerts_watch_this_deployments_subscriptions_and_queue(deploy_commands):
    (dashboard,) = with_prefix(deploy_commands, "monitoring", "dashboards", "create")
    text = json.dumps(rendered_file(dashboard, "config-from-file"))
    # Eventarc's subscriptions of poll and submit, as deploy found them, the kept dead letters, the queue.
    for name in ("eventarc-europe-west1-gateway-poll-000000-sub-000", "eventarc-europe-west1-gateway-submit-000000-sub-000",
                 "workflow-jobs-dead-letter-kept", "workflow-requests-dead-letter-kept", "gateway-poll-checks"):
        assert name in text


def thing_created(argv: tuple) -> tuple[str, str] | None:
    """(kind, name) of what a deploy command creates, or None."""
    words = tuple(word for word in argv if not word.startswith("--"))
    if words[1:3] == ("functions", "deploy"):
        return "function", words[3]
    if words[1:3] == ("monitoring", "dashboards") and words[3] == "create":
        return "dashboard", rendered_file(argv, "config-from-file")["displayName"]
    if words[1:4] == ("alpha", "monitoring", "policies") and words[4] == "create":
        return "policy", rendered_file(argv, "policy-from-file")["displayName"]
    if words[1:4] == ("beta", "monitoring", "channels") and words[4] == "create":
        return "channel", flags(argv)["user-labels"]
    if "create" not in words[:5]:
        return None
    at = words.index("create")
    rest = [word for word in words[at + 1:] if word != "http"]  # scheduler jobs create http NAME
    return " ".join(words[1:at]), rest[0] if rest else ""  # a composite index has no name


def thing_deleted(argv: tuple, before: tuple | None) -> tuple[str, str] | None:
    """(kind, name) of what a teardown command deletes (a dashboard or policy by the title its lookup named)."""
    words = tuple(word for word in argv if not word.startswith("--"))
    if "delete" not in words[:5]:
        return None
    at = words.index("delete")
    kind, name = " ".join(words[1:at]), words[at + 1]
    lookup = flags(before or ())
    if kind == "functions":
        return "function", name
    if kind in ("monitoring dashboards", "alpha monitoring policies"):
        (title,) = re.findall(r'^displayName="(.*)"$', lookup["filter"])
        return ("dashboard" if "dashboards" in kind else "policy"), title.replace('\\"', '"')
    if kind == "beta monitoring channels":
        (label,) = re.findall(r'^userLabels\.gateway_deploy="(.*)"$', lookup["filter"])
        return "channel", f"gateway_deploy={label}"
    if kind == "iam service-accounts":
        return kind, name.split("@")[0]
    return kind, name


# Kept on purpose (teardown.sh says so): the ledger's database with its indexes, and the secrets unless
# --delete-secrets.
KEPT = {"firestore databases", "firestore indexes composite", "secrets"}


def test_teardown_removes_each_thing_deploy_creates(deploy_commands, teardown_commands):
    made = {thing_created(argv) for argv in deploy_commands} - {None}
    gone = {thing_deleted(argv, before) for before, argv in zip((None, *teardown_commands), teardown_commands,
                                                                 strict=False)} - {None}
    assert {kind for kind, _ in made} >= {"function", "dashboard", "policy", "channel", "logging metrics",
                                          "pubsub topics", "tasks queues", "scheduler jobs"}
    assert {thing for thing in made if thing[0] not in KEPT} - gone == set()


def test_teardown_with_delete_secrets_removes_the_secrets_too(source, deploy_commands):
    made = {thing_created(argv) for argv in deploy_commands if argv[1] == "secrets"} - {None}
    teardown = dry_run("teardown.sh", source, "--delete-secrets")
    assert made and made <= {thing_deleted(argv, None) for argv in teardown if argv[1] == "secrets"} - {None}


def test_teardown_deletes_policies_before_the_channel_they_name(teardown_commands):
    kinds = [argv[1:4] for argv in teardown_commands if "delete" in argv[:5]]
    assert kinds.index(("beta", "monitoring", "channels")) > max(
        index for index, kind in enumerate(kinds) if kind == ("alpha", "monitoring", "policies"))


def test_the_monitoring_commands_parse_with_the_real_gcloud(verdicts, deploy_commands, teardown_commands):
    monitoring = [argv for argv in [*deploy_commands, *teardown_commands]
                  if argv[1] == "logging" or "monitoring" in argv[1:3]]
    assert len(monitoring) > 30
    assert failures(verdicts, monitoring) == []


# --- build identity, webhook access, threads, former console members ---------------------------------

def test_every_function_is_built_by_the_gateways_build_account_with_the_builder_role(deploy_commands):
    account = f"projects/{PROJECT}/serviceAccounts/{sa('build').removeprefix('serviceAccount:')}"
    for fn in FUNCTIONS:
        assert flags(deploy_of(deploy_commands, fn))["build-service-account"] == account
    roles = {flags(a)["role"] for a in with_prefix(deploy_commands, "projects", "add-iam-policy-binding")
             if flags(a)["member"] == sa("build")}
    assert roles == set(BUILD_ROLES)


def test_a_named_build_account_is_used_as_is(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "BUILD_SERVICE_ACCOUNT=builder@other-project.iam.gserviceaccount.com\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    assert flags(deploy_of(commands, "webhook"))["build-service-account"] == (
        f"projects/{PROJECT}/serviceAccounts/builder@other-project.iam.gserviceaccount.com")
    assert "gateway-build" not in {a[4] for a in with_prefix(commands, "iam", "service-accounts", "create")}
    assert not [a for a in commands if "builder@other-project" in str(flags(a).get("member", ""))]


@pytest.mark.parametrize("fn, concurrency", [("webhook", "40"), ("poll", "40"), ("submit", "20"), ("sweep", "1"),
                                             ("console", "20")])
def test_each_function_serves_as_many_requests_at_once_as_it_is_sent(deploy_commands, fn, concurrency):
    deployed = deploy_of(deploy_commands, fn)
    assert flags(deployed)["concurrency"] == concurrency and env_vars(deployed)["THREADS"] == concurrency


def test_threads_join_the_alternate_delimiter_when_operators_are_listed(rotating):
    deploy, _ = rotating
    assert env_vars(deploy_of(deploy, "webhook"))["THREADS"] == "40"


def test_a_domain_restricted_project_gets_a_private_webhook_without_the_invoker_check(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "WEBHOOK_ACCESS=no-invoker-iam-check\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    webhook = deploy_of(commands, "webhook")
    (opened,) = [a for a in with_prefix(commands, "run", "services", "update") if a[4] == "gateway-webhook"
                 and "no-invoker-iam-check" in flags(a)]
    assert flags(webhook).get("no-allow-unauthenticated") is True and "allow-unauthenticated" not in flags(webhook)
    assert commands.index(webhook) < commands.index(opened)
    assert not [a for a in commands if flags(a).get("member") == "allUsers"]


def test_an_unknown_webhook_access_is_refused(tmp_path, source):
    assert "WEBHOOK_ACCESS must be" in refused_dry_run(tmp_path, source, ENV_EXAMPLE.read_text() + "WEBHOOK_ACCESS=open\n")


def test_someone_no_longer_in_console_invokers_loses_both_console_roles(deploy_commands):
    # the dry run pretends user:former-operator@example.com was granted by an earlier deploy
    removed = {(flags(a)["member"], flags(a)["role"]) for a in with_prefix(deploy_commands, "run", "services",
                                                                           "remove-iam-policy-binding")
               if a[4] == "gateway-console"}
    assert removed == {("user:former-operator@example.com", "roles/run.invoker"),
                       ("user:former-operator@example.com", "roles/run.viewer")}


def test_a_listed_console_invoker_is_not_revoked(tmp_path, source):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "CONSOLE_INVOKERS=user:former-operator@example.com\n")
    commands = dry_run("deploy.sh", source, env_file=env_file)
    assert with_prefix(commands, "run", "services", "remove-iam-policy-binding") == []


def test_teardown_removes_the_default_subscriber_deploy_subscriber_makes(teardown_commands, source):
    subscriber = dry_run("deploy-subscriber.sh", source)
    created = {a[3] for a in with_prefix(subscriber, "functions", "deploy")}
    created_subscriptions = {a[4] for a in with_prefix(subscriber, "pubsub", "subscriptions", "create")}
    created_accounts = {a[4] for a in with_prefix(subscriber, "iam", "service-accounts", "create")}

    assert created <= {a[3] for a in with_prefix(teardown_commands, "functions", "delete")}
    assert created_subscriptions <= {a[4] for a in with_prefix(teardown_commands, "pubsub", "subscriptions", "delete")}
    assert {f"{n}@{PROJECT}.iam.gserviceaccount.com" for n in created_accounts} <= {
        a[4] for a in with_prefix(teardown_commands, "iam", "service-accounts", "delete")}


# --- bytecode shipped with the source ------------------------------------------------------------------------


def ship_bytecode(source: Path, runtime: str) -> subprocess.CompletedProcess:
    """deploy.sh's own ship_bytecode function, run on `source` (its text taken from the script)."""
    text = (REPO / "deploy" / "deploy.sh").read_text()
    function = re.search(r"^ship_bytecode\(\) \{\n.*?^\}\n", text, re.S | re.M).group(0)
    script = f"set -euo pipefail\nDRY_RUN=0\nsay() {{ printf '%s\\n' \"$*\"; }}\n{function}ship_bytecode\n"
    return subprocess.run(["bash", "-c", script], env={**os.environ, "SOURCE_DIR": str(source), "RUNTIME": runtime},
                          capture_output=True, text=True, timeout=120, check=True)


def test_the_gateway_ships_bytecode_the_runtime_reads_whatever_mtime_the_upload_gives_its_sources(tmp_path):
    import sys

    source = tmp_path / "source"
    shutil.copytree(REPO / "gateway", source / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    here = f"python{sys.version_info[0]}{sys.version_info[1]}"
    # The deployer's tree holds timestamp .pyc files already (its tests and make dev ran): replaced, not kept.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-x", "/gateway/(local|cli)/", str(source / "gateway")],
                   check=True, capture_output=True)
    assert "bytecode of gateway/" in ship_bytecode(source, here).stdout
    compiled = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.pyc"))
    assert "gateway/__pycache__/intake.cpython-311.pyc".replace("311", here[6:]) in compiled
    assert not [p for p in compiled if p.startswith(("gateway/local/", "gateway/cli/"))]  # never uploaded
    later = time.time() + 3600  # the upload's unpacking gives the sources new times
    for path in source.rglob("*.py"):
        os.utime(path, (later, later))
    done = subprocess.run([sys.executable, "-v", "-c", "import gateway.intake"], cwd=source, capture_output=True,
                          text=True, timeout=60, check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    read = [line for line in done.stderr.splitlines() if line.startswith("# code object from")]
    assert any(line.endswith("gateway/__pycache__/intake.cpython-311.pyc'".replace("311", here[6:])) for line in read)


def test_no_bytecode_is_shipped_for_a_runtime_of_another_python(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO / "gateway", source / "gateway", ignore=shutil.ignore_patterns("__pycache__", "local", "cli"))
    import sys

    said = ship_bytecode(source, f"python3{sys.version_info[1] - 1}").stdout
    assert "no bytecode shipped" in said and not list(source.rglob("*.pyc"))
