"""The whole stack on one machine: Pub/Sub and Cloud Tasks emulators, local CARTO job API, `webhook`
and `poll` (and, when asked, `submit` and `console`) under functions-framework, topics, a push
subscription and the check queue wired up.

`LocalStack` is also what the integration tests, benchmarks and the soak run start. Dev-only:
kept out of the deployed source by .gcloudignore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.local import emulators
from gateway.local.demos import DEMO_SCHEMAS_DIR, DEMO_SECRETS, local_schemas_dir, workflow_files

ROOT = Path(__file__).resolve().parents[2]
DEV_TOKEN = "dev-carto-token"
DEV_OPERATOR_TOKEN = "dev-operator-token-not-for-production-use"  # GATEWAY_OPERATOR_TOKENS of the local stack


@dataclass
class LocalStack:
    """Start with `start()`, stop with `stop()`; ports of 0 are chosen free."""

    state_dir: Path
    project: str = "local-project"
    schemas_dir: Path = DEMO_SCHEMAS_DIR
    webhook_port: int = 0
    poll_port: int = 0
    submit_port: int | None = None
    console_port: int | None = None
    sandbox_port: int = 0
    pubsub_port: int = 0
    pubsub_host: str | None = None
    tasks_port: int = 0
    tasks_host: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    sandbox_duration_s: float = 1.0
    sandbox_procedures: Mapping[str, Any] | None = None
    sandbox_dialect: str | None = None  # None: GATEWAY_SANDBOX_DIALECT of env or the environment, else workflows
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    sandbox: Any = None
    pubsub: emulators.Emulator | None = None
    tasks: emulators.Emulator | None = None

    def start(self) -> LocalStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.log_dir or self.state_dir
        self.webhook_port = self.webhook_port or emulators.free_port()
        self.poll_port = self.poll_port or emulators.free_port()
        try:
            self._start_pubsub()
            self._start_tasks()
            self._start_sandbox()
            self._start_functions()
            self._wire_topics()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def topics(self) -> dict[str, str]:
        env = self.function_env()
        return {"jobs": env["GATEWAY_JOBS_TOPIC"], "events": env["GATEWAY_EVENTS_TOPIC"],
                "requests": env["GATEWAY_REQUESTS_TOPIC"]}

    @property
    def tasks_queue(self) -> str:
        return self.function_env()["GATEWAY_TASKS_QUEUE"]

    def url(self, name: str) -> str:
        port = {"webhook": self.webhook_port, "poll": self.poll_port, "submit": self.submit_port,
                "console": self.console_port}[name]
        return f"http://127.0.0.1:{port}"

    def function_env(self) -> dict[str, str]:
        """The environment of the function processes: the caller's settings over the stack's defaults."""
        base = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "GATEWAY_SCHEMAS_DIR": str(self.schemas_dir),
            "CARTO_API_BASE_URL": self.sandbox.url if self.sandbox else "",
            "CARTO_API_TOKEN": DEV_TOKEN,
            "GATEWAY_LEDGER": f"sqlite:///{self.state_dir / 'ledger.sqlite3'}",
            "GATEWAY_JOBS_TOPIC": "workflow-jobs",
            "GATEWAY_EVENTS_TOPIC": "workflow-job-events",
            "GATEWAY_REQUESTS_TOPIC": "workflow-requests",
            **DEMO_SECRETS,
            "GATEWAY_TASKS_QUEUE": f"projects/{self.project}/locations/local/queues/poll-checks",
            "GATEWAY_POLL_URL": f"{self.url('poll')}/",
            "GATEWAY_OPERATOR_TOKENS": DEV_OPERATOR_TOKEN,
        }
        merged = {**base, **{k: v for k, v in self.env.items()}}
        if self.pubsub_host:
            merged["PUBSUB_EMULATOR_HOST"] = self.pubsub_host
        if self.tasks_host:
            merged["CLOUD_TASKS_EMULATOR_HOST"] = self.tasks_host
        return merged

    def _start_pubsub(self) -> None:
        if self.pubsub_host is None:
            self.pubsub = emulators.Emulator.start("pubsub", self.pubsub_port or None, project=self.project,
                                                   log_dir=self.log_dir)
            self.pubsub_host = self.pubsub.host
        os.environ["PUBSUB_EMULATOR_HOST"] = self.pubsub_host

    def _start_tasks(self) -> None:
        if self.tasks_host is None:
            self.tasks = emulators.Emulator.start("tasks", self.tasks_port or None, log_dir=self.log_dir,
                                                  queues=(self.tasks_queue,))
            self.tasks_port, self.tasks_host = self.tasks.port, self.tasks.host

    def restart_tasks(self) -> None:
        """Stop the Cloud Tasks emulator (every pending task is lost: it keeps them in memory) and start
        it again on the same port, with the queue."""
        assert self.tasks is not None, "the stack did not start the Cloud Tasks emulator"
        self.tasks.stop()
        self.tasks = emulators.Emulator.start("tasks", self.tasks_port, log_dir=self.log_dir,
                                              queues=(self.tasks_queue,))

    def _start_sandbox(self) -> None:
        from gateway.local.sandbox import load_procedures, serve
        from gateway.local.sandbox.procedures import apply_overrides

        self.state_dir.mkdir(parents=True, exist_ok=True)
        overrides = self.env.get("GATEWAY_SANDBOX_PROCEDURES") or os.environ.get("GATEWAY_SANDBOX_PROCEDURES")
        procedures = load_procedures(str(self.schemas_dir), overrides)
        if self.sandbox_procedures:
            procedures = apply_overrides(procedures or {}, self.sandbox_procedures)
        token = self.function_env()["CARTO_API_TOKEN"]
        dialect = (self.sandbox_dialect or self.env.get("GATEWAY_SANDBOX_DIALECT")
                   or os.environ.get("GATEWAY_SANDBOX_DIALECT") or "workflows")
        self.sandbox = serve(self.sandbox_port, token=token, procedures=procedures,
                             db_path=str(self.state_dir / "sandbox.sqlite3"),
                             default_duration_s=self.sandbox_duration_s, dialect=dialect)
        self.sandbox_port = self.sandbox.port

    def _start_functions(self) -> None:
        targets = {"webhook": (self.webhook_port, "http"), "poll": (self.poll_port, "cloudevent")}
        if self.submit_port is not None:
            self.submit_port = self.submit_port or emulators.free_port()
            targets["submit"] = (self.submit_port, "cloudevent")
        if self.console_port is not None:
            self.console_port = self.console_port or emulators.free_port()
            targets["console"] = (self.console_port, "http")
        for target, (port, signature) in targets.items():
            self.processes[target] = self._function(target, port, signature)
        for target, (port, _) in targets.items():
            emulators.wait_for_port(port, 60, self.processes[target])

    def _function(self, target: str, port: int, signature: str) -> subprocess.Popen:
        env = {**os.environ, **self.function_env()}
        args = [sys.executable, "-m", "functions_framework", "--target", target, "--source", str(ROOT / "main.py"),
                "--signature-type", signature, "--host", "127.0.0.1", "--port", str(port)]
        assert self.log_dir is not None
        log = open(self.log_dir / f"{target}.log", "ab")
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wire_topics(self) -> None:
        topics = self.topics
        push = {"poll-push": f"{topics['jobs']} {self.url('poll')}/"}
        if self.submit_port:
            push["submit-push"] = f"{topics['requests']} {self.url('submit')}/"
        emulators.ensure_topics(self.project, list(topics.values()), push=push)

    def stop(self) -> None:
        for process in self.processes.values():
            emulators.stop_process_group(process)
        self.processes.clear()
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None
        if self.pubsub is not None:
            self.pubsub.stop()
            self.pubsub = None
        if self.tasks is not None:
            self.tasks.stop()
            self.tasks = None


def run(args: Any) -> int:
    """`python -m gateway dev`: check the workflows, start everything, print how to send a webhook, sweep
    until Ctrl-C. Secrets come from the environment, where the CLI has put `.env`'s."""
    try:
        emulators.find("pubsub")
        emulators.find("tasks")
    except emulators.EmulatorMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    env = {k: v for k, v in os.environ.items() if k.startswith(("GATEWAY_", "CARTO_")) or "_SECRET" in k}
    state = Path(getattr(args, "state_dir", None) or ROOT / ".state").resolve()
    stack = LocalStack(state_dir=state, project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project"),
                       schemas_dir=local_schemas_dir(getattr(args, "schemas", None) or ROOT / "schemas",
                                                     demos=args.demos).resolve(),
                       webhook_port=args.webhook_port, poll_port=args.poll_port, submit_port=args.submit_port,
                       console_port=args.console_port, sandbox_port=args.sandbox_port,
                       pubsub_port=args.pubsub_port, tasks_port=args.tasks_port, env=env)
    problem = check_workflows(stack)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    import signal

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and `timeout` stop the children too
    _log_sandbox_to(state / "carto.log")
    stack.start()
    try:
        _print_banner(stack)
        threading.Thread(target=_echo_refusals, args=(stack.log_dir / "webhook.log",), daemon=True).start()
        _sweep_forever(stack)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


