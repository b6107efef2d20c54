"""Summaries (median, min–max) and the Markdown that `python -m bench` writes into BENCHMARKS.md."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def spread(values: Iterable[float], digits: int = 3) -> dict[str, float]:
    """Median, min, max and count of `values`."""
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def fmt(summary: dict[str, float], unit: str = "", digits: int = 2) -> str:
    """`median (min–max) unit`."""
    def number(v: float) -> str:
        return f"{v:,.{digits}f}"

    if summary["n"] == 0:
        return "n/a"
    if summary["n"] == 1:
        return f"{number(summary['median'])}{unit}"
    return f"{number(summary['median'])}{unit} ({number(summary['min'])}–{number(summary['max'])})"


def markdown(results: dict[str, Any]) -> str:
    """The generated part of BENCHMARKS.md."""
    parts = [_meta(results), _targets(results), _load(results), _cold(results), _completion(results),
             _validation(results)]
    return "\n\n".join(p for p in parts if p)


def _meta(results: dict[str, Any]) -> str:
    meta = results["meta"]
    return (f"Run of {meta['started']} on {meta['cpus']} cores ({meta['python']}, load generator "
            f"`{meta['generator']}`, {meta['connections']} connections, {meta['load_repeats']} × "
            f"{meta['duration_s']:g} s per target, {meta['cold_repeats']} cold starts each; load average "
            f"{meta['loadavg_before']} before, {meta['loadavg_after']} after: the machine is shared, "
            f"so read medians and ranges). Server: `{meta['server_command']}`, gunicorn defaults of "
            f"functions-framework ({meta['server_settings']}). Total {meta['elapsed_s']:.0f} s.")


def _targets(results: dict[str, Any]) -> str:
    rows = ["| target | bound | measured: median (min–max) | met |", "|---|---|---|---|"]
    for target in results["targets"]:
        verdict = {True: "yes", False: "**no**", None: "—"}[target["met"]]
        rows.append(f"| {target['name']} | {target['bound']} | {target['measured']} | {verdict} |")
    return "### Targets\n\n" + "\n".join(rows)


def _load(results: dict[str, Any]) -> str:
    load = results.get("load")
    if not load:
        return ""
    rows = ["| route | served/s | p50 ms | p99 ms | server CPU ms/request | CARTO API CPU s | Pub/Sub emulator CPU s | "
            "Firestore emulator CPU s | load generator CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, summary in load["summary"].items():
        firestore = summary.get("firestore_emulator_cpu_s", {"n": 0})
        rows.append(f"| {name} | {fmt(summary['served_per_s'], digits=0)} | {fmt(summary['p50_ms'])} | "
                    f"{fmt(summary['p99_ms'])} | {fmt(summary['server_cpu_ms_per_request'], digits=3)} | "
                    f"{fmt(summary['carto_api_cpu_s'])} | {fmt(summary['emulator_cpu_s'])} | {fmt(firestore)} | "
                    f"{fmt(summary['load_generator_cpu_s'])} |")
    return ("### Throughput, latency and CPU per request (16 connections)\n\n"
            "`webhook` = the full path (`POST /hooks/store-clusters`, answered 202) with the embedded (SQLite) "
            "ledger, `webhook_fs` the same with the Firestore ledger on the Firestore emulator (the deployed "
            "configuration), `validate` = `POST /hooks/store-clusters/validate` (200), `bare` = bench/bare.py "
            "returning `{}` (200), `floor` = bench/floor.py: only the CARTO submit and the Pub/Sub publish, then "
            "`{}` (200); `floor_fs` adds the Firestore create and one update guarded by its update time. "
            "CPU of the CARTO API, emulators and load generator is per run.\n\n" + "\n".join(rows))


def _cold(results: dict[str, Any]) -> str:
    cold = results.get("cold_start")
    if not cold:
        return ""
    rows = ["| function | process start → first answer | peak RSS, serving worker (MiB) | peak RSS, arbiter (MiB) |",
            "|---|---|---|---|"]
    for name, summary in cold["summary"].items():
        rows.append(f"| {name} (first {summary['status']}) | {fmt(summary['seconds'], ' s', 3)} | "
                    f"{fmt(summary['worker_mib'], digits=1)} | {fmt(summary['arbiter_mib'], digits=1)} |")
    return "### Cold start\n\n" + "\n".join(rows)


def _completion(results: dict[str, Any]) -> str:
    completion = results.get("completion")
    if not completion:
        return ""
    rows = ["| job length | jobs | job end → event published | bound | status checks | bound |",
            "|---|---|---|---|---|---|"]
    for summary in completion["summary"]:
        rows.append(f"| {summary['duration_s']:g} s | {summary['jobs']} | {fmt(summary['latency_s'], ' s')} | "
                    f"≤ {summary['target_latency_s']:g} s | {fmt(summary['checks'], digits=0)} | "
                    f"≤ {summary['target_checks']} |")
    return "### Completion detection (shipped polling schedule, real time)\n\n" + "\n".join(rows)


def _validation(results: dict[str, Any]) -> str:
    validation = results.get("validation")
    if not validation:
        return ""
    rows = ["| workflow | library | validations/s: median (min–max) |", "|---|---|---|"]
    for rate in validation:
        rows.append(f"| {rate['workflow']} | {rate['library']} | {rate['per_s_median']:,} "
                    f"({rate['per_s_min']:,}–{rate['per_s_max']:,}) |")
    return "### Payload validation\n\n" + "\n".join(rows)


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    """Replace the generated region of `path` (between the markers), creating the file if need be."""
    block = f"{BEGIN}\n{markdown(results)}\n{END}"
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")
