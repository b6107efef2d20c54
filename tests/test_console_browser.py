"""The console in a real browser: headless Chromium loads its pages from the running local stack.

The stack (`LocalStack`, what `make dev` runs) serves `webhook`, `poll` and `console` in their own
processes over one SQLite ledger; real signed webhooks make the deliveries: some that succeed, one CARTO
fails, one that keeps running, and one under a 120-character key with its re-run. Chromium dumps each
page's DOM (the tests fail unless what they look for is in it), lays the pages out in a 1400×800 window
and says where their boxes fell (tests/browsertools.py: read over the DevTools protocol, since the
pages run no script), and takes a screenshot of each. With CONSOLE_SCREENSHOTS_DIR set (`make
screenshots` sets docs/), it also takes the workflows page and keeps the three screenshots there for
README. Where Chromium is missing the tests skip saying so (`.ci/run` installs Debian's `chromium`).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from gateway.ledger import Delivery, DeliveryQuery
from gateway.ledger.sqlite import SqliteLedger
from gateway.local.devstack import LocalStack
from tests.browsertools import Browser, browse, chromium
from tests.constants import CARTO_TOKEN, SECRET
from tests.stackutil import post_hook

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
LONG_KEY = "msg_" + "0123456789abcdef" * 7 + "tail"  # 120 characters, no place to break
WINDOW = (1400, 800)


@pytest.fixture(scope="module")
def schemas(test_schemas, tmp_path_factory) -> Path:
    """The test schemas, with slow-report's deadline an hour instead of 3 s: its job still runs when the
    tests look at it, however loaded the machine."""
    target = tmp_path_factory.mktemp("console-schemas") / "schemas"
    shutil.copytree(test_schemas, target)
    slow = target / "workflows" / "slow-report.json"
    definition = json.loads(slow.read_text())
    slow.write_text(json.dumps({**definition, "tracking": {"deadline_s": 3600}}))
    return target


@pytest.fixture(scope="module")
def stack(pubsub_emulator, schemas, tmp_path_factory):
    stack = LocalStack(
        # Its own project: the push subscriptions of other suites' stacks on the same emulator stay theirs.
        state_dir=tmp_path_factory.mktemp("console-stack"), project="console-browser", schemas_dir=schemas,
        pubsub_host=pubsub_emulator.host, sandbox_duration_s=0.5, console_port=0,
        sandbox_procedures={"test-project.workflows_temp.slow_report": {"parameters": {"region": "STRING"},
                                                                         "duration_s": None}},
        env={"CARTO_API_TOKEN": CARTO_TOKEN, "STORE_CLUSTERS_SECRET": SECRET, "GATEWAY_POLL_FIRST_S": "0.2"},
    ).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def deliveries(stack) -> dict[str, Delivery]:
    """Real deliveries, once: three that succeed, one CARTO fails (a float for an INT64), one that keeps
    running, one under LONG_KEY and its re-run (made through the console's own form); by role."""
    sent = [("store-clusters", {**BODY, "clusters": n}, f"msg_order_{n}") for n in (2, 3, 4)]
    sent += [("store-clusters-float", {**BODY, "clusters": 2.5}, "msg_order_float"),
             ("slow-report", {"region": "emea"}, "msg_report_emea"),
             ("store-clusters", {**BODY, "clusters": 5}, LONG_KEY)]
    for workflow, body, msg_id in sent:
        answer = post_hook(stack.url("webhook"), workflow, body, SECRET, msg_id=msg_id)
        assert answer.status_code == 202, answer.text
    ledger = SqliteLedger(stack.state_dir / "ledger.sqlite3")
    try:
        wait_for(lambda: finished(ledger) == 5, "five deliveries finished")
        rerun(stack.url("console"), f"store-clusters:{LONG_KEY}")
        wait_for(lambda: finished(ledger) == 6, "the re-run finished")
        return {"failed": ledger.recent(DeliveryQuery(outcome="FAILED"))[0],
                "running": ledger.get("slow-report:msg_report_emea"),
                "rerun": ledger.get(f"store-clusters:{LONG_KEY}:rerun-1"),
                **{msg_id: ledger.get(f"{workflow}:{msg_id}") for workflow, _, msg_id in sent}}
    finally:
        ledger.close()


def rerun(console: str, key: str) -> None:
    """Re-run `key` as an operator does: its confirmation page, then the form posted from that page."""
    confirm = requests.get(f"{console}/actions/rerun", params={"key": key}, timeout=30)
    fields = {html.unescape(name): html.unescape(value) for name, value in
              re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text)}
    answer = requests.post(f"{console}/actions/rerun", data=fields, headers={"Origin": console},
                           allow_redirects=False, timeout=30)
    assert answer.status_code == 303, answer.text


