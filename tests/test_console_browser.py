"""The console in a real browser: headless Chromium loads its pages from the running local stack.

The stack (`LocalStack`, what `make dev` runs) serves `webhook`, `poll` and `console` in their own
processes over one SQLite ledger; real signed webhooks make the deliveries. Chromium dumps each page's
DOM (the test fails unless the deliveries table is in it) and takes a screenshot of each. With
CONSOLE_SCREENSHOTS_DIR set (`make screenshots` sets docs/), it also takes the workflows page and keeps
the three screenshots there for README.
Where Chromium is missing the test skips saying so (`.ci/run` installs Debian's `chromium`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from gateway.ledger import DeliveryQuery
from gateway.ledger.sqlite import SqliteLedger
from gateway.local.devstack import LocalStack
from tests.constants import CARTO_TOKEN, SECRET
from tests.stackutil import post_hook

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run does it in CI)")


def browse(browser: str, profile: Path, url: str, *args: str) -> str:
    """Run headless Chromium on `url` with a fresh profile; its stdout (the DOM with --dump-dom)."""
    done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def stack(pubsub_emulator, test_schemas, tmp_path_factory):
    stack = LocalStack(
        # Its own project: the push subscriptions of other suites' stacks on the same emulator stay theirs.
        state_dir=tmp_path_factory.mktemp("console-stack"), project="console-browser", schemas_dir=test_schemas,
        pubsub_host=pubsub_emulator.host, sandbox_duration_s=0.5, console_port=0,
        sandbox_procedures={"test-project.workflows_temp.slow_report": {"parameters": {"region": "STRING"},
                                                                         "duration_s": None}},
        env={"CARTO_API_TOKEN": CARTO_TOKEN, "STORE_CLUSTERS_SECRET": SECRET, "GATEWAY_POLL_FIRST_S": "0.2"},
    ).start()
    yield stack
    stack.stop()


def make_deliveries(stack: LocalStack) -> list[str]:
    """Real deliveries: three that succeed, one CARTO fails (a float for an INT64), one that keeps running."""
    sent = [("store-clusters", {**BODY, "clusters": n}, f"msg_order_{n}") for n in (2, 3, 4)]
    sent += [("store-clusters-float", {**BODY, "clusters": 2.5}, "msg_order_float"),
             ("slow-report", {"region": "emea"}, "msg_report_emea")]
    for workflow, body, msg_id in sent:
        answer = post_hook(stack.url("webhook"), workflow, body, SECRET, msg_id=msg_id)
        assert answer.status_code == 202, answer.text
    return [msg_id for _, _, msg_id in sent]


def wait_until_finished(ledger: SqliteLedger, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(ledger.recent(DeliveryQuery(state="finished"))) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} deliveries finished within {timeout_s} s")


def test_chromium_renders_the_list_and_a_delivery_from_the_running_console(stack, tmp_path):
    browser = chromium()
    sent = make_deliveries(stack)
    ledger = SqliteLedger(stack.state_dir / "ledger.sqlite3")
    try:
        wait_until_finished(ledger, 4)
        failed = ledger.recent(DeliveryQuery(outcome="FAILED"))[0]
    finally:
        ledger.close()
    base = stack.url("console")
    shots = tmp_path / "shots"
    shots.mkdir()

    listing = browse(browser, tmp_path / "p1", f"{base}/", "--dump-dom")  # the DOM after Chromium parsed it
    table = re.search(r'<table id="deliveries">.*?</table>', listing, re.S)
    assert table, "the deliveries table is not in the DOM Chromium rendered"
    assert all(msg_id in table.group(0) for msg_id in sent)
    assert table.group(0).count("<tr>") == 1 + len(sent)  # the header and one row per delivery

    delivery = browse(browser, tmp_path / "p2", f"{base}/deliveries/{quote(failed.key, safe='')}", "--dump-dom")
    assert '<ol class="timeline">' in delivery and "CARTO's error" in delivery and "msg_order_float" in delivery

    pages = {"console-list.png": (f"{base}/", "1360,560"),
             "console-delivery.png": (f"{base}/deliveries/{quote(failed.key, safe='')}", "1360,1480"),
             "console-workflows.png": (f"{base}/workflows", "1360,900")}
    keep = os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    if not keep:  # each Chromium start costs seconds: the third page only when README's pictures are made
        del pages["console-workflows.png"]
    for n, (name, (url, size)) in enumerate(pages.items()):
        browse(browser, tmp_path / f"s{n}", url, f"--window-size={size}", f"--screenshot={shots / name}")
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    if keep:
        for name in pages:
            shutil.copy(shots / name, Path(keep) / name)
