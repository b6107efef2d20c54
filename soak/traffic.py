"""The soak's senders: what each kind of delivery sends, and a sender that behaves like a webhook
provider (retries 503 and 409 with the same webhook-id, honouring Retry-After, for a few minutes) —
or, for the `once` and `capped` kinds, like GitHub: one attempt, never retried."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests

VALID = "store-clusters"
FAILING = "soak-failing"  # declares FLOAT64 where the procedure takes INT64: CARTO fails the job
CAPPED = "soak-capped"  # at most CAP jobs at once, the rest wait in the ledger (when_busy: queue)
CAP = 2
NEVER_RETRIED = ("once", "capped")  # sent once, as GitHub sends: a 2xx must run, anything else is lost
# Kind -> weight in the mix. Accepted kinds expect a job; the others expect a 4xx and no job.
MIX = {"valid": 40, "once": 12, "capped": 8, "failing": 10, "replay": 10, "conflict": 3, "invalid": 8,
       "bad-signature": 5, "malformed": 5, "not-json": 3, "unknown-workflow": 2, "too-large": 1}
# The documented final answers: a retried delivery whose first answer was lost is answered 200 "duplicate".
# A sender that never retries may be told 503 only when the gateway itself could not record the delivery
# (the soak stops Pub/Sub once); never because of CARTO (reconcile counts those 503s apart).
EXPECTED = {"valid": {202, 200}, "once": {202, 200, 503}, "capped": {202, 200, 503},
            "failing": {202, 200}, "replay": {200}, "conflict": {422}, "invalid": {422},
            "bad-signature": {401}, "malformed": {400}, "not-json": {415}, "unknown-workflow": {404}, "too-large": {413}}
RETRYABLE = (409, 503)
GIVE_UP_AFTER_S = 360.0
WRONG_SECRET = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="


@dataclass
class Delivery:
    """One delivery and everything its sender was told."""

    kind: str
    workflow: str
    webhook_id: str
    body: bytes
    content_type: str = "application/json"
    secret_ok: bool = True
    original: Delivery | None = None  # what a replay or a conflict reuses the webhook-id of
    statuses: list[int] = field(default_factory=list)
    codes: list[str | None] = field(default_factory=list)  # each answer's problem code (None for a 2xx)
    job_id: str | None = None
    queued: bool = False  # answered 202 before CARTO had a job for it
    duplicate: bool | None = None
    gave_up: bool = False

    @property
    def final(self) -> int | None:
        return self.statuses[-1] if self.statuses else None

    @property
    def accepted(self) -> bool:
        return self.final in (200, 202)

    @property
    def retries(self) -> bool:
        return self.kind not in NEVER_RETRIED


def _valid_body(rng: random.Random) -> dict[str, Any]:
    return {"clusters": rng.randint(1, 20), "radius_m": rng.choice([250, 500.5, 1000]),
            "store": {"type": rng.choice(["Supermarket", "Kiosk", "Bakery"])}, "nonce": uuid.uuid4().hex}


def make_delivery(kind: str, rng: random.Random, earlier: Delivery | None) -> Delivery:
    """A new delivery of `kind`; replays and conflicts need an `earlier` accepted one (else: valid)."""
    if kind in ("replay", "conflict") and earlier is None:
        kind = "valid"
    new_id = f"msg_{uuid.uuid4().hex}"
    valid = json.dumps(_valid_body(rng)).encode()
    if kind == "replay":
        assert earlier is not None
        return Delivery(kind, earlier.workflow, earlier.webhook_id, earlier.body, original=earlier)
    if kind == "conflict":
        assert earlier is not None
        return Delivery(kind, earlier.workflow, earlier.webhook_id, valid, original=earlier)
    bodies = {
        "valid": (VALID, valid),
        "once": (VALID, valid),
        "capped": (CAPPED, valid),
        "failing": (FAILING, json.dumps({**_valid_body(rng), "clusters": 2.5}).encode()),
        "invalid": (VALID, json.dumps({"clusters": "two", "radius_m": -1}).encode()),
        "bad-signature": (VALID, valid),
        "malformed": (VALID, rng.choice([b'{"radius_m": 1,', b'{"a": NaN}', b'{"a": 1, "a": 2}', b"\xff{}"])),
        "not-json": (VALID, b"radius_m=500"),
        "unknown-workflow": ("no-such-workflow", valid),
        "too-large": (VALID, b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'),
    }
    workflow, body = bodies[kind]
    return Delivery(kind, workflow, new_id, body, content_type="text/plain" if kind == "not-json" else "application/json",
                    secret_ok=kind != "bad-signature")


class Sender:
    """Sends deliveries to the webhook like a provider would; one HTTP session per thread."""

    def __init__(self, base_url: str, secret: str):
        self.base_url, self.secret = base_url, secret
        self._local = threading.local()
        self.requests = 0
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        """Standard Webhooks headers, signed afresh for every attempt (the timestamp moves on)."""
        secret = self.secret if delivery.secret_ok else WRONG_SECRET
        timestamp = str(int(time.time()))
        key = base64.b64decode(secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{delivery.webhook_id}.{timestamp}.".encode() + delivery.body, hashlib.sha256).digest()
        return {"webhook-id": delivery.webhook_id, "webhook-timestamp": timestamp,
                "webhook-signature": "v1," + base64.b64encode(mac).decode(), "Content-Type": delivery.content_type}

    def send(self, delivery: Delivery) -> Delivery:
        """Post until a final answer, retrying 503/409 with the same webhook-id for GIVE_UP_AFTER_S (once
        only for a kind whose sender never retries)."""
        give_up_at = time.monotonic() + GIVE_UP_AFTER_S
        while True:
            status, answer, retry_after = self._post(delivery)
            delivery.statuses.append(status)
            delivery.codes.append(answer.get("code") if answer is not None and status >= 400 else None)
            if status in (200, 202) and answer is not None:
                delivery.job_id, delivery.duplicate = answer.get("job_id"), answer.get("duplicate")
                delivery.queued = bool(answer.get("queued"))
            if (status not in RETRYABLE and status != 0) or not delivery.retries:
                return delivery
            if time.monotonic() > give_up_at:
                delivery.gave_up = True
                return delivery
            time.sleep(min(max(retry_after, 0.5), 5.0) * random.uniform(0.8, 1.2))

    def _post(self, delivery: Delivery) -> tuple[int, dict[str, Any] | None, float]:
        """(status, JSON body, Retry-After); status 0 when the gateway did not answer at all."""
        with self._lock:
            self.requests += 1
        try:
            response = self._session().post(f"{self.base_url}/hooks/{delivery.workflow}", data=delivery.body,
                                            headers=self._headers(delivery), timeout=120)
        except requests.RequestException:
            return 0, None, 2.0  # the gateway itself did not answer: a provider retries that too
        try:
            retry_after = float(response.headers.get("Retry-After", "1"))
        except ValueError:
            retry_after = 1.0
        try:
            body = response.json()
        except ValueError:
            body = None
        return response.status_code, body if isinstance(body, dict) else None, retry_after
