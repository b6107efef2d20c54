"""Running a soak: the local stack behind a fault proxy, senders at a bounded rate, a fault every few
seconds, CARTO's longer troubles at set points of the run (an outage answering 503, an outage refusing
connections, a creation rate limit, slow creation: soak/faults.py), one Pub/Sub emulator restart
half-way, a sweeper thread; then drain, reconcile, report."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.app import App
from gateway.local import emulators
from gateway.local.demos import DEV_SECRET, write_demo_schemas
from gateway.local.devstack import DEV_TOKEN, LocalStack
from gateway.settings import Settings
from soak.faults import Episodes, Injector
from soak.reconcile import reconcile
from soak.traffic import CAP, CAPPED, FAILING, MIX, Delivery, Sender, make_delivery
from tests.faultproxy import FaultProxy

PROJECT = "soak-project"
FAULT_EVERY_S = 6.0
SWEEP_EVERY_S = 5.0
PUBSUB_DOWN_S = 15.0  # longer than a publish's own retries (10 s), so none lands in the gap
# The emulator loses its messages when it stops (real Pub/Sub keeps them): a job whose tracking message
# was lost that way has no check pending, so the sweeper schedules one once its grace (10 s here) is past.
DRAIN_LIMIT_S = 480.0
FAILING_WORKFLOW = {
    "description": "Soak only: declares FLOAT64 where the procedure takes INT64, so CARTO fails the job.",
    "connection": "carto_dw",
    "query": "CALL `carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f`"
             "(@number_of_clusters,@buffer_radius,@store_type)",
    "parameters": {"number_of_clusters": {"type": "FLOAT64", "from": "/clusters"},
                   "buffer_radius": {"type": "FLOAT64", "from": "/radius_m"},
                   "store_type": {"type": "STRING", "from": "/store/type"}},
    "payload": {"type": "object", "required": ["clusters", "radius_m", "store"]},
    "auth": [{"scheme": "standard-webhooks", "secrets": "env:STORE_CLUSTERS_SECRET"}],
}
CAPPED_PROCEDURE = "soak-project.soak.capped_procedure"
CAPPED_JOB_S = 3.0  # long enough for deliveries to wait their turn at the cap

@dataclass(frozen=True)
class Options:
    minutes: float
    rate: float
    senders: int
    seed: int
    out: str
    ledger: str = "sqlite"  # or "firestore": the deployed configuration's ledger, on the Firestore emulator


class Events:
    """Pulls the events topic on its own thread; survives the emulator going away and coming back."""

    def __init__(self, topic: str):
        self.topic, self.name = topic, "soak-events"
        self.received: list[dict[str, str]] = []
        self._stop = threading.Event()
        self.subscribe()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def subscribe(self) -> None:
        emulators.ensure_topics(PROJECT, [self.topic], pull={self.name: self.topic})

    def _loop(self) -> None:
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(PROJECT, self.name)
        while not self._stop.is_set():
            try:
                answer = subscriber.pull(request={"subscription": path, "max_messages": 500,
                                                  "return_immediately": True}, timeout=10)
                ack = [m.ack_id for m in answer.received_messages]
                self.received.extend({**m.message.attributes, "delivery_id": _delivery_id(m.message.data)}
                                     for m in answer.received_messages)
                if ack:
                    subscriber.acknowledge(request={"subscription": path, "ack_ids": ack})
                else:
                    time.sleep(0.5)
            except Exception:  # the emulator is down (on purpose): try again
                time.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _delivery_id(data: bytes) -> str | None:
    """The event's delivery id: how an event names a delivery that was queued before it had a job."""
    try:
        return json.loads(data).get("delivery_id")
    except (ValueError, AttributeError):
        return None


class Sweeping:
    """Stands in for Cloud Scheduler: the deployed sweeper, every SWEEP_EVERY_S, unless paused."""

    def __init__(self, app: App):
        self.app = app
        self.paused = threading.Event()
        self._stop = threading.Event()
        self.reports: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SWEEP_EVERY_S):
            if not self.paused.is_set():
                self.sweep()

    def sweep(self) -> dict[str, Any]:
        report = self.app.sweeper.sweep().as_dict()
        self.reports.append(report)
        return report

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _schemas(state: Path) -> Path:
    schemas = write_demo_schemas(state / "schemas")  # schemas/workflows/ ships empty: the demos, as make dev runs
    (schemas / "workflows" / f"{FAILING}.json").write_text(json.dumps(FAILING_WORKFLOW))
    capped = json.loads((schemas / "workflows" / "store-clusters.json").read_text())
    capped.update(description="Soak only: store-clusters through its own procedure, at most CAP jobs at once.",
                  query=capped["query"].replace(capped["query"][capped["query"].index("`"):capped["query"].rindex("`") + 1],
                                                f"`{CAPPED_PROCEDURE}`"),
                  admission={"max_concurrent_jobs": CAP, "when_busy": "queue"})
    (schemas / "workflows" / f"{CAPPED}.json").write_text(json.dumps(capped))
    return schemas