def check_workflows(stack: LocalStack) -> str | None:
    """What stops the functions from starting, said before anything starts: a bad workflow file, an unset secret."""
    from gateway.errors import ConfigError
    from gateway.workflows import load_registry

    try:
        load_registry(stack.schemas_dir, {**os.environ, **stack.function_env()})
    except ConfigError as exc:
        return (f"{exc}\nA secret of your workflow: `python -m gateway new NAME --rotate-secret` writes a fresh one to "
                ".env, which make dev reads.")
    return None


def _log_sandbox_to(path: Path) -> None:
    """The local CARTO job API's request lines go to a file, not over the terminal."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    sandbox = logging.getLogger("gateway.local.sandbox")
    sandbox.addHandler(handler)
    sandbox.setLevel(logging.INFO)
    sandbox.propagate = False


REFUSALS = ("auth.refused", "delivery.refused", "operator.refused")


def refusal_line(line: str) -> str | None:
    """The terminal's line for one webhook log line that refused a request (its reason, never a secret: the
    log holds none), else None."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("event") not in REFUSALS:
        return None
    if entry["event"] == "delivery.refused" and entry.get("code") in ("unauthenticated", "bad-signature"):
        return None  # its auth.refused line said why
    where = " ".join(str(entry[k]) for k in ("route", "status", "code") if entry.get(k) is not None)
    return f"refused  {where}: {entry.get('message', '')}"


