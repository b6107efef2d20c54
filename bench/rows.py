"""Result rows: what reading a workflow's output into its event adds to job end → event.

`python -m bench.rows` (part of `make bench`). One local stack (Pub/Sub emulator, the local CARTO
job API, webhook and poll under functions-framework with the shipped settings); four workflows whose
procedures run 1 s and write the same 1000-row table (about 120 bytes a row): one without a `result`
block, and `"result": {"rows": 5 | 100 | 1000}`. Jobs go one at a time, the four kinds in turn, so
they share the machine's state alike. Per job: the event's Pub/Sub publish time minus the job's end
(`done_at` in the local CARTO API), and the read's own time from poll's `result.read` log line.
Medians per kind, and each kind's median over the no-result median (same run).

Writes bench/rows-results.json (or --results) and the "Result rows" region of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROJECT = "bench-rows"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DATASET = "bench-project.workflows_temp"
KINDS = {"none": None, "5 rows": 5, "100 rows": 100, "1000 rows": 1000}
SCHEMA = [{"name": "store_id", "type": "INT64"}, {"name": "name", "type": "STRING"},
          {"name": "score", "type": "FLOAT64"}, {"name": "geom", "type": "GEOGRAPHY"}]
BEGIN, END = "<!-- result-rows:begin -->", "<!-- result-rows:end -->"


def workflow_name(kind: str) -> str:
    return "rows-" + kind.split()[0]


def write_schemas(target: Path) -> dict[str, Any]:
    """The four workflow files and the sandbox procedures (each writes the same 1000 rows); the overrides."""
    shutil.copytree(ROOT / "schemas", target)
    for path in (target / "workflows").glob("*.json"):
        path.unlink()
    rows = [[n, f"store {n:04d} on main street", round(n / 7, 6), f"POINT({-3.7 + n / 1e4:.4f} 40.4168)"]
            for n in range(1, 1001)]
    procedures = {}
    for kind, count in KINDS.items():
        name = workflow_name(kind)
        procedure = f"{DATASET}.proc_{name.replace('-', '_')}"
        definition: dict[str, Any] = {
            "connection": "carto_dw", "query": f"CALL `{procedure}`(@n)",
            "parameters": {"n": {"type": "INT64", "from": "/n"}},
            "payload": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
            "auth": [{"scheme": "standard-webhooks", "secrets": "env:ROWS_SECRET"}]}
        if count is not None:
            definition["result"] = {"rows": count}
        (target / "workflows" / f"{name}.json").write_text(json.dumps(definition))
        procedures[procedure] = {"parameters": {"n": "INT64"}, "duration_s": 1.0,
                                 "output": {"schema": SCHEMA, "rows": rows}}
    return procedures


def measure(jobs_per_kind: int, state: Path) -> dict[str, Any]:
    import requests
    from google.cloud import pubsub_v1
    from standardwebhooks.webhooks import Webhook

    from bench.load import signed_headers
    from gateway.local import emulators
    from gateway.local.devstack import LocalStack

    procedures = write_schemas(state / "schemas")
    emulator = emulators.Emulator.start("pubsub", project=PROJECT, log_dir=state)
    stack = LocalStack(state_dir=state / "stack", project=PROJECT, schemas_dir=state / "schemas",
                       pubsub_host=emulator.host, sandbox_procedures=procedures,
                       env={"ROWS_SECRET": SECRET}).start()
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, f"rows-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(request={"name": path, "topic": f"projects/{PROJECT}/topics/{stack.topics['events']}"})

    samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    try:
        for n in range(jobs_per_kind + 1):  # the first round warms every path up and is not counted
            for kind in KINDS:
                body = json.dumps({"n": n})
                answer = requests.post(f"{stack.url('webhook')}/hooks/{workflow_name(kind)}", data=body.encode(),
                                       headers=signed_headers(Webhook(SECRET), body), timeout=30)
                answer.raise_for_status()
                job_id = answer.json()["job_id"]
                message = _wait(subscriber, path, job_id)
                done_at = next(j.done_at for j in stack.sandbox.jobs() if j.external_id == job_id)
                published = message.publish_time.timestamp()
                if n:
                    samples[kind].append({"job_id": job_id, "end_to_event_s": round(published - done_at, 4),
                                          "event_bytes": len(message.data)})
        read_ms = _read_ms(stack.log_dir / "poll.log")
    finally:
        subscriber.close()
        stack.stop()
        emulator.stop()
    return _summary(samples, read_ms)


def _wait(subscriber: Any, path: str, job_id: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = subscriber.pull(request={"subscription": path, "max_messages": 10}, timeout=10)
        if answer.received_messages:
            subscriber.acknowledge(request={"subscription": path, "ack_ids": [r.ack_id for r in answer.received_messages]})
        for received in answer.received_messages:
            if received.message.attributes.get("job_id") == job_id:
                return received.message
    raise TimeoutError(f"no event for {job_id} within {timeout_s} s")


def _read_ms(log: Path) -> dict[int, list[float]]:
    """The `result.read` lines of poll's log: milliseconds per row count."""
    found: dict[int, list[float]] = {}
    for line in log.read_text().splitlines():
        match = re.search(r"result read: (\d+) rows, (\d+) bytes, (\d+) ms", line)
        if match:
            found.setdefault(int(match[1]), []).append(float(match[3]))
    return found


def _summary(samples: dict[str, list[dict[str, Any]]], read_ms: dict[int, list[float]]) -> dict[str, Any]:
    base = statistics.median(s["end_to_event_s"] for s in samples["none"])
    rows = []
    for kind, count in KINDS.items():
        median = statistics.median(s["end_to_event_s"] for s in samples[kind])
        reads = read_ms.get(count or -1, [])
        rows.append({"kind": kind, "jobs": len(samples[kind]), "end_to_event_s": round(median, 3),
                     "added_s": round(median - base, 3), "ratio": round(median / base, 2) if base else None,
                     "read_ms": statistics.median(reads) if reads else None,
                     "event_bytes": statistics.median(s["event_bytes"] for s in samples[kind])})
    return {"rows": rows, "samples": samples, "loadavg": _loadavg()}


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def markdown(results: dict[str, Any]) -> str:
    lines = [BEGIN, "| workflow | jobs | job end → event (median) | added vs no result | ratio | the read itself "
             "(median) | event size |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        read = f"{row['read_ms']:.0f} ms" if row["read_ms"] is not None else "—"
        lines.append(f"| {row['kind']} | {row['jobs']} | {row['end_to_event_s']:.3f} s | {row['added_s']:+.3f} s | "
                     f"{row['ratio']:.2f} | {read} | {row['event_bytes'] / 1024:.1f} KiB |")
    lines.append(f"\nLoad average at the end: {', '.join(str(x) for x in results['loadavg'])}.")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rows", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs per kind (default 10)")
    parser.add_argument("--results", type=Path, default=BENCH / "rows-results.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    state = Path(tempfile.mkdtemp(prefix="gateway-rows-"))
    try:
        results = measure(args.jobs, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    text = args.markdown.read_text()
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + markdown(results) + text[text.index(END) + len(END):]
        args.markdown.write_text(text)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
