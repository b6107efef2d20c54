"""The local CARTO job API's standing conditions, on the sandbox alone over real HTTP: an outage window
(503 answers, or a port refusing connections), a job creation rate limit answering 429 with
Retry-After, slow job creation (the job exists before the answer), and the peak of jobs running at once
per procedure."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest
import requests

from gateway.local.sandbox import serve
from gateway.local.sandbox.faults import Conditions
from gateway.local.sandbox.jobs import SandboxJob, peak_running

pytestmark = pytest.mark.sandbox(default_duration_s=0.5)

QUERY = "CALL `p.d.proc`(@a)"
OTHER = "CALL `p.d.other`(@a)"


def create(server, query: str = QUERY, timeout: float = 5) -> requests.Response:
    return requests.post(f"{server.url}/v3/sql/carto_dw/job", json={"query": query, "queryParameters": {"a": 1}},
                         timeout=timeout)


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


def refused(port: int) -> bool:
    """True when a connect to the port is refused outright (nothing listening)."""
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:  # queued on the listening socket as it closed: not yet refused
            return False
    return False


# --- outage ---------------------------------------------------------------------------------------

def test_during_an_outage_every_carto_route_answers_503_and_no_job_is_created(sandbox):
    sandbox.outage(30)
    answers = [create(sandbox), requests.get(f"{sandbox.url}/v3/sql/jobs", timeout=5),
               requests.get(f"{sandbox.url}/v3/sql/carto_dw/job/job_x", timeout=5)]

    assert [a.status_code for a in answers] == [503, 503, 503]
    assert answers[0].json() == {"error": "Service unavailable (sandbox fault)", "status": 503}
    assert sandbox.jobs() == []
    stats = requests.get(f"{sandbox.url}/_sandbox/stats", timeout=5).json()  # admin stays reachable
    assert stats["conditions"]["outage"]["kind"] == "error"


def test_an_outage_ends_by_itself_after_its_window(sandbox):
    sandbox.outage(0.5)
    assert create(sandbox).status_code == 503
    wait_until(lambda: create(sandbox).status_code == 200, 10, "CARTO answers again")
    assert len(sandbox.jobs()) == 1


def test_an_outage_window_is_measured_on_its_own_clock(clock):
    conditions = Conditions(clock=clock.now)
    conditions.outage(30, status=502)
    clock.advance(29.9)
    assert conditions.outage_fault().status == 502
    clock.advance(0.1)
    assert conditions.outage_fault() is None


def test_a_refusing_outage_closes_the_port_then_serves_the_same_port_again(sandbox):
    port = sandbox.port
    sandbox.outage(1.5, kind="refuse")
    wait_until(lambda: refused(port), 5, "the port refuses connections")
    with pytest.raises(requests.ConnectionError):
        create(sandbox)

    wait_until(lambda: not refused(port), 10, "the port accepts connections again")
    assert create(sandbox).status_code == 200
    assert sandbox.port == port and len(sandbox.jobs()) == 1


def test_a_refusing_outage_cuts_connections_already_open(sandbox):
    session = requests.Session()  # keep-alive: the connection is open before the outage starts
    assert session.get(f"{sandbox.url}/v3/sql/jobs", timeout=5).status_code == 200
    sandbox.outage(1.0, kind="refuse")
    wait_until(lambda: refused(sandbox.port), 5, "the port refuses connections")
    with pytest.raises(requests.ConnectionError):
        session.post(f"{sandbox.url}/v3/sql/carto_dw/job", json={"query": QUERY}, timeout=5)
    assert sandbox.jobs() == []


def test_an_outage_can_be_started_over_http_and_the_asker_gets_its_answer(sandbox):
    answer = requests.post(f"{sandbox.url}/_sandbox/conditions", json={"outage_s": 1.0, "outage": "refuse"},
                           timeout=5)
    assert answer.status_code == 200 and answer.json()["conditions"]["outage"]["kind"] == "refuse"
    wait_until(lambda: refused(sandbox.port), 5, "the port refuses connections")
    wait_until(lambda: not refused(sandbox.port), 10, "the port accepts connections again")
    assert create(sandbox).status_code == 200


def test_stopping_the_sandbox_during_a_refusing_outage_does_not_wait_for_its_end():
    server = serve()
    server.outage(600, kind="refuse")
    wait_until(lambda: refused(server.port), 5, "the port refuses connections")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 30


# --- rate limit -----------------------------------------------------------------------------------

def test_creations_beyond_the_rate_limit_answer_429_with_retry_after(sandbox):
    sandbox.conditions.rate_limit(15)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: create(sandbox), range(20)))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 15 + [429] * 5
    limited = [a for a in answers if a.status_code == 429]
    assert all(1 <= int(a.headers["Retry-After"]) <= 60 for a in limited)
    assert limited[0].json()["status"] == 429
    assert len(sandbox.jobs()) == 15


def test_the_rate_limit_window_slides_the_oldest_creation_frees_a_place_after_60_s(clock):
    conditions = Conditions(clock=clock.now)
    conditions.rate_limit(2)
    assert conditions.admit_creation() is None
    clock.advance(10)
    assert conditions.admit_creation() is None
    clock.advance(5)
    assert conditions.admit_creation() == 45  # the first creation leaves the window 45 s from now
    clock.advance(45)
    assert conditions.admit_creation() is None
    assert conditions.admit_creation() == 10


def test_a_shorter_window_slides_the_same_way_and_its_retry_after_says_so(clock):
    conditions = Conditions(clock=clock.now)
    conditions.rate_limit(2, window_s=6)
    assert conditions.admit_creation() is None
    clock.advance(1)
    assert conditions.admit_creation() is None
    clock.advance(1.5)
    assert conditions.admit_creation() == 4  # the first creation leaves the 6 s window 3.5 s from now: rounded up
    clock.advance(3.5)
    assert conditions.admit_creation() is None
    assert conditions.admit_creation() == 1
    assert conditions.state()["submit_window_s"] == 6
    conditions.clear()
    assert conditions.state()["submit_window_s"] == 60  # a cleared limit forgets its window too


def test_a_refused_creation_does_not_count_against_the_limit(sandbox):
    sandbox.conditions.rate_limit(1)
    assert create(sandbox).status_code == 200
    assert [create(sandbox).status_code for _ in range(3)] == [429, 429, 429]
    sandbox.conditions.rate_limit(None)
    assert create(sandbox).status_code == 200


def test_the_rate_limit_applies_to_creation_only(sandbox):
    sandbox.conditions.rate_limit(1)
    job_id = create(sandbox).json()["externalId"]
    assert create(sandbox).status_code == 429
    assert requests.get(f"{sandbox.url}/v3/sql/carto_dw/job/{job_id}", timeout=5).status_code == 200
    assert requests.get(f"{sandbox.url}/v3/sql/jobs", timeout=5).status_code == 200


# --- slow creation ---------------------------------------------------------------------------------

def test_a_slow_creation_answers_late_and_the_job_exists_before_the_answer(sandbox):
    sandbox.conditions.slow_creation(3.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(create, sandbox)
        wait_until(lambda: len(sandbox.jobs()) == 1, 5, "the job exists")
        assert not pending.done()  # created, not yet answered
        listed = requests.get(f"{sandbox.url}/v3/sql/jobs", timeout=5).json()["jobs"]
        answer = pending.result()
    assert time.monotonic() - started >= 3.0
    assert answer.status_code == 200
    assert [job["externalId"] for job in listed] == [answer.json()["externalId"]]


def test_a_client_that_gives_up_on_a_slow_creation_leaves_one_job_behind(sandbox):
    sandbox.conditions.slow_creation(5.0)
    with pytest.raises(requests.Timeout):
        create(sandbox, timeout=0.5)
    wait_until(lambda: len(sandbox.jobs()) == 1, 5, "the job exists")
    assert len(sandbox.jobs()) == 1


# --- conditions over http --------------------------------------------------------------------------

def test_conditions_are_set_read_and_cleared_over_http(sandbox):
    url = f"{sandbox.url}/_sandbox/conditions"
    answer = requests.post(url, json={"submit_per_minute": 15, "submit_window_s": 6, "submit_delay_s": 0.2,
                                      "outage_s": 30}, timeout=5)
    assert answer.status_code == 200
    state = answer.json()["conditions"]
    assert state["submit_per_minute"] == 15 and state["submit_window_s"] == 6 and state["submit_delay_s"] == 0.2
    assert state["outage"]["kind"] == "error" and 29 < state["outage"]["seconds_left"] <= 30
    assert create(sandbox).status_code == 503

    assert requests.delete(url, timeout=5).json()["conditions"] == {
        "outage": None, "submit_per_minute": None, "submit_window_s": 60, "submit_delay_s": 0.0}
    assert create(sandbox).status_code == 200


@pytest.mark.parametrize("body", [{"outage_s": -1}, {"outage_s": 5, "outage": "melt"}, {"submit_per_minute": 0},
                                  {"submit_per_minute": 1.5}, {"submit_delay_s": "slow"}, {"explode": True},
                                  {"submit_per_minute": 2, "submit_window_s": 0}, {"submit_window_s": 6},
                                  [1, 2], {"outage_s": 5, "status": 404}])
def test_malformed_conditions_are_a_400_and_change_nothing(sandbox, body):
    answer = requests.post(f"{sandbox.url}/_sandbox/conditions", json=body, timeout=5)
    assert answer.status_code == 400 and answer.json()["error"].startswith("Bad conditions")
    assert create(sandbox).status_code == 200


def test_reset_clears_the_conditions(sandbox):
    sandbox.outage(60)
    sandbox.conditions.rate_limit(1)
    requests.post(f"{sandbox.url}/_sandbox/reset", timeout=5)
    assert create(sandbox).status_code == 200 and create(sandbox).status_code == 200


# --- peak running ----------------------------------------------------------------------------------

def job(procedure: str, created: float, done: float) -> SandboxJob:
    return SandboxJob(external_id=f"job_{procedure}_{created}", connection="c", query="CALL x()",
                      query_parameters={}, procedure=procedure, created_at=created, run_at=created, done_at=done)


def test_peak_running_counts_overlapping_jobs_per_procedure():
    jobs = [job("a", 0, 10), job("a", 1, 5), job("a", 2, 3), job("a", 6, 12), job("b", 0, 1),
            job("b", 1, 2), job("c", 0, 0)]
    assert peak_running(jobs) == {"a": 3, "b": 1}  # b's second starts as its first ends; c never ran


def test_peak_running_is_observed_from_real_jobs_and_in_stats(sandbox):
    for _ in range(3):
        create(sandbox)
    create(sandbox, OTHER)
    assert sandbox.peak_running() == {"p.d.proc": 3, "p.d.other": 1}
    assert requests.get(f"{sandbox.url}/_sandbox/stats", timeout=5).json()["peak_running"] == {
        "p.d.proc": 3, "p.d.other": 1}


def test_a_cancelled_job_stops_counting_as_running_when_cancelled():
    with serve(default_duration_s=60.0) as server:
        first = create(server).json()["externalId"]
        requests.delete(f"{server.url}/v3/sql/carto_dw/job/{first}", timeout=5)
        create(server)
        assert server.peak_running() == {"p.d.proc": 1}