def _echo_refusals(path: Path, every_s: float = 0.5) -> None:
    """Follow the webhook's log and print why a request was refused."""
    with open(path, encoding="utf-8", errors="replace") as log:
        log.seek(0, os.SEEK_END)
        while True:
            line = log.readline()
            if not line:
                time.sleep(every_s)
                continue
            shown = refusal_line(line)
            if shown:
                print(shown, flush=True)


def _banner_workflow(stack: LocalStack) -> tuple[str, str]:
    """The workflow the banner's example sends to, and its secret variable: the first one the stack loaded."""
    files = workflow_files(stack.schemas_dir)
    name = files[0].stem if files else "store-clusters"
    if "store-clusters" in [path.stem for path in files]:
        name = "store-clusters"
    return name, name.upper().replace("-", "_") + "_SECRET"


def _print_banner(stack: LocalStack) -> None:
    env = stack.function_env()
    workflow, secret_env = _banner_workflow(stack)
    demos = " (the demos of examples/workflows/: schemas/workflows/ holds none)" \
        if stack.schemas_dir == DEMO_SCHEMAS_DIR else ""
    print(f"""
Local stack is up, workflows from {stack.schemas_dir}/workflows{demos}.
Logs in {stack.log_dir}/ (webhook.log, poll.log, submit.log, console.log, carto.log); refused webhooks are
printed here with their reason.
  webhook   {stack.url('webhook')}      (functions-framework, target webhook)
  poll      {stack.url('poll')}      (push subscription poll-push on {env['GATEWAY_JOBS_TOPIC']})
  submit    {stack.url('submit')}      (push subscription submit-push on {env['GATEWAY_REQUESTS_TOPIC']})
  console   {stack.url('console')}/     (operators' console: deliveries, cancel, re-run; open it in a browser)
  CARTO     {stack.sandbox.url}      (local CARTO job API, {stack.sandbox.api.dialect} dialect)
  Pub/Sub   {stack.pubsub_host}       (emulator, project {stack.project})
  Tasks     {stack.tasks_host}        (Cloud Tasks emulator, queue {stack.tasks_queue})

In another terminal, send a signed webhook ({secret_env} comes from .env, or the demos' own):
  .venv/bin/python -m gateway send {workflow} examples/{workflow}.json --url {stack.url('webhook')}
and watch the completion events:
  PUBSUB_EMULATOR_HOST={stack.pubsub_host} GOOGLE_CLOUD_PROJECT={stack.project} .venv/bin/python -m gateway events
Follow or cancel a job as an operator (the token of GATEWAY_OPERATOR_TOKENS):
  GATEWAY_OPERATOR_TOKENS={env['GATEWAY_OPERATOR_TOKENS'].split(',')[0]} \
    .venv/bin/python -m gateway status JOB_ID --url {stack.url('webhook')}
Ctrl-C stops everything.""", flush=True)


def _sweep_forever(stack: LocalStack, every_s: float = 30.0) -> None:
    """Stand in for Cloud Scheduler: run the sweeper every `every_s` seconds."""
    from gateway.app import App

    app = App.from_env({**os.environ, **stack.function_env()})
    stop = threading.Event()
    while not stop.wait(every_s):
        report = app.sweeper.sweep()
        if any(v for v in report.as_dict().values()):
            print(f"sweep: {report.as_dict()}", flush=True)
