"""The servers the benchmarks run against, all on loopback, sharing one Pub/Sub emulator.

- the load stack (`LocalStack`, project bench-load): `webhook` under load; its jobs topic has no
  subscription, so tracking messages are published for real but nobody polls them (that would be a
  second, unrelated load on the same two cores);
- the bare function (bench/bare.py) and the floor of the full path (bench/floor.py), started with the
  same command and environment as `webhook`;
- the completion stacks (`LocalStack`, one per job length, projects bench-completion-<length>):
  `webhook` + `poll` with the shipped polling settings and a push subscription, as in production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import procs
from gateway.local import emulators
from gateway.local.demos import DEV_SECRET
from gateway.local.devstack import LocalStack

BARE_SOURCE = Path(__file__).with_name("bare.py")
FLOOR_SOURCE = Path(__file__).with_name("floor.py")
SECRET = DEV_SECRET  # the dev stack's store-clusters secret (base64 of a public phrase; not a real secret)


def quick_acks_in_sandbox() -> None:
    """Answer from the local CARTO API without Nagle's 40 ms stall.

    http.server writes a response's headers and body in two send() calls; with Nagle on, the body
    waits for the client's delayed ACK, so every call to the sandbox took 44 ms here (1.7 ms of CPU),
    which capped the webhook at ~180/s on 8 threads. Real CARTO has no such stall. Setting the
    standard `StreamRequestHandler.disable_nagle_algorithm` switch is a no-op once the sandbox sets it.
    """
    from gateway.local.sandbox import server

    server._Handler.disable_nagle_algorithm = True


def start_emulator(log_dir: Path) -> emulators.Emulator:
    """The real Pub/Sub emulator on a free port."""
    return emulators.Emulator.start("pubsub", project="bench-load", log_dir=log_dir)


def start_firestore(log_dir: Path) -> emulators.Emulator:
    """The real Firestore emulator on a free port (the deployed configuration's ledger)."""
    return emulators.Emulator.start("firestore", log_dir=log_dir)


def firestore_env(emulator: emulators.Emulator, collection: str = "bench-deliveries") -> dict[str, str]:
    """What turns a function of the load stack into the deployed configuration: the Firestore ledger."""
    return {"GATEWAY_LEDGER": f"firestore://{collection}", "FIRESTORE_EMULATOR_HOST": emulator.host,
            "BENCH_FLOOR_COLLECTION": f"{collection}-floor"}


def load_stack(state_dir: Path, pubsub_host: str) -> LocalStack:
    """A LocalStack whose tracking messages go to a topic without subscriptions."""
    stack = LocalStack(state_dir=state_dir, project="bench-load", pubsub_host=pubsub_host).start()
    _delete_subscription(stack.project, "poll-push")
    return stack


def _delete_subscription(project: str, name: str) -> None:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    subscriber.delete_subscription(subscription=subscriber.subscription_path(project, name))
    subscriber.close()


def warm_firestore(emulator: emulators.Emulator, project: str, writes: int = 200) -> None:
    """Writes and reads through the emulator until its JVM has compiled its paths (its first calls take
    seconds), so the first cold start is not charged for the emulator's own warm-up."""
    from gateway.ledger.firestore_rest import DocumentsRest

    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        documents = DocumentsRest(project, None, "bench-warm-up")
        for n in range(writes):
            stamp = documents.create(f"doc-{n}", {"n": n})
            documents.update(f"doc-{n}", {"n": n + 1}, (), stamp)
            documents.get(f"doc-{n}")
    finally:
        if previous is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous


def start_function(stack: LocalStack, target: str, source: Path, log_dir: Path,
                   env: Mapping[str, str] | None = None, name: str | None = None) -> tuple[Any, int]:
    """A function (bare, floor, a second webhook) on a free port, with the webhook's environment and
    `env` over it; (process, port)."""
    port = emulators.free_port()
    process = procs.spawn_function(target, source, port, {**stack.function_env(), **(env or {})},
                                   log_dir / f"{name or target}.log")
    emulators.wait_for_port(port, 60, process)
    return process, port


def command_shape(words: list[str]) -> list[str]:
    """A server's command line with the values of --target, --source and --port blanked."""
    shape = list(words)
    for flag in ("--target", "--source", "--port"):
        if flag in shape:
            shape[shape.index(flag) + 1] = "*"
    return shape


def same_server_settings(webhook_pid: int, other_pid: int) -> bool:
    """Whether both servers run the same command line but for target, source and port."""
    def words(pid: int) -> list[str]:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]

    return command_shape(words(webhook_pid)) == command_shape(words(other_pid))


def completion_schemas(target: Path, durations: Mapping[str, float]) -> tuple[Path, dict[str, Any]]:
    """schemas/ plus one copy of store-clusters per job length, each calling its own procedure; and the
    sandbox overrides that give each procedure its run time."""
    shutil.copytree(procs.ROOT / "schemas", target, dirs_exist_ok=True)  # the meta-schema; no workflow
    template = json.loads((procs.ROOT / "examples" / "workflows" / "store-clusters.json").read_text())
    overrides: dict[str, Any] = {}
    for name, seconds in durations.items():
        procedure = f"bench-project.bench.{name.replace('-', '_')}"
        definition = {**template, "query": re.sub(r"`[^`]+`", f"`{procedure}`", template["query"], count=1)}
        (target / "workflows" / f"{name}.json").write_text(json.dumps(definition, indent=2))
        overrides[procedure] = {"duration_s": seconds}
    return target, overrides


def completion_stack(state_dir: Path, pubsub_host: str, durations: Mapping[str, float], project: str) -> LocalStack:
    """webhook + poll with the shipped polling settings, a push subscription, and a job length per workflow."""
    schemas, overrides = completion_schemas(state_dir / "schemas", durations)
    return LocalStack(state_dir=state_dir, project=project, pubsub_host=pubsub_host, schemas_dir=schemas,
                      sandbox_procedures=overrides).start()


def http_status(port: int, raw: bytes, timeout_s: float = 30.0) -> int | None:
    """Send one raw HTTP request; its status, or None while nothing listens yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
            conn.sendall(raw)
            head = b""
            while b"\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return None
                head += chunk
            return int(head.split(b" ", 2)[1])
    except (ConnectionRefusedError, ConnectionResetError):
        return None
