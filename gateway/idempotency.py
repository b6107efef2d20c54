"""The idempotency-key policy: which value makes the retries of one delivery one job, and the ledger key
it becomes. Pure: the entry points pick the key, `intake` builds the ledger key, both from here."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from gateway import pointer as json_pointer
from gateway.errors import DeliveryIdTooLong
from gateway.workflows import Workflow

IDEMPOTENCY_HEADER = "Idempotency-Key"  # the IETF header, the last resort of a webhook
MESSAGE_ATTRIBUTE = "idempotency_key"  # what a request message may carry instead
MAX_KEY_CHARS = 256  # a delivery id or key names the ledger record and every log line of the delivery


def check_length(*values: str | None) -> None:
    """Refuse (400) a delivery id or idempotency key longer than MAX_KEY_CHARS."""
    for value in values:
        if value is not None and len(value) > MAX_KEY_CHARS:
            raise DeliveryIdTooLong(f"a delivery id or idempotency key is at most {MAX_KEY_CHARS} characters, "
                                    f"this one has {len(value)}")


def request_key(workflow: Workflow, payload: Any, headers: Mapping[str, str], delivery_id: str | None) -> str | None:
    """The key of a webhook delivery: configured header or pointer, else the sender's delivery id from its
    auth scheme, else the IETF `Idempotency-Key` header.

    The scheme's id comes before `Idempotency-Key`: schemes that sign their id (Standard Webhooks,
    Stripe, Slack, hmac) would otherwise let a captured delivery be replayed as a new job by adding
    a fresh, unsigned `Idempotency-Key`."""
    if workflow.idempotency_header and headers.get(workflow.idempotency_header):
        return headers.get(workflow.idempotency_header)
    if workflow.idempotency_pointer:
        value = json_pointer.resolve(payload, workflow.idempotency_pointer)
        if value is not None and not isinstance(value, (dict, list)):
            return str(value)
    return delivery_id or headers.get(IDEMPOTENCY_HEADER)


def message_key(workflow: Workflow, payload: Any, attributes: Mapping[str, str], message_id: str | None) -> str | None:
    """The key of a request message: its `idempotency_key` attribute, else the webhook's policy over its
    attributes (they stand for headers; no scheme, so no delivery id), else the Pub/Sub message id."""
    return attributes.get(MESSAGE_ATTRIBUTE) or request_key(workflow, payload, attributes, None) or message_id


def anonymous_key() -> str:
    """The key of a delivery that names none: unique, so nothing recognises its retries."""
    return "anon-" + secrets.token_hex(16)


def rerun_key(key: str, attempt: int) -> str:
    """The key (or delivery id) of an operator's re-run number `attempt` of the delivery `key`."""
    return f"{key}:rerun-{attempt}"


def ledger_key(workflow: str, key: str) -> str:
    """The ledger's key of a delivery: keys are per workflow."""
    return f"{workflow}:{key}"


def fingerprint(body: bytes) -> str:
    """What tells a replay (same body) from a reuse of its key (another body)."""
    return hashlib.sha256(body).hexdigest()
