"""Admission: the fast path against the code before admission, and the queued path.

`python -m bench.admission` (part of `make bench`). On the local stack (Pub/Sub and Cloud Tasks
emulators, the local CARTO job API), in one run:

- fast path: an uncapped workflow with CARTO up, webhook of this checkout against webhook of the
  baseline (the commit before admission, extracted with `git archive`: `--baseline REV`), in
  alternating rounds with the same environment, schemas and CARTO: sequential latency (p50, p95)
  and the rate at 8 senders. Also counted: check tasks in the queue after the fast-path rounds
  (none: the webhook creates no task on that path) and ledger records per delivery (one, as before).
- queued path: CARTO down (every call 503); deliveries accepted per second at 8 senders (each
  `202 queued`); then CARTO back: seconds to the first and the last job created, and the drain rate
  (jobs created per second from CARTO's return to the last).

Writes bench/admission-results.json (or --results) and prints the Markdown rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import requests

from bench import procs
from gateway.local import emulators
from gateway.local.demos import DEV_SECRET, write_demo_schemas
from gateway.local.devstack import LocalStack
from tests.stackutil import signed_headers

BENCH = Path(__file__).resolve().parent
PROJECT = "bench-admission"
BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
SENDERS = 8


def baseline_commit() -> str:
    """The parent of the first commit of admission (the one that added gateway/ledger/slots.py)."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "gateway/ledger/slots.py"],
                           cwd=procs.ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not added:
        raise SystemExit("no commit adds gateway/ledger/slots.py: name the baseline with --baseline REV")
    return f"{added[-1]}^"


