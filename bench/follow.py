"""Follow cost: what following one job costs `poll`, and whether long jobs delay a short one.

`python -m bench.follow` (part of `make bench`). Runs against the code of the checkout it is started
from (`--code-root`), so the same harness measures the design before and after a change:

- real time, on the local stack (Pub/Sub emulator, and the Cloud Tasks emulator where the code has
  one): jobs of 2 s and 30 s (and 5 min with `--five-minutes`), one stack per length. `poll` runs
  under functions-framework wrapped by bench/timed_poll.py, which times every invocation itself;
  per job: poll invocation-seconds, invocations, CARTO status checks (the event's `checks`), job
  end → event publish time.
- fake clock, in process (the local CARTO job API on the same clock): jobs of 1 h and 6 h. An
  invocation's seconds are the clock time it slept plus its real time; a task or a Pub/Sub
  redelivery (10 s minimum backoff, as deployed) is delivered at its time.
- head of line, real time: N jobs of 10 minutes being followed, then a 2 s job; its job end → event.
- burst, real time: N jobs of 10 minutes submitted together and a 2 s job right behind them (not
  after their first checks), so their first triggers' pushes and its own arrive together; its job
  end → event.

Writes bench/follow-results.json (or --results) and the "Follow cost" region of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BOUND = "≤ 10 s + 1 % of the job's duration"
REDELIVERY_S = 10.0  # the tracking subscription's minimum retry delay as deployed (old design only)


def bound_s(duration_s: float) -> float:
    return 10.0 + 0.01 * duration_s


@dataclass
class Row:
    """One job length: per-job medians (and worst) of what following it cost."""

    duration_s: float
    clock: str
    jobs: int
    invocation_s: list[float] = field(default_factory=list)
    invocations: list[int] = field(default_factory=list)
    checks: list[int] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        worst = max(self.invocation_s, default=float("nan"))
        return {"duration_s": self.duration_s, "clock": self.clock, "jobs": f"{len(self.invocation_s)}/{self.jobs}",
                "invocation_s": _median(self.invocation_s), "worst_invocation_s": worst,
                "invocations": _median(self.invocations), "checks": _median(self.checks),
                "latency_s": _median(self.latency_s), "worst_latency_s": max(self.latency_s, default=float("nan")),
                "bound_s": bound_s(self.duration_s), "met": bool(self.invocation_s) and worst <= bound_s(self.duration_s)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# --- real time, on the local stack ---------------------------------------------------------------

def _timed_stack(state: Path, pubsub_host: str, durations: dict[str, float], project: str, env: dict[str, str]):
    """A LocalStack whose `poll` is bench/timed_poll.py around this checkout's main.poll."""
    from bench.stacks import completion_schemas
    from gateway.local import devstack

    timing = state / "poll-timing.jsonl"

    class TimedStack(devstack.LocalStack):
        def _function(self, target, port, signature):
            if target != "poll":
                return super()._function(target, port, signature)
            import subprocess

            run_env = {**os.environ, **self.function_env(), "BENCH_CODE_ROOT": str(devstack.ROOT),
                       "BENCH_TIMING_FILE": str(timing)}
            args = [sys.executable, "-m", "functions_framework", "--target", "poll", "--source",
                    str(BENCH / "timed_poll.py"), "--signature-type", "cloudevent", "--host", "127.0.0.1",
                    "--port", str(port)]
            log = open(self.log_dir / "poll.log", "ab")
            return subprocess.Popen(args, cwd=devstack.ROOT, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    schemas, overrides = completion_schemas(state / "schemas", durations)
    stack = TimedStack(state_dir=state, project=project, pubsub_host=pubsub_host, schemas_dir=schemas,
                       sandbox_procedures=overrides, env=env)
    stack.start()
    return stack, timing


def _submit(stack: Any, workflow: str) -> str:
    import requests
    from standardwebhooks.webhooks import Webhook

    from bench.load import BODY, signed_headers
    from bench.stacks import SECRET

    data = json.dumps(BODY)
    answer = requests.post(f"{stack.url('webhook')}/hooks/{workflow}", data=data.encode(),
                           headers=signed_headers(Webhook(SECRET), data), timeout=30)
    if answer.status_code != 202:
        raise RuntimeError(f"{workflow} was not accepted: {answer.status_code} {answer.text}")
    return answer.json()["job_id"]


class Inbox:
    """A pull subscription on a stack's events topic: job id → (publish time, data)."""

    def __init__(self, stack: Any):
        from google.cloud import pubsub_v1

        self.subscriber = pubsub_v1.SubscriberClient()
        self.path = self.subscriber.subscription_path(stack.project, f"follow-events-{os.getpid()}")
        self.subscriber.create_subscription(request={
            "name": self.path, "ack_deadline_seconds": 60,
            "topic": f"projects/{stack.project}/topics/{stack.topics['events']}"})
        self.events: dict[str, tuple[float, dict[str, Any]]] = {}

    def drain(self) -> None:
        answer = self.subscriber.pull(request={"subscription": self.path, "max_messages": 100,
                                               "return_immediately": True}, timeout=10)
        for received in answer.received_messages:
            message = received.message
            self.events.setdefault(message.attributes["job_id"],
                                   (message.publish_time.timestamp(), json.loads(message.data)))
        if answer.received_messages:
            self.subscriber.acknowledge(request={"subscription": self.path,
                                                 "ack_ids": [r.ack_id for r in answer.received_messages]})

    def wait(self, job_ids: list[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.drain()
            if all(j in self.events for j in job_ids):
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        try:
            self.subscriber.delete_subscription(subscription=self.path)
        finally:
            self.subscriber.close()


def _timings(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def real_time_rows(state: Path, pubsub_host: str, durations: list[float], jobs_per_length: int) -> list[Row]:
    """Each length on its own stack (the old design held a push per job, and the emulator pushes two at a time)."""
    running = []
    try:
        for duration in durations:
            name = f"follow-{duration:g}s"
            stack, timing = _timed_stack(state / name, pubsub_host, {name: duration}, f"bench-{name}", {})
            inbox = Inbox(stack)
            running.append((duration, stack, timing, inbox, [_submit(stack, name) for _ in range(jobs_per_length)]))
        rows = []
        for duration, stack, timing, inbox, job_ids in running:
            inbox.wait(job_ids, duration + 400)
            done_at = {job.external_id: job.done_at for job in stack.sandbox.jobs()}
            row = Row(duration, "real", len(job_ids))
            for job_id in job_ids:
                if job_id not in inbox.events:
                    continue
                time.sleep(0.2)  # the wrapper writes its line as the invocation returns
                mine = [t for t in _timings(timing) if t["job_id"] == job_id]
                row.invocation_s.append(round(sum(t["seconds"] for t in mine), 3))
                row.invocations.append(len(mine))
                row.checks.append(inbox.events[job_id][1]["checks"])
                row.latency_s.append(round(inbox.events[job_id][0] - done_at[job_id], 3))
            rows.append(row)
        return rows
    finally:
        for _, stack, _, inbox, _ in running:
            inbox.close()
            stack.stop()


def head_of_line(state: Path, pubsub_host: str, long_jobs: int, long_s: float = 600.0,
                 followed_within_s: float = 200.0, timeout_s: float = 300.0) -> dict[str, Any]:
    """`long_jobs` jobs of `long_s` submitted, followed (each had its first check answered, or the
    wait ran out), then a 2 s job: its job end → event."""
    durations = {"follow-long": long_s, "follow-short": 2.0}
    stack, timing = _timed_stack(state / "head-of-line", pubsub_host, durations, "bench-head-of-line", {})
    inbox = Inbox(stack)
    try:
        longs = [_submit(stack, "follow-long") for _ in range(long_jobs)]
        deadline = time.monotonic() + followed_within_s
        while time.monotonic() < deadline:
            answered = {t["job_id"] for t in _timings(timing) if t["ok"]}
            if set(longs) <= answered:
                break
            time.sleep(0.5)
        followed = len(set(longs) & {t["job_id"] for t in _timings(timing) if t["ok"]})
        short = _submit(stack, "follow-short")
        arrived = inbox.wait([short], timeout_s)
        done = next(job.done_at for job in stack.sandbox.jobs() if job.external_id == short)
        latency = round(inbox.events[short][0] - done, 3) if arrived else None
        return {"long_jobs": long_jobs, "long_s": long_s, "long_jobs_past_first_check": followed,
                "short_latency_s": latency, "timeout_s": timeout_s, "bound_s": 2.0,
                "met": latency is not None and latency <= 2.0}
    finally:
        inbox.close()
        stack.stop()


def burst(state: Path, pubsub_host: str, long_jobs: int, long_s: float = 600.0,
          timeout_s: float = 300.0) -> dict[str, Any]:
    """`long_jobs` jobs of `long_s` submitted together (16 at a time) and a 2 s job right behind them: its
    job end → event, bound max(2 s, 25 %)."""
    from concurrent.futures import ThreadPoolExecutor

    durations = {"follow-long": long_s, "follow-short": 2.0}
    stack, timing = _timed_stack(state / "burst", pubsub_host, durations, "bench-burst", {})
    inbox = Inbox(stack)
    try:
        started = time.monotonic()
        _submit(stack, "follow-long")  # alone: the instance builds its clients on its first request
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: _submit(stack, "follow-long"), range(long_jobs - 1)))
        submitted_s = round(time.monotonic() - started, 2)
        short = _submit(stack, "follow-short")
        arrived = inbox.wait([short], timeout_s)
        done = next(job.done_at for job in stack.sandbox.jobs() if job.external_id == short)
        latency = round(inbox.events[short][0] - done, 3) if arrived else None
        pushes = [t for t in _timings(timing) if t["trigger"] == "push"]
        return {"long_jobs": long_jobs, "long_s": long_s, "submitted_in_s": submitted_s,
                "short_latency_s": latency, "timeout_s": timeout_s, "bound_s": 2.0,
                "longest_push_s": max((t["seconds"] for t in pushes), default=None),
                "pushes_over_1s": sum(1 for t in pushes if t["seconds"] > 1.0),
                "met": latency is not None and latency <= 2.0}
    finally:
        inbox.close()
        stack.stop()


# --- fake clock, in process ------------------------------------------------------------------------

def fake_clock_row(state: Path, duration: float, jobs: int = 1) -> Row:
    """Jobs of `duration` followed on a fake clock through this checkout's poller (either design)."""
    import gateway.poller as poller_module
    from bench.stacks import SECRET, completion_schemas
    from gateway.app import App
    from gateway.events import parse_tracking
    from gateway.intake import Inbound
    from gateway.local.sandbox import serve
    from gateway.settings import Settings

    clock = _FakeClock()
    name = f"fake-{duration:g}s"
    schemas, overrides = completion_schemas(state / name / "schemas", {name: duration})
    sandbox = serve(token="bench-token", procedures=None, default_duration_s=duration, clock=clock.now)
    publisher, scheduler = _Publisher(), _Scheduler()
    env = {"GATEWAY_SCHEMAS_DIR": str(schemas), "CARTO_API_BASE_URL": sandbox.url, "CARTO_API_TOKEN": "bench-token",
           "GATEWAY_LEDGER": f"sqlite:///{state / name / 'ledger.sqlite3'}", "STORE_CLUSTERS_SECRET": SECRET}
    new_design = not hasattr(poller_module, "RetryLater")
    extra = {"scheduler": scheduler} if new_design else {}
    app = App.build(Settings.from_env(env), publisher=publisher, clock=clock,
                    **extra)
    row = Row(duration, "fake", jobs)
    try:
        for n in range(jobs):
            workflow = app.registry.get(name)
            raw = json.dumps(_bench_body()).encode()
            app.intake.accept(Inbound(workflow, raw, _bench_body(), {}, f"k{n}", f"k{n}"))
            tracking = parse_tracking(publisher.tracking[-1].data)
            spent, invocations = 0.0, 0
            while not publisher.events_for(tracking.job_id):
                started_fake, started_real = clock.now(), time.perf_counter()
                if new_design:
                    check = scheduler.next(clock) if invocations else None  # waits for the task's due time
                    started_fake = clock.now()
                    if check is not None and not hasattr(check, "key"):
                        app.poller.handle(check.tracking, check)  # a checkout whose checks carried the tracking
                    else:
                        app.poller.handle(check or tracking)
                else:
                    try:
                        app.poller.handle(tracking)
                    except poller_module.RetryLater:
                        pass
                spent += (clock.now() - started_fake) + (time.perf_counter() - started_real)
                invocations += 1
                if not new_design and not publisher.events_for(tracking.job_id):
                    clock.advance(REDELIVERY_S)  # the subscription's backoff before the redelivery
            event = json.loads(publisher.events_for(tracking.job_id)[0].data)
            row.invocation_s.append(round(spent, 3))
            row.invocations.append(invocations)
            row.checks.append(event["checks"])
            row.latency_s.append(round(clock.now() - (tracking.submitted_at + duration), 3))
    finally:
        sandbox.stop()
    return row


def _bench_body() -> dict[str, Any]:
    from bench.load import BODY

    return BODY


class _FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        # Real time always moves on by a little: without it, a check due "now" at float precision
        # (timestamps near 1.8e9) could be re-made without end by a design that compares them.
        self.t += max(0.0, seconds) + 0.001

    advance = sleep


class _Publisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, Any]] = []

    def publish(self, topic: str, message: Any) -> str:
        self.messages.append((topic, message))
        return str(len(self.messages))

    @property
    def tracking(self) -> list[Any]:
        return [m for t, m in self.messages if t == "workflow-jobs"]

    def events_for(self, job_id: str) -> list[Any]:
        return [m for t, m in self.messages if t == "workflow-job-events" and m.attributes.get("job_id") == job_id]


