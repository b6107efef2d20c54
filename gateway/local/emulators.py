"""Finding and starting the real Google Cloud emulators (Pub/Sub, Firestore, Cloud Tasks) for dev and tests.

Pub/Sub and Firestore ship with the gcloud SDK (`platform/pubsub-emulator`,
`platform/cloud-firestore-emulator`) and need Java. Cloud Tasks has no Google emulator: the
`gcloud-tasks-emulator` package (requirements-emulators.txt, installed into the venv) serves the Cloud
Tasks gRPC API and calls each task's HTTP target when it is due; gateway/local/tasks_emulator.py runs
it on 127.0.0.1 (the package alone listens on every interface).
Nothing here is deployed (.gcloudignore).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = ("install the Google Cloud SDK emulators, e.g. `apt-get install google-cloud-cli "
                "google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator openjdk-17-jre-headless` "
                "or `gcloud components install pubsub-emulator cloud-firestore-emulator beta`")
_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk",
              "~/google-cloud-sdk", "/google-cloud-sdk")
_PROGRAMS = {
    "pubsub": ("cloud-pubsub-emulator", "platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
    "firestore": ("cloud_firestore_emulator", "platform/cloud-firestore-emulator/cloud_firestore_emulator"),
}


TASKS_INSTALL_HINT = ("install the Cloud Tasks emulator into the venv: "
                      "`.venv/bin/pip install --no-deps -r requirements-emulators.txt` (make does it)")


class EmulatorMissing(RuntimeError):
    """The emulator (or Java) is not installed on this machine."""


def _sdk_roots() -> list[Path]:
    roots = [Path(os.environ["CLOUDSDK_ROOT_DIR"])] if os.environ.get("CLOUDSDK_ROOT_DIR") else []
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(Path(os.path.realpath(gcloud)).parent.parent)
    roots.extend(Path(r).expanduser() for r in _SDK_ROOTS)
    return roots


def find(kind: str) -> Path:
    """The emulator's launcher, from PATH or the gcloud SDK; EmulatorMissing naming the install command."""
    if kind == "tasks":
        if importlib.util.find_spec("gcloud_tasks_emulator") is None:
            raise EmulatorMissing(f"gcloud-tasks-emulator is not installed for {sys.executable}; {TASKS_INSTALL_HINT}")
        return Path(__file__).with_name("tasks_emulator.py")
    program, relative = _PROGRAMS[kind]
    on_path = shutil.which(program)
    if on_path:
        return Path(on_path)
    for root in _sdk_roots():
        candidate = root / relative
        if candidate.is_file():
            if not shutil.which("java"):
                raise EmulatorMissing(f"the {kind} emulator needs Java 17+; {INSTALL_HINT}")
            return candidate
    raise EmulatorMissing(f"no {kind} emulator found on PATH or under a gcloud SDK; {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@dataclass
class Emulator:
    """A running emulator process on loopback."""

    kind: str
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, kind: str, port: int | None = None, *, project: str = "local-project",
              log_dir: Path | None = None, timeout_s: float = 60.0, queues: tuple[str, ...] = ()) -> Emulator:
        """Start `kind` on `port` (a free one if None) and wait until it listens. `queues` (full paths)
        are created at start by the Cloud Tasks emulator, which keeps everything in memory."""
        launcher = find(kind)
        port = port or free_port()
        args = [str(launcher), "--host=127.0.0.1", f"--port={port}"]
        if kind == "pubsub":
            args.append(f"--project={project}")
        elif kind == "tasks":
            args = [sys.executable, str(launcher), f"--port={port}", *(f"-d={queue}" for queue in queues)]
        else:
            args = [str(launcher), "start", "--host=127.0.0.1", f"--port={port}"]
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        log_path = log_dir / f"{kind}-emulator-{port}.log"
        log_file = open(log_path, "wb")
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        emulator = cls(kind, port, process, log_path)
        try:
            wait_for_port(port, timeout_s, process)
        except Exception:
            emulator.stop()
            raise
        return emulator

    def stop(self) -> None:
        """Stop the emulator and every child it started (the launchers are shell scripts around Java)."""
        if self.process is not None:
            stop_process_group(self.process)


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process started with `start_new_session=True` and all its children: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def ensure_topics(project: str, topics: list[str], *, push: dict[str, str] | None = None,
                  pull: dict[str, str] | None = None, ack_deadline_s: int = 600) -> None:
    """Create topics and subscriptions on the emulator if absent (PUBSUB_EMULATOR_HOST must be set).

    `push` maps subscription name -> "topic push-endpoint"; `pull` maps subscription name -> topic.
    """
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for topic in topics:
        try:
            publisher.create_topic(name=publisher.topic_path(project, topic))
        except exceptions.AlreadyExists:
            pass
    for name, spec in (push or {}).items():
        topic, endpoint = spec.split(" ", 1)
        _subscribe(subscriber, project, name, topic, ack_deadline_s, {"push_endpoint": endpoint})
    for name, topic in (pull or {}).items():
        _subscribe(subscriber, project, name, topic, ack_deadline_s, None)
    subscriber.close()


def _subscribe(subscriber, project: str, name: str, topic: str, ack_deadline_s: int, push: dict | None) -> None:
    from google.api_core import exceptions

    request = {"name": subscriber.subscription_path(project, name), "topic": f"projects/{project}/topics/{topic}",
               "ack_deadline_seconds": ack_deadline_s}
    if push:
        request["push_config"] = push
    try:
        subscriber.create_subscription(request=request)
    except exceptions.AlreadyExists:
        pass
