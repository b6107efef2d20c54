"""`python -m bench`: every benchmark in one run, on loopback, in under 10 minutes on 2 cores.

Writes bench/results.json and the generated tables of BENCHMARKS.md. Medians of repeated runs with
min–max; each ratio pairs the gateway's run with the bare function's run of the same round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench import coldstart, completion, load, procs, stacks, validation
from bench.report import fmt, spread, write_markdown

BENCH = Path(__file__).resolve().parent
SLOW_CARTO_S = 0.3
SLOW_WEBHOOK = f"webhook, CARTO answering in {SLOW_CARTO_S * 1000:.0f} ms"
FIRESTORE_WEBHOOK = "webhook, Firestore ledger"
SLOW_FIRESTORE_WEBHOOK = f"webhook, Firestore ledger, CARTO answering in {SLOW_CARTO_S * 1000:.0f} ms"
# The embedded configuration (SQLite ledger) and the deployed one (Firestore ledger, `_fs`), each with its floor.
ROUTES = {"bare": "/", "webhook": "/hooks/store-clusters", "validate": "/hooks/store-clusters/validate", "floor": "/",
          "webhook_fs": "/hooks/store-clusters", "floor_fs": "/"}
FIRESTORE_ROUTES = ("webhook_fs", "floor_fs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="load runs per route (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run (default 5)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--cold-repeats", type=int, default=7, help="cold starts per function (default 7)")
    parser.add_argument("--generator", choices=("wrk", "python"), default=None,
                        help="load generator (default: wrk when installed, else bench/loadgen.py)")
    parser.add_argument("--no-completion", action="store_true", help="skip the 2 s / 30 s / 5 min jobs")
    parser.add_argument("--no-firestore", action="store_true",
                        help="measure only the embedded configuration (no Firestore emulator here)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny runs, to check the harness works (written under bench/out/ by default)")
    parser.add_argument("--results", type=Path, help="default bench/results.json")
    parser.add_argument("--markdown", type=Path, help="default BENCHMARKS.md (its generated region)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = BENCH / "out" if args.quick else None  # a harness check never overwrites the published numbers
    if args.quick:
        args.repeats, args.duration, args.cold_repeats = 1, 1.0, 1
        out.mkdir(exist_ok=True)
    args.results = args.results or (out / "results-quick.json" if out else BENCH / "results.json")
    args.markdown = args.markdown or (out / "BENCHMARKS-quick.md" if out else BENCH.parent / "BENCHMARKS.md")
    state = Path(tempfile.mkdtemp(prefix="gateway-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        results = run(args, state)
    except BaseException:
        print(f"bench failed; servers' logs are in {state}", file=sys.stderr)
        raise
    shutil.rmtree(state, ignore_errors=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(args.markdown, results)
    for target in results["targets"]:
        verdict = {True: "ok  ", False: "MISS", None: "    "}[target["met"]]
        print(f"{verdict} {target['name']}: {target['measured']} (bound {target['bound']})")
    print(f"wrote {args.results} and {args.markdown}")
    return 0


def run(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    """Start everything, measure, stop everything; the results document."""
    started, loadavg_before = time.monotonic(), _loadavg()
    stacks.quick_acks_in_sandbox()
    logging.getLogger("gateway.local.sandbox").setLevel(logging.ERROR)  # idle keep-alive time-outs are not news
    emulator = stacks.start_emulator(state)
    firestore = None if args.no_firestore else stacks.start_firestore(state)
    fs_env = stacks.firestore_env(firestore) if firestore else None
    jobs = {2.0: 1} if args.quick else completion.JOBS
    running: completion.CompletionRun | None = None
    stack = None
    servers: list[Any] = []
    try:
        if not args.no_completion:
            _say(f"completion: submitting jobs of {', '.join(f'{d:g} s' for d in jobs)}")
            running = completion.CompletionRun.start(state / "completion", emulator.host, jobs)
        stack = stacks.load_stack(state / "load", emulator.host)
        bare, bare_port = stacks.start_function(stack, "bare", stacks.BARE_SOURCE, state)
        floor, floor_port = stacks.start_function(stack, "floor", stacks.FLOOR_SOURCE, state)
        servers += [bare, floor]
        webhook = stack.processes["webhook"]
        targets = {"bare": load.Target("bare", f"http://127.0.0.1:{bare_port}{ROUTES['bare']}", bare.pid, 200),
                   "webhook": load.Target("webhook", stack.url("webhook") + ROUTES["webhook"], webhook.pid, 202),
                   "validate": load.Target("validate", stack.url("webhook") + ROUTES["validate"], webhook.pid, 200),
                   "floor": load.Target("floor", f"http://127.0.0.1:{floor_port}{ROUTES['floor']}", floor.pid, 200)}
        observers = {"emulator": emulator.process.pid}
        if fs_env is not None:
            webhook_fs, webhook_fs_port = stacks.start_function(stack, "webhook", procs.ROOT / "main.py", state,
                                                                fs_env, "webhook_fs")
            floor_fs, floor_fs_port = stacks.start_function(stack, "floor_firestore", stacks.FLOOR_SOURCE, state,
                                                            fs_env, "floor_fs")
            servers += [webhook_fs, floor_fs]
            targets["webhook_fs"] = load.Target("webhook_fs", f"http://127.0.0.1:{webhook_fs_port}{ROUTES['webhook_fs']}",
                                                webhook_fs.pid, 202)
            targets["floor_fs"] = load.Target("floor_fs", f"http://127.0.0.1:{floor_fs_port}{ROUTES['floor_fs']}",
                                              floor_fs.pid, 200)
            observers["Firestore emulator"] = firestore.process.pid
        _say("validation rates")
        results: dict[str, Any] = {"validation": [r.as_dict() for r in validation.measure(
            repeats=3 if args.quick else 5, budget_s=0.05 if args.quick else 0.2)]}
        if fs_env is not None:
            stacks.warm_firestore(firestore, stack.project)
        _say(f"cold starts ({args.cold_repeats} rounds)")
        results["cold_start"] = _cold_starts(stack, state, args.cold_repeats, fs_env)
        _say(f"load runs ({args.repeats} rounds of {len(targets)} × {args.duration:g} s)")
        results["load"] = _load_runs(args, targets, observers, state)
        results["load"]["peak_rss_kib_after_load"] = {name: procs.peak_rss_kib(target.pid)
                                                      for name, target in targets.items() if name != "validate"}
        same = all(stacks.same_server_settings(webhook.pid, s.pid) for s in servers)
        if running is not None:
            _say("waiting for the completion events (the 5-minute jobs end about 5.5 min after the start)")
            results["completion"] = _completion(running, max(jobs) + 150)
    finally:
        for server in servers:
            procs.terminate(server)
        if stack is not None:
            stack.stop()
        if running is not None:
            running.stop()
        emulator.stop()
        if firestore is not None:
            firestore.stop()
    results["meta"] = _meta(args, started, loadavg_before, same)
    results["targets"] = _targets(results)
    return {"meta": results.pop("meta"), "targets": results.pop("targets"), **results}


def _cold_starts(stack: Any, state: Path, repeats: int, fs_env: dict[str, str] | None) -> dict[str, Any]:
    env, runs = stack.function_env(), []
    procs.compile_bytecode(stacks.BARE_SOURCE, procs.ROOT / "main.py", procs.ROOT / "gateway")
    webhook = ("webhook", procs.ROOT / "main.py", ROUTES["webhook"], 202)
    configurations = [(env, "webhook", SLOW_WEBHOOK)]
    if fs_env is not None:
        configurations.append(({**env, **fs_env}, FIRESTORE_WEBHOOK, SLOW_FIRESTORE_WEBHOOK))
    for _ in range(repeats):  # interleaved, so all see the same state of the shared machine
        runs.append(coldstart.measure("bare", stacks.BARE_SOURCE, ROUTES["bare"], 200, env, stacks.SECRET, state))
        for function_env, name, slow_name in configurations:
            runs.append(dataclasses.replace(coldstart.measure(*webhook, function_env, stacks.SECRET, state), target=name))
            # Real CARTO takes a while to create a job; the gRPC clients load in the background meanwhile.
            requests.post(f"{stack.sandbox.url}/_sandbox/faults", timeout=10, json={
                "route": "submit", "kind": "delay", "delay_s": SLOW_CARTO_S, "count": 1}).raise_for_status()
            slow = coldstart.measure(*webhook, function_env, stacks.SECRET, state)
            runs.append(dataclasses.replace(slow, target=slow_name))
    names = [n for _, name, slow_name in configurations for n in (name, slow_name)] + ["bare"]
    by = {name: [r for r in runs if r.target == name] for name in names}
    summary = {name: {"status": rs[0].status, "seconds": spread(r.seconds for r in rs),
                      "worker_mib": spread((r.peak_rss_kib_by_process.get("worker", 0) / 1024 for r in rs), 1),
                      "arbiter_mib": spread((r.peak_rss_kib_by_process.get("arbiter", 0) / 1024 for r in rs), 1)}
               for name, rs in by.items()}
    cold = {"runs": [r.as_dict() for r in runs], "summary": summary,
            "ratio_webhook_to_bare": spread(w.seconds / b.seconds for w, b in zip(by["webhook"], by["bare"], strict=True))}
    if fs_env is not None:
        cold["ratio_webhook_fs_to_bare"] = spread(w.seconds / b.seconds for w, b in
                                                  zip(by[FIRESTORE_WEBHOOK], by["bare"], strict=True))
    return cold


def _load_runs(args: argparse.Namespace, targets: dict[str, load.Target], observers: dict[str, int],
               state: Path) -> dict[str, Any]:
    kind = args.generator or load.generator()
    count = 400 if args.quick else 40_000  # more fresh deliveries than the webhook can take in one run
    for target in targets.values():  # warm-up: the instance builds its clients on its first request
        load.run(target, load.write_requests(state / "warmup.txt", stacks.SECRET, count // 4),
                 connections=args.connections, duration_s=1.0, kind=kind)
    runs: list[load.LoadRun] = []
    for _ in range(args.repeats):
        for target in targets.values():
            requests_file = load.write_requests(state / f"{target.name}.txt", stacks.SECRET, count)
            runs.append(load.run(target, requests_file, connections=args.connections, duration_s=args.duration,
                                 kind=kind, observers=observers))
    return {"generator": kind, "runs": [r.as_dict() for r in runs], "summary": _load_summary(runs),
            "ratios": _load_ratios(runs)}


def _load_summary(runs: list[load.LoadRun]) -> dict[str, Any]:
    summary = {}
    for name in ROUTES:
        mine = [r for r in runs if r.target == name]
        if not mine:
            continue
        summary[name] = {
            "served_per_s": spread((r.served_per_s for r in mine), 1), "p50_ms": spread(r.p50_ms for r in mine),
            "p99_ms": spread(r.p99_ms for r in mine),
            "server_cpu_ms_per_request": spread((r.server_cpu_ms_per_request for r in mine), 4),
            "carto_api_cpu_s": spread(r.observers_cpu_s["harness (local CARTO API)"] for r in mine),
            "emulator_cpu_s": spread(r.observers_cpu_s["emulator"] for r in mine),
            "firestore_emulator_cpu_s": spread(r.observers_cpu_s.get("Firestore emulator", float("nan")) for r in mine),
            "load_generator_cpu_s": spread(r.observers_cpu_s["load generator"] for r in mine),
            "not_served": sum(r.requests - r.served for r in mine) + sum(r.errors for r in mine),
        }
    return summary


def _load_ratios(runs: list[load.LoadRun]) -> dict[str, Any]:
    """Each gateway run against the bare run (and its floor) of the same round."""
    per_round = len({r.target for r in runs})
    rounds = [runs[i:i + per_round] for i in range(0, len(runs), per_round)]
    pairs = [{r.target: r for r in round_} for round_ in rounds]
    ratios = {
        "webhook_cpu_to_bare": spread(p["webhook"].server_cpu_ms_per_request / p["bare"].server_cpu_ms_per_request
                                      for p in pairs),
        "validate_cpu_to_bare": spread(p["validate"].server_cpu_ms_per_request / p["bare"].server_cpu_ms_per_request
                                       for p in pairs),
        "webhook_throughput_to_bare": spread(p["webhook"].served_per_s / p["bare"].served_per_s for p in pairs),
        "webhook_p99_to_bare": spread(p["webhook"].p99_ms / p["bare"].p99_ms for p in pairs),
        "floor_cpu_to_bare": spread(p["floor"].server_cpu_ms_per_request / p["bare"].server_cpu_ms_per_request
                                    for p in pairs),
        "webhook_cpu_to_floor": spread(p["webhook"].server_cpu_ms_per_request / p["floor"].server_cpu_ms_per_request
                                       for p in pairs),
    }
    if all("webhook_fs" in p for p in pairs):
        cpu = {name: [p[name].server_cpu_ms_per_request for p in pairs] for name in ("bare", "webhook_fs", "floor_fs")}
        ratios.update({
            "webhook_fs_cpu_to_floor_fs": spread(w / f for w, f in zip(cpu["webhook_fs"], cpu["floor_fs"], strict=True)),
            "webhook_fs_cpu_to_bare": spread(w / b for w, b in zip(cpu["webhook_fs"], cpu["bare"], strict=True)),
            "floor_fs_cpu_to_bare": spread(f / b for f, b in zip(cpu["floor_fs"], cpu["bare"], strict=True)),
            "webhook_fs_throughput_to_bare": spread(p["webhook_fs"].served_per_s / p["bare"].served_per_s for p in pairs),
            "webhook_fs_p99_to_bare": spread(p["webhook_fs"].p99_ms / p["bare"].p99_ms for p in pairs),
        })
    return ratios


def _completion(running: completion.CompletionRun, timeout_s: float) -> dict[str, Any]:
    detections = running.collect(timeout_s)
    summary = []
    for duration in sorted(set(running.jobs.values())):
        mine = [d for d in detections if d.duration_s == duration]
        summary.append({"duration_s": duration, "jobs": f"{len(mine)}/{list(running.jobs.values()).count(duration)}",
                        "latency_s": spread(d.latency_s for d in mine), "checks": spread(d.checks for d in mine),
                        "max_latency_s": max((d.latency_s for d in mine), default=float("nan")),
                        "max_checks": max((d.checks for d in mine), default=0),
                        "target_latency_s": completion.target_latency_s(duration),
                        "target_checks": completion.target_checks(duration),
                        "all_reported": len(mine) == list(running.jobs.values()).count(duration)})
    return {"jobs": [d.as_dict() for d in detections], "summary": summary}


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []

    def add(name: str, bound: str, summary: dict[str, float], met: bool | None, unit: str = "×", digits: int = 2) -> None:
        targets.append({"name": name, "bound": bound, "measured": fmt(summary, unit, digits), "met": met,
                        "median": summary["median"]})

    ratios = results["load"]["ratios"]
    add("CPU per webhook ÷ bare CPU per request", "≤ 2.5×", ratios["webhook_cpu_to_bare"],
        ratios["webhook_cpu_to_bare"]["median"] <= 2.5)
    add("CPU per validate ÷ bare", "≤ 1.3×", ratios["validate_cpu_to_bare"], ratios["validate_cpu_to_bare"]["median"] <= 1.3)
    add("accepted webhooks/s ÷ bare requests/s", "≥ 0.30×", ratios["webhook_throughput_to_bare"],
        ratios["webhook_throughput_to_bare"]["median"] >= 0.30)
    add("webhook p99 ÷ bare p99", "≤ 3×", ratios["webhook_p99_to_bare"], ratios["webhook_p99_to_bare"]["median"] <= 3)
    add("(reference) floor CPU ÷ bare: the two outbound calls alone", "—", ratios["floor_cpu_to_bare"], None)
    add("(reference) CPU per webhook ÷ floor", "—", ratios["webhook_cpu_to_floor"], None)
    cold = results["cold_start"]["ratio_webhook_to_bare"]
    add("cold start to first 202 ÷ bare's to first 200", "≤ 2×", cold, cold["median"] <= 2)
    if "webhook_fs_cpu_to_floor_fs" in ratios:
        add("Firestore ledger: CPU per webhook ÷ its floor (create + one guarded update)", "≤ 2.5×",
            ratios["webhook_fs_cpu_to_floor_fs"], ratios["webhook_fs_cpu_to_floor_fs"]["median"] <= 2.5)
        add("(reference) Firestore ledger: CPU per webhook ÷ bare", "—", ratios["webhook_fs_cpu_to_bare"], None)
        add("(reference) Firestore floor CPU ÷ bare", "—", ratios["floor_fs_cpu_to_bare"], None)
        add("(reference) Firestore ledger: accepted webhooks/s ÷ bare", "—", ratios["webhook_fs_throughput_to_bare"], None)
        add("(reference) Firestore ledger: webhook p99 ÷ bare p99", "—", ratios["webhook_fs_p99_to_bare"], None)
    if "ratio_webhook_fs_to_bare" in results["cold_start"]:
        cold_fs = results["cold_start"]["ratio_webhook_fs_to_bare"]
        add("Firestore ledger: cold start to first 202 ÷ bare's to first 200", "≤ 2×", cold_fs, cold_fs["median"] <= 2)
    for summary in results.get("completion", {}).get("summary", []):
        duration = f"{summary['duration_s']:g} s job"
        add(f"{duration}: job end → event (worst of {summary['jobs']})", f"≤ {summary['target_latency_s']:g} s",
            spread([summary["max_latency_s"]]), summary["all_reported"] and
            summary["max_latency_s"] <= summary["target_latency_s"], " s")
        add(f"{duration}: status checks (worst)", f"≤ {summary['target_checks']}", spread([summary["max_checks"]], 0),
            summary["all_reported"] and summary["max_checks"] <= summary["target_checks"], "", 0)
    return targets


def _meta(args: argparse.Namespace, started: float, loadavg_before: str, same_settings: bool) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    command = " ".join(procs.function_command("TARGET", Path("SOURCE"), 0)[1:]).replace(" 0", " PORT")
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": cpus, "python": f"Python {platform.python_version()}", "generator": args.generator or load.generator(),
        "connections": args.connections, "load_repeats": args.repeats, "duration_s": args.duration,
        "cold_repeats": args.cold_repeats, "loadavg_before": loadavg_before, "loadavg_after": _loadavg(),
        "server_command": f"python {command}", "same_server_settings": same_settings,
        "server_settings": f"WORKERS={os.environ.get('WORKERS', '1')}, "
                           f"THREADS={os.environ.get('THREADS', str(cpus * 4))}",
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _say(what: str) -> None:
    print(f"bench: {what}", file=sys.stderr, flush=True)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"
