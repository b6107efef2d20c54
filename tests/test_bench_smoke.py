"""The benchmark harness (bench/, `make bench`) on tiny inputs: each piece runs and reports the shape
BENCHMARKS.md is built from. Structure only; speed is never asserted here."""

from __future__ import annotations

import shutil

import pytest

from bench import coldstart, completion, follow, load, procs, report, stacks, validation
from gateway.local import emulators

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """The bare function under functions-framework, started the way the harness starts it."""
    log_dir = tmp_path_factory.mktemp("bare")
    port = emulators.free_port()
    process = procs.spawn_function("bare", stacks.BARE_SOURCE, port, {}, log_dir / "bare.log")
    emulators.wait_for_port(port, 30, process)
    yield process, port
    procs.terminate(process)


@pytest.fixture
def requests_file(tmp_path):
    return load.write_requests(tmp_path / "requests.txt", stacks.SECRET, 50)


def test_request_file_lines_carry_a_fresh_webhook_id_each(requests_file):
    ids = [line.split("\t")[0] for line in requests_file.read_text().splitlines()]

    assert len(ids) == len(set(ids)) == 50


@pytest.mark.parametrize("kind", ["python", pytest.param("wrk", marks=pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"))])
def test_a_load_run_counts_answers_and_the_cpu_each_process_spent(bare_server, requests_file, kind):
    process, port = bare_server
    target = load.Target("bare", f"http://127.0.0.1:{port}/", process.pid, 200)

    run = load.run(target, requests_file, connections=2, duration_s=1.0, kind=kind, observers={"self": process.pid})

    assert run.served > 0 and run.statuses == {"200": run.served} and run.errors == 0
    assert run.server_cpu_s >= 0 and set(run.observers_cpu_s) == {"self", "harness (local CARTO API)", "load generator"}
    assert run.p50_ms <= run.p99_ms <= run.max_ms


def test_a_cold_start_reports_the_first_answer_and_peak_rss_of_arbiter_and_worker(tmp_path):
    start = coldstart.measure("bare", stacks.BARE_SOURCE, "/", 200, {}, stacks.SECRET, tmp_path)

    assert start.status == 200 and start.seconds > 0
    assert set(start.peak_rss_kib_by_process) == {"arbiter", "worker"}


def test_bench_functions_run_with_the_webhook_command_line_but_for_target_source_and_port():
    webhook = procs.function_command("webhook", procs.ROOT / "main.py", 8080)

    for source in (stacks.BARE_SOURCE, stacks.FLOOR_SOURCE):
        assert stacks.command_shape(procs.function_command(source.stem, source, 9000)) == stacks.command_shape(webhook)
    assert stacks.command_shape([*webhook, "--debug"]) != stacks.command_shape(webhook)


def test_every_workflow_with_an_example_is_validated_by_both_libraries():
    rates = validation.measure(repeats=1, budget_s=0.01)

    assert {r.library for r in rates} == {"jsonschema-rs", "jsonschema (pure Python)"}
    assert all(r.valid and r.per_s_median > 0 for r in rates)


@pytest.mark.parametrize(("duration_s", "latency_s", "checks"), [(2, 2.0, 7), (30, 7.5, 19), (300, 75.0, 29)])
def test_completion_bounds_follow_the_issue(duration_s, latency_s, checks):
    assert completion.target_latency_s(duration_s) == latency_s
    assert completion.target_checks(duration_s) == checks


def test_the_generated_tables_replace_only_their_own_region(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nprose stays\n\n{report.BEGIN}\nstale table\n{report.END}\n\nmore prose\n")
    results = {"meta": {"started": "now", "cpus": 2, "python": "Python 3", "generator": "wrk", "connections": 16,
                        "load_repeats": 1, "duration_s": 1.0, "cold_repeats": 1, "loadavg_before": "0",
                        "loadavg_after": "0", "server_command": "python -m functions_framework",
                        "server_settings": "WORKERS=1", "elapsed_s": 1.0},
               "targets": [{"name": "x", "bound": "≤ 1", "measured": "0.5", "met": True}]}

    report.write_markdown(path, results)
    report.write_markdown(path, results)

    text = path.read_text()
    assert "prose stays" in text and "more prose" in text and "stale table" not in text
    assert text.count(report.BEGIN) == 1 and "| x | ≤ 1 | 0.5 | yes |" in text


def test_the_follow_cost_harness_follows_a_fake_clock_job_and_writes_its_table(tmp_path):
    row = follow.fake_clock_row(tmp_path, 60.0).as_dict()
    result = {"design": "Cloud Tasks", "rows": [row], "head_of_line": {
        "long_jobs": 3, "long_s": 600.0, "long_jobs_past_first_check": 3, "short_latency_s": 0.4, "timeout_s": 60,
        "bound_s": 2.0, "met": True}}
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# Benchmarks\n")

    follow.write_section(target, follow.markdown(None, result))
    follow.write_section(target, follow.markdown(None, result))  # the region is replaced, not appended

    assert row["jobs"] == "1/1" and row["invocations"] >= 2 and row["checks"] >= row["invocations"]
    assert row["latency_s"] <= max(2.0, 0.25 * 60)
    text = target.read_text()
    assert text.count("<!-- follow-cost:begin -->") == 1 and "| 60 s | fake | Cloud Tasks |" in text