def _say(message: str) -> None:
    print(f"[soak {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(options: Options) -> int:
    """Run the soak; 0 when every promise held."""
    state = Path(tempfile.mkdtemp(prefix="soak-"))
    pubsubs = [emulators.Emulator.start("pubsub", project=PROJECT, log_dir=state)]  # the last one is current
    pubsub = pubsubs[0]
    firestore, ledger = None, {}
    if options.ledger == "firestore":
        firestore = emulators.Emulator.start("firestore", log_dir=state)
        os.environ["FIRESTORE_EMULATOR_HOST"] = firestore.host  # the soak's own instance (sweeper, reconcile)
        ledger = {"GATEWAY_LEDGER": "firestore://soak-deliveries", "FIRESTORE_EMULATOR_HOST": firestore.host}
    sandbox_port = emulators.free_port()
    proxy = FaultProxy(("127.0.0.1", sandbox_port)).start()
    stack = LocalStack(state_dir=state, project=PROJECT, schemas_dir=_schemas(state), pubsub_host=pubsub.host,
                       sandbox_port=sandbox_port, sandbox_duration_s=1.0,
                       sandbox_procedures={CAPPED_PROCEDURE: {"duration_s": CAPPED_JOB_S}},
                       env={"CARTO_API_BASE_URL": proxy.url, "CARTO_API_TOKEN": DEV_TOKEN,
                            "STORE_CLUSTERS_SECRET": DEV_SECRET, "CARTO_TIMEOUT_S": "5",
                            "GATEWAY_SUBMIT_INLINE_S": "2", "GATEWAY_POLL_FIRST_S": "0.5",
                            "GATEWAY_SWEEP_GRACE_S": "10", **ledger})
    try:
        stack.start()
        _say(f"stack up in {state} ({options.ledger} ledger); {options.minutes} min at {options.rate}/s")
        return _soak(options, stack, proxy, pubsubs)
    finally:
        stack.stop()
        proxy.stop()
        for emulator in pubsubs:
            emulator.stop()
        if firestore is not None:
            firestore.stop()


def _soak(options: Options, stack: LocalStack, proxy: FaultProxy, pubsubs: list[emulators.Emulator]) -> int:
    app = App.build(Settings.from_env(stack.function_env()))
    events = Events(stack.topics["events"])
    sweeping = Sweeping(app)
    injector = Injector(stack.sandbox, proxy)
    episodes = Episodes(stack.sandbox, options.minutes * 60, random.Random(options.seed), injector.note, _say)
    sender = Sender(stack.url("webhook"), DEV_SECRET)
    started = time.monotonic()
    deliveries = _traffic(options, sender, injector, episodes, lambda: _restart(stack, pubsubs, events, sweeping),
                          lambda sent: _settle(sent, events))
    _say(f"traffic done: {len(deliveries)} deliveries, {sender.requests} requests; draining")
    injector.clear()
    episodes.clear()
    _drain(deliveries, events, sweeping)
    sweeping.stop()
    events.stop()
    result = reconcile(deliveries, stack.sandbox.jobs(), events.received, CAPPED_PROCEDURE)
    result.rows[0:0] = [("ledger", options.ledger), ("minutes of traffic", options.minutes),
                        ("run time incl. drain (s)", round(time.monotonic() - started)),
                        *((f"fault: {name}", count) for name, count in sorted(injector.injected.items())),
                        ("requests through the fault proxy", len(proxy.stats.seen)),
                        *((f"&nbsp;&nbsp;that suffered `{kind}`", proxy.stats.count(kind))
                          for kind in ("reset", "truncate", "blackhole", "delay", "respond"))]
    _report(options, result)
    return 1 if result.problems else 0


def _traffic(options: Options, sender: Sender, injector: Injector, episodes: Episodes, restart: Any,
             settle: Any) -> list[Delivery]:
    """Start deliveries at `rate` per second (at most `senders` in flight) for `minutes`; inject faults."""
    rng = random.Random(options.seed)
    kinds, weights = zip(*MIX.items(), strict=False)
    deliveries: list[Delivery] = []
    accepted: list[Delivery] = []
    in_flight = threading.BoundedSemaphore(options.senders)
    restarter = threading.Thread(target=restart, daemon=True)  # traffic goes on while Pub/Sub is down
    end = time.monotonic() + options.minutes * 60
    next_fault, restart_at = time.monotonic() + FAULT_EVERY_S, time.monotonic() + options.minutes * 30

    def send(delivery: Delivery) -> None:
        try:
            sender.send(delivery)
            if delivery.accepted and delivery.kind in ("valid", "once", "failing"):
                accepted.append(delivery)
        finally:
            in_flight.release()

    with ThreadPoolExecutor(max_workers=options.senders) as pool:
        while (now := time.monotonic()) < end:
            if now >= next_fault:
                injector.tick()
                next_fault += FAULT_EVERY_S
            episodes.tick()
            if now >= restart_at and restarter.ident is None:
                # The emulator keeps messages in memory only and loses them when it stops; real Pub/Sub never
                # drops a message it acknowledged. So let the sends in flight finish and every event already
                # owed arrive first, then stop it and keep the traffic going through the outage.
                for _ in range(options.senders):
                    in_flight.acquire()
                for _ in range(options.senders):
                    in_flight.release()
                end += settle(deliveries)
                restarter.start()
                injector.note("Pub/Sub emulator stopped for 15 s and restarted; Cloud Tasks emulator restarted")
            in_flight.acquire()
            delivery = make_delivery(rng.choices(kinds, weights)[0], rng, rng.choice(accepted) if accepted else None)
            deliveries.append(delivery)
            pool.submit(send, delivery)
            time.sleep(1.0 / options.rate)
    if restarter.ident is not None:
        restarter.join()
    return deliveries


def _settle(deliveries: list[Delivery], events: Events, limit_s: float = 120.0) -> float:
    """Wait until every accepted job so far has its event (at most `limit_s`); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if not _unheard(deliveries, events):
            break
        time.sleep(0.5)
    _say(f"settled before the Pub/Sub restart in {time.monotonic() - started:.1f} s")
    return time.monotonic() - started


def _unheard(deliveries: list[Delivery], events: Events) -> list[Delivery]:
    """Accepted deliveries with no completion event yet (by job id, or by delivery id for one queued)."""
    heard = {e.get("job_id") for e in events.received} | {e.get("delivery_id") for e in events.received}
    return [d for d in deliveries if d.accepted and d.job_id not in heard and d.webhook_id not in heard]


def _restart(stack: LocalStack, pubsubs: list[emulators.Emulator], events: Events, sweeping: Sweeping) -> None:
    """Stop the emulator, wait, start it on the same port and wire topics again (events subscription first).
    The Cloud Tasks emulator restarts meanwhile: every pending check task is lost, for the sweeper to
    schedule again."""
    _say("Pub/Sub emulator going down; Cloud Tasks emulator restarting (its pending checks are lost)")
    sweeping.paused.set()
    pubsubs[-1].stop()
    stack.restart_tasks()
    time.sleep(PUBSUB_DOWN_S)
    pubsubs.append(emulators.Emulator.start("pubsub", pubsubs[-1].port, project=PROJECT, log_dir=stack.state_dir))
    events.subscribe()
    stack._wire_topics()
    sweeping.paused.clear()
    _say("Pub/Sub emulator back")


def _drain(deliveries: list[Delivery], events: Events, sweeping: Sweeping) -> None:
    """Sweep until every accepted job has its event and two sweeps in a row found nothing to do."""
    deadline = time.monotonic() + DRAIN_LIMIT_S
    quiet = 0
    while time.monotonic() < deadline:
        time.sleep(SWEEP_EVERY_S)
        report = sweeping.sweep()
        busy = any(v for v in report.values())
        waiting = _unheard(deliveries, events)
        quiet = 0 if busy or waiting else quiet + 1
        if quiet >= 2:
            return
        _say(f"draining: {len(waiting)} accepted jobs without an event yet; sweep {report}")
    _say("drain limit reached")


def _report(options: Options, result: Any) -> None:
    verdict = "every promise held" if not result.problems else "BROKEN: " + "; ".join(result.problems)
    text = (f"# Soak run, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
            f"`python -m soak --minutes {options.minutes:g} --rate {options.rate:g} --senders {options.senders} "
            f"--seed {options.seed} --ledger {options.ledger}`: {verdict}.\n\n{result.markdown()}\n")
    print(text)
    Path(options.out).write_text(text)