class _Scheduler:
    """Cloud Tasks on the fake clock: each task is delivered at its due time."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] = {}

    def schedule(self, check: Any) -> None:
        from gateway.tasks import task_id

        key = check.key if hasattr(check, "key") else check.tracking.key
        self.pending.setdefault(task_id(key, check.index), check)

    def next(self, clock: _FakeClock) -> Any:
        name = min(self.pending, key=lambda n: self.pending[n].due_at)
        check = self.pending.pop(name)
        clock.t = max(clock.t, check.due_at)
        return check


# --- the run ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    from gateway.local import emulators

    started = time.monotonic()
    real = [2.0] if args.quick else [2.0, 30.0] + ([300.0] if args.five_minutes else [])
    fake = [3600.0] if args.quick else [3600.0, 21600.0]
    emulator = emulators.Emulator.start("pubsub", project="bench-follow", log_dir=state)
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    rows, hol = [], None
    try:
        if not args.burst_only:
            _say(f"fake clock: {', '.join(f'{d:g} s' for d in fake)}")
            rows = [fake_clock_row(state / "fake", duration) for duration in fake]
            _say(f"real time: {', '.join(f'{d:g} s' for d in real)} ({args.jobs} per length)")
            rows = real_time_rows(state / "real", emulator.host, real, args.jobs) + rows
            _say(f"head of line: {args.long_jobs} jobs of 10 min, then a 2 s job")
            hol = head_of_line(state / "hol", emulator.host, args.long_jobs, timeout_s=60 if args.quick else 300)
        _say(f"burst: {args.long_jobs} jobs of 10 min and a 2 s job right behind them")
        bursted = burst(state / "burst", emulator.host, args.long_jobs, timeout_s=60 if args.quick else 300)
    finally:
        emulator.stop()
    import gateway.poller as poller_module

    return {"design": "sleeping push (RetryLater)" if hasattr(poller_module, "RetryLater") else "Cloud Tasks",
            "code_root": str(args.code_root), "rows": [r.as_dict() for r in rows], "head_of_line": hol,
            "burst": bursted, "label": args.label,
            "elapsed_s": round(time.monotonic() - started, 1), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def markdown(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    lines = ["| job | clock | design | poll invocation-s per job (worst) | invocations | CARTO status checks | "
             "job end → event (worst) | bound on invocation-s |", "|---|---|---|---|---|---|---|---|"]
    for result in [r for r in (before, after) if r]:
        for row in result["rows"]:
            verdict = "met" if row["met"] else "**missed**"
            lines.append(f"| {_length(row['duration_s'])} | {row['clock']} | {result['design']} | "
                         f"{row['invocation_s']:.2f} s ({row['worst_invocation_s']:.2f}) | {row['invocations']:g} | "
                         f"{row['checks']:g} | {row['latency_s']:.2f} s ({row['worst_latency_s']:.2f}) | "
                         f"≤ {row['bound_s']:g} s: {verdict} |")
    lines += ["", "| head of line | design | long jobs past their first check | 2 s job: job end → event | bound |",
              "|---|---|---|---|---|"]
    for result in [r for r in (before, after) if r and r.get("head_of_line")]:
        hol = result["head_of_line"]
        latency = f"{hol['short_latency_s']:.2f} s" if hol["short_latency_s"] is not None else \
            f"none within {hol['timeout_s']:g} s"
        lines.append(f"| {hol['long_jobs']} jobs of {hol['long_s'] / 60:g} min being followed | {result['design']} | "
                     f"{hol['long_jobs_past_first_check']}/{hol['long_jobs']} | {latency} | "
                     f"≤ 2 s: {'met' if hol['met'] else '**missed**'} |")
    bursts = [r for r in (before, after) if r and "burst" in r]
    if bursts:
        lines += ["", "| burst | design | longest first-trigger push | pushes over 1 s | 2 s job: job end → event | bound |",
                  "|---|---|---|---|---|---|"]
    for result in bursts:
        case = result["burst"]
        latency = f"{case['short_latency_s']:.2f} s" if case["short_latency_s"] is not None else \
            f"none within {case['timeout_s']:g} s"
        lines.append(f"| {case['long_jobs']} jobs of {case['long_s'] / 60:g} min submitted together, the 2 s job "
                     f"right behind | {result.get('label') or result['design']} | {case['longest_push_s']:.2f} s | "
                     f"{case['pushes_over_1s']} | {latency} | ≤ 2 s: {'met' if case['met'] else '**missed**'} |")
    return "\n".join(lines)


def _length(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min" if seconds >= 300 else f"{seconds:g} s"


def write_section(path: Path, text: str) -> None:
    begin, end = "<!-- follow-cost:begin -->", "<!-- follow-cost:end -->"
    current = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in current and end in current:
        current = current[:current.index(begin)] + block + current[current.index(end) + len(end):]
    else:
        current = current.rstrip("\n") + "\n\n## Follow cost\n\n" + block + "\n"
    path.write_text(current)


def _say(what: str) -> None:
    print(f"bench.follow: {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.follow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 2 s job, a 1 h fake-clock job, 3 long jobs")
    parser.add_argument("--five-minutes", action="store_true", help="also a 5-minute job in real time")
    parser.add_argument("--jobs", type=int, default=2, help="jobs per real-time length (default 2)")
    parser.add_argument("--long-jobs", type=int, default=50, help="long jobs in the head-of-line case (default 50)")
    parser.add_argument("--burst-only", action="store_true", help="only the burst row")
    parser.add_argument("--label", help="the design's name in the burst table (default: the design)")
    parser.add_argument("--code-root", type=Path, default=BENCH.parent, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help="default bench/follow-results.json")
    parser.add_argument("--before", type=Path, help="results of the design before, for the table")
    parser.add_argument("--markdown", type=Path, help="default BENCHMARKS.md (its follow-cost region)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.long_jobs = 1, 3
    out = BENCH / "out" if args.quick else BENCH
    out.mkdir(exist_ok=True)
    args.results = args.results or out / ("follow-results-quick.json" if args.quick else "follow-results.json")
    args.markdown = args.markdown or (out / "BENCHMARKS-follow-quick.md" if args.quick else BENCH.parent / "BENCHMARKS.md")
    state = Path(tempfile.mkdtemp(prefix="gateway-follow-"))
    try:
        result = run(args, state)
    except BaseException:
        print(f"bench.follow failed; logs in {state}", file=sys.stderr)
        raise
    shutil.rmtree(state, ignore_errors=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    before_path = args.before or BENCH / "follow-results-before.json"
    before = json.loads(before_path.read_text()) if before_path.exists() and before_path != args.results else None
    write_section(args.markdown, markdown(before, result))
    for row in result["rows"]:
        print(f"{'ok  ' if row['met'] else 'MISS'} {_length(row['duration_s'])} ({row['clock']}): "
              f"{row['invocation_s']:.2f} s of poll per job (bound {row['bound_s']:g} s), {row['checks']:g} checks, "
              f"end → event {row['latency_s']:.2f} s")
    hol = result["head_of_line"]
    if hol is not None:
        print(f"{'ok  ' if hol['met'] else 'MISS'} head of line ({hol['long_jobs']} long jobs): {hol['short_latency_s']} s")
    bursted = result["burst"]
    print(f"{'ok  ' if bursted['met'] else 'MISS'} burst ({bursted['long_jobs']} long jobs together): "
          f"{bursted['short_latency_s']} s")
    print(f"wrote {args.results} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