def finished(ledger: SqliteLedger) -> int:
    return len(ledger.recent(DeliveryQuery(state="finished")))


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def delivery_url(stack: LocalStack, record: Delivery) -> str:
    return f"{stack.url('console')}/deliveries/{quote(record.key, safe='')}"


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """One Chromium with a 1400×800 window, for measuring where the pages' boxes fall."""
    with Browser(chromium(), tmp_path_factory.mktemp("window"), *WINDOW) as browser:
        yield browser


def test_chromium_renders_the_list_with_cartos_error_on_the_failed_row(stack, deliveries, tmp_path):
    listing = browse(chromium(), tmp_path / "p", f"{stack.url('console')}/", "--dump-dom")  # as Chromium parsed it
    table = re.search(r'<table id="deliveries">.*?</table>', listing, re.S)
    assert table, "the deliveries table is not in the DOM Chromium rendered"
    rows = re.findall(r"<tr>.*?</tr>", table.group(0), re.S)
    assert len(rows) == 1 + 7  # the header and one row per delivery
    failed = deliveries["failed"]
    (row,) = [row for row in rows if failed.delivery_id in row]
    message = html.unescape(re.search(r'<div class="why">([^<]*)</div>', row).group(1))
    assert message and failed.error["message"].startswith(message.removesuffix("…"))
    (running,) = [row for row in rows if "msg_report_emea" in row]
    assert re.search(r'<span class="running">[0-9.]+ s so far</span>', running)


def test_chromium_renders_a_running_deliverys_elapsed_time_and_next_check(stack, deliveries, tmp_path):
    page = browse(chromium(), tmp_path / "p", delivery_url(stack, deliveries["running"]), "--dump-dom")
    found = re.search(r'<dd id="progress">(.*?)</dd>', page, re.S)
    assert found, re.search(r'<dl class="facts">.*?</dl>', page, re.S).group(0)  # the facts it shows instead
    progress = html.unescape(found.group(1))
    assert re.match(r"for [0-9.]+ (s|min) · next status check at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z \(in ", progress)
    assert '<meta http-equiv="refresh" content="5">' in page


def test_a_failed_deliverys_error_is_in_the_first_screenful_at_1400_by_800(stack, deliveries, window):
    window.open(delivery_url(stack, deliveries["failed"]))
    width, height = window.evaluate("[innerWidth, innerHeight]")
    assert width == WINDOW[0] and 0 < height <= WINDOW[1]
    box = window.evaluate("(e => [e.getBoundingClientRect().top, e.getBoundingClientRect().bottom, e.textContent])"
                          "(document.getElementById('error'))")
    assert box[2].startswith("CARTO's error: ")
    assert 0 < box[0] < box[1] <= height, f"CARTO's error spans y {box[0]}–{box[1]}, the window shows 0–{height}"


@pytest.mark.parametrize("role", ["list", "rerun"])
def test_a_long_key_does_not_widen_the_page_past_the_window(stack, deliveries, window, role):
    url = f"{stack.url('console')}/" if role == "list" else delivery_url(stack, deliveries[role])
    window.open(url)
    assert deliveries["rerun"].delivery_id in window.evaluate("document.body.textContent")
    width, page, table = window.evaluate("[innerWidth, document.documentElement.scrollWidth, "
                                         "document.querySelector('main table').getBoundingClientRect().right]")
    assert width == WINDOW[0]
    assert page <= width and table <= width, f"the page is {page} px wide, its table ends at {table}, the window {width}"


def test_screenshots_of_the_list_and_a_running_delivery(stack, deliveries, tmp_path):
    base = stack.url("console")
    pages = {"console-list.png": (f"{base}/", "1400,600"),
             "console-delivery.png": (delivery_url(stack, deliveries["running"]), "1400,900"),
             "console-workflows.png": (f"{base}/workflows", "1400,900")}
    keep = os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    if not keep:  # each Chromium start costs seconds: the third page only when README's pictures are made
        del pages["console-workflows.png"]
    shots = tmp_path / "shots"
    shots.mkdir()
    for n, (name, (url, size)) in enumerate(pages.items()):
        browse(chromium(), tmp_path / f"s{n}", url, f"--window-size={size}", f"--screenshot={shots / name}")
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    if keep:
        for name in pages:
            shutil.copy(shots / name, Path(keep) / name)