def extract(rev: str, target: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=procs.ROOT, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def spawn_webhook(root: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`webhook` of the checkout at `root`, with the command LocalStack uses."""
    import os

    with open(log, "ab") as out:
        return subprocess.Popen(procs.function_command("webhook", root / "main.py", port), cwd=root,
                                env={**os.environ, **env, "PYTHONPATH": str(root)}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def post(session: requests.Session, url: str) -> tuple[int, float, dict[str, Any]]:
    body = json.dumps({**BODY, "nonce": uuid.uuid4().hex}).encode()
    started = time.perf_counter()
    answer = session.post(url, data=body, headers=signed_headers(DEV_SECRET, body), timeout=60)
    return answer.status_code, time.perf_counter() - started, answer.json()


def sequential(url: str, count: int) -> list[float]:
    session = requests.Session()
    post(session, url)  # warm: the instance builds its clients on first use
    latencies = []
    for _ in range(count):
        status, seconds, _ = post(session, url)
        assert status == 202, status
        latencies.append(seconds)
    return latencies


def concurrent(url: str, count: int) -> tuple[float, list[dict[str, Any]]]:
    """(deliveries answered per second, their answers) with SENDERS senders."""
    sessions = [requests.Session() for _ in range(SENDERS)]
    started = time.perf_counter()
    with ThreadPoolExecutor(SENDERS) as pool:
        answers = list(pool.map(lambda n: post(sessions[n % SENDERS], url), range(count)))
    elapsed = time.perf_counter() - started
    assert all(status == 202 for status, _, _ in answers), [status for status, _, _ in answers]
    return count / elapsed, [answer for _, _, answer in answers]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def tasks_in_queue(stack: LocalStack) -> int:
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(stack.tasks_host)
    try:
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        return len(list(client.list_tasks(parent=stack.tasks_queue, timeout=10)))
    finally:
        channel.close()


def ledger_rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}


def run(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    baseline_rev = subprocess.run(["git", "rev-parse", args.baseline or baseline_commit()], cwd=procs.ROOT,
                                  capture_output=True, text=True, check=True).stdout.strip()
    baseline = extract(baseline_rev, state / "baseline")
    schemas = write_demo_schemas(state / "schemas")
    base_schemas = write_demo_schemas(state / "baseline-schemas")
    (base_schemas / "workflow.schema.json").write_text((baseline / "schemas" / "workflow.schema.json").read_text())
    emulator = emulators.Emulator.start("pubsub", project=PROJECT, log_dir=state)
    stack = LocalStack(state_dir=state / "stack", project=PROJECT, schemas_dir=schemas, pubsub_host=emulator.host,
                       env={"GATEWAY_SUBMIT_INLINE_S": "2", "GATEWAY_POLL_FIRST_S": "0.5"})
    baseline_process = None
    try:
        stack.start()
        _unsubscribe(stack)  # the fast path alone: nobody follows its jobs (no check task from poll)
        port = emulators.free_port()
        env = {**stack.function_env(), "GATEWAY_SCHEMAS_DIR": str(base_schemas),
               "GATEWAY_LEDGER": f"sqlite:///{state / 'baseline-ledger.sqlite3'}"}
        baseline_process = spawn_webhook(baseline, port, env, state / "baseline-webhook.log")
        emulators.wait_for_port(port, 60, baseline_process)
        urls = {"baseline": f"http://127.0.0.1:{port}/hooks/store-clusters",
                "admission": stack.url("webhook") + "/hooks/store-clusters"}
        fast: dict[str, dict[str, list[float]]] = {name: {"latency_s": [], "rate": []} for name in urls}
        for round_ in range(args.rounds):  # alternating which goes first, so neither always meets a warmer machine
            for name, url in (list(urls.items()) if round_ % 2 == 0 else list(urls.items())[::-1]):
                fast[name]["latency_s"] += sequential(url, args.deliveries)
                fast[name]["rate"].append(concurrent(url, args.deliveries)[0])
        delivered = args.rounds * (2 * args.deliveries + 1)
        counted = {"check_tasks_after_fast_path": tasks_in_queue(stack),
                   "ledger_rows": ledger_rows(state / "stack" / "ledger.sqlite3"),
                   "baseline_ledger_rows": ledger_rows(state / "baseline-ledger.sqlite3"),
                   "deliveries_each": delivered}
        queued = None if args.fast_only else _queued_path(stack, args)
    finally:
        if baseline_process is not None:
            procs.terminate(baseline_process)
        stack.stop()
        emulator.stop()
    summary = {name: {"p50_ms": round(1000 * pct(v["latency_s"], 50), 2),
                      "p95_ms": round(1000 * pct(v["latency_s"], 95), 2),
                      "rate_per_s": round(statistics.median(v["rate"]), 1),
                      "rate_min_max": [round(min(v["rate"]), 1), round(max(v["rate"]), 1)], "samples": len(v["latency_s"])}
               for name, v in fast.items()}
    return {"baseline": baseline_rev, "fast_path": summary, "counted": counted, "queued_path": queued,
            "rounds": args.rounds, "deliveries_per_round": args.deliveries, "senders": SENDERS}


def _unsubscribe(stack: LocalStack) -> None:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    subscriber.delete_subscription(subscription=subscriber.subscription_path(stack.project, "poll-push"))
    subscriber.close()


def _queued_path(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """CARTO down: how fast deliveries are accepted; CARTO back: how fast the line drains."""
    stack._wire_topics()  # poll follows again: the hand-offs and checks run
    url = stack.url("webhook") + "/hooks/store-clusters"
    before = {job.external_id for job in stack.sandbox.jobs()}
    stack.sandbox.outage(3600)
    rate, answers = concurrent(url, args.queued)
    assert all(answer["queued"] for answer in answers)
    wanted = {answer["delivery_id"] for answer in answers}
    back = time.time()
    stack.sandbox.conditions.clear()
    deadline = time.monotonic() + args.drain_limit
    created: dict[str, float] = {}
    while len(created) < len(wanted) and time.monotonic() < deadline:
        for job in stack.sandbox.jobs():
            owner = (job.metadata or {}).get("delivery_id")
            if job.external_id not in before and owner in wanted:
                created.setdefault(owner, job.created_at)
        time.sleep(0.2)
    times = sorted(t - back for t in created.values())
    drained = len(times) == len(wanted)
    return {"deliveries": len(wanted), "accepted_per_s_carto_down": round(rate, 1),
            "first_job_after_s": round(times[0], 2) if times else None,
            "last_job_after_s": round(times[-1], 2) if times else None,
            "drain_per_s": round(len(times) / times[-1], 1) if drained and times[-1] > 0 else None,
            "drained": f"{len(times)}/{len(wanted)}"}


def markdown(results: dict[str, Any]) -> str:
    fast, queued = results["fast_path"], results["queued_path"]
    rows = ["| fast path (uncapped, CARTO up) | p50 | p95 | deliveries/s at 8 senders |", "|---|---:|---:|---:|"]
    for name in ("baseline", "admission"):
        label = f"before admission (`{results['baseline'][:12]}`)" if name == "baseline" else "with admission"
        low, high = fast[name]["rate_min_max"]
        rows.append(f"| {label} | {fast[name]['p50_ms']} ms | {fast[name]['p95_ms']} ms | "
                    f"{fast[name]['rate_per_s']} ({low}–{high}) |")
    counted = results["counted"]
    if queued is None:
        return "\n".join(rows)
    rows += ["", f"After the fast-path rounds ({counted['deliveries_each']} deliveries each): "
                 f"{counted['check_tasks_after_fast_path']} tasks in the queue; ledger rows "
                 f"{counted['ledger_rows']} (before admission: {counted['baseline_ledger_rows']}).", "",
             "| queued path | |", "|---|---:|",
             f"| deliveries accepted while CARTO is down (202 queued), per second at 8 senders | "
             f"{queued['accepted_per_s_carto_down']} |",
             f"| CARTO back → first job created | {queued['first_job_after_s']} s |",
             f"| CARTO back → last of {queued['deliveries']} jobs created | {queued['last_job_after_s']} s |",
             f"| drain rate (jobs created per second once CARTO is back) | {queued['drain_per_s']} |"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="the commit to compare the fast path with (default: before admission)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=100, help="per round and webhook (default 100)")
    parser.add_argument("--queued", type=int, default=200, help="deliveries sent while CARTO is down (default 200)")
    parser.add_argument("--drain-limit", type=float, default=600.0)
    parser.add_argument("--fast-only", action="store_true", help="the fast path only")
    parser.add_argument("--quick", action="store_true", help="tiny runs, to check the harness works")
    parser.add_argument("--results", type=Path, default=BENCH / "admission-results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.deliveries, args.queued = 1, 10, 10
        args.results = BENCH / "out" / "admission-results-quick.json"
        args.results.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as state:
        results = run(args, Path(state))
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
