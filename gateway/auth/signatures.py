"""Inbound authentication: every scheme of docs/authentication.md, verified on the raw body, without I/O.

A workflow's `auth` is "none" or a list of schemes; a request passes if any of them accepts
it (`verify_request`). Each scheme verifies the raw body bytes (never re-serialised JSON),
compares MACs with `hmac.compare_digest` on bytes, accepts every secret configured for it
(one per configured variable: rotation lists several), refuses timestamps outside
±tolerance in both directions, and turns every missing or malformed header into the same
`SignatureError` (401). Each scheme also has the matching `sign()` for tests and the CLI.

Scheme references:
  standard-webhooks https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
  github            https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
  stripe            https://docs.stripe.com/webhooks#verify-manually
  shopify           https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-2-validate-the-origin-of-your-webhook-to-ensure-its-coming-from-shopify
  slack             https://api.slack.com/authentication/verifying-requests-from-slack
  google-id-token   see gateway.auth.idtoken

Building schemes from a workflow's `auth` entries is gateway.auth.config's job.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from werkzeug.datastructures import EnvironHeaders, Headers

from gateway.auth.idtoken import IdTokenVerifier
from gateway.errors import ConfigError, SignatureError

DEFAULT_TOLERANCE_S = 300
REJECTED = "Missing, malformed or invalid signature"

# Header values we accept: visible ASCII, no leading/trailing or inner whitespace.
_VISIBLE = re.compile(r"[\x21-\x7e]+")
# A plain decimal integer: no sign, no zero padding, no fraction, no non-ASCII digits.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,15}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_BEARER = re.compile(r"bearer ([\x21-\x7e]+)", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class Verified:
    """Who authenticated a request: the accepting scheme and the sender's delivery id."""

    scheme: str
    delivery_id: str | None
    subject: str | None = None


class Scheme(Protocol):
    """One configured way to authenticate a request, with the matching signer."""

    name: str

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified: ...

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]: ...


def verify_request(schemes: Sequence[Scheme], headers: Mapping[str, str], body: bytes,
                   now: float) -> Verified:
    """The first scheme's verdict that accepts the request; SignatureError if none does."""
    failures: list[SignatureError] = []
    for scheme in schemes:
        try:
            return scheme.verify(headers, body, now)
        except SignatureError as exc:
            failures.append(exc)
    # The reasons stay on __cause__ for logs (they never hold a header value or a secret);
    # the caller is told only that authentication failed.
    cause = failures[0] if len(failures) == 1 else (
        ExceptionGroup("every scheme refused the request", failures) if failures else None)
    raise SignatureError(REJECTED) from cause


# --- header parsing: every failure is a SignatureError --------------------------------------

def _lowered(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers looked up by lower-case name. HTTP field names are case-insensitive: werkzeug's
    headers already look them up that way (used as they are: copying them cost ~30 µs a request);
    a plain mapping is lower-cased once."""
    if isinstance(headers, (Headers, EnvironHeaders)):
        return headers
    return {str(name).lower(): value for name, value in headers.items()}


def _required(headers: dict[str, str], name: str) -> str:
    value = headers.get(name.lower())
    if not value:
        raise SignatureError(f"missing {name} header")
    if not isinstance(value, str) or not _VISIBLE.fullmatch(value):
        raise SignatureError(f"malformed {name} header")
    return value


def _optional(headers: dict[str, str], name: str) -> str | None:
    return _required(headers, name) if headers.get(name.lower()) else None


def _timestamp(headers: dict[str, str], name: str, now: float, tolerance_s: int) -> str:
    """The header's text after checking it is a fresh timestamp (see `_fresh`)."""
    return _fresh(_required(headers, name), f"{name} header", now, tolerance_s)


def _fresh(value: str, name: str, now: float, tolerance_s: int) -> str:
    """`value` after checking it is a plain decimal integer within ±tolerance of now."""
    if not _DECIMAL.fullmatch(value):
        raise SignatureError(f"malformed {name}")
    if abs(now - int(value)) > tolerance_s:
        raise SignatureError(f"{name} is outside the replay window")
    return value


def _digest(value: str, encoding: str, name: str) -> bytes:
    if encoding == "hex":
        if not _HEX.fullmatch(value):
            raise SignatureError(f"malformed {name} header")
        return bytes.fromhex(value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"malformed {name} header") from exc


def _expect_match(received: Iterable[bytes], expected: Iterable[bytes]) -> None:
    received, expected = list(received), list(expected)
    matched = False
    for theirs in received:
        for ours in expected:
            matched |= hmac.compare_digest(theirs, ours)
    if not matched:
        raise SignatureError("no signature matches")


def _mac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, algorithm).digest()


def _json_string(body: bytes, key: str) -> str | None:
    """`body[key]` when the body is a JSON object holding a string there (the sender's event id)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, str) and value else None


# --- the schemes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NoAuth:
    """`"auth": "none"`: every request passes (local demos only)."""

    name: str = field(default="none", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        return Verified(self.name, None)

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class StandardWebhooks:
    """Standard Webhooks: HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, base64."""

    keys: tuple[bytes, ...] = field(repr=False)
    tolerance_s: int = DEFAULT_TOLERANCE_S
    name: str = field(default="standard-webhooks", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        h = _lowered(headers)
        msg_id = _required(h, "webhook-id")
        timestamp = _timestamp(h, "webhook-timestamp", now, self.tolerance_s)
        received = _v1_signatures(_spaced(h, "webhook-signature"))
        message = f"{msg_id}.{timestamp}.".encode() + body
        _expect_match(received, (_mac(key, message) for key in self.keys))
        return Verified(self.name, msg_id)

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        msg_id, timestamp = delivery_id or "msg_" + uuid.uuid4().hex, str(int(now))
        mac = _mac(self.keys[0], f"{msg_id}.{timestamp}.".encode() + body)
        return {"webhook-id": msg_id, "webhook-timestamp": timestamp,
                "webhook-signature": "v1," + base64.b64encode(mac).decode()}


def _spaced(headers: dict[str, str], name: str) -> list[str]:
    """A space-delimited list of visible-ASCII entries, exactly one space between them."""
    value = headers.get(name.lower())
    if not value:
        raise SignatureError(f"missing {name} header")
    entries = value.split(" ")
    if not all(_VISIBLE.fullmatch(entry) for entry in entries):
        raise SignatureError(f"malformed {name} header")
    return entries


def _v1_signatures(entries: list[str]) -> list[bytes]:
    # Each entry is `version,base64`; only v1 (symmetric) counts, other versions are skipped
    # without being decoded so that a sender may add new ones.
    found = []
    for entry in entries:
        version, comma, signature = entry.partition(",")
        if not (version and comma and signature) or "," in signature:
            raise SignatureError("malformed webhook-signature header")
        if version == "v1":
            found.append(_digest(signature, "base64", "webhook-signature"))
    if not found:
        raise SignatureError("no v1 signature in webhook-signature header")
    return found


@dataclass(frozen=True)
class GitHub:
    """GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`."""

    keys: tuple[bytes, ...] = field(repr=False)
    name: str = field(default="github", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        h = _lowered(headers)
        value = _required(h, "X-Hub-Signature-256")
        if not value.startswith("sha256="):
            raise SignatureError("malformed X-Hub-Signature-256 header")
        received = _digest(value.removeprefix("sha256="), "hex", "X-Hub-Signature-256")
        _expect_match([received], (_mac(key, body) for key in self.keys))
        return Verified(self.name, _optional(h, "X-GitHub-Delivery"))

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        return {"X-Hub-Signature-256": "sha256=" + _mac(self.keys[0], body).hex(),
                "X-GitHub-Delivery": delivery_id or str(uuid.uuid4())}


@dataclass(frozen=True)
class Stripe:
    """Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=…]`, HMAC-SHA256 of `{t}.{body}`.

    The key is the whole `whsec_…` string's bytes (not base64-decoded). The delivery id is the
    event id in the body, read only after the signature verified.
    """

    keys: tuple[bytes, ...] = field(repr=False)
    tolerance_s: int = DEFAULT_TOLERANCE_S
    name: str = field(default="stripe", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        timestamp, received = _stripe_header(_required(_lowered(headers), "Stripe-Signature"))
        _fresh(timestamp, "Stripe-Signature timestamp", now, self.tolerance_s)
        message = f"{timestamp}.".encode() + body
        _expect_match(received, (_mac(key, message) for key in self.keys))
        return Verified(self.name, _json_string(body, "id"))

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        timestamp = str(int(now))
        mac = _mac(self.keys[0], f"{timestamp}.".encode() + body)
        return {"Stripe-Signature": f"t={timestamp},v1={mac.hex()}"}


def _stripe_header(value: str) -> tuple[str, list[bytes]]:
    """(t, v1 signatures); other schemes (v0, …) are ignored as Stripe's docs require."""
    timestamps, signatures = [], []
    for item in value.split(","):
        key, equals, text = item.partition("=")
        if not (key and equals and text):
            raise SignatureError("malformed Stripe-Signature header")
        if key == "t":
            timestamps.append(text)
        elif key == "v1":
            signatures.append(_digest(text, "hex", "Stripe-Signature"))
    if len(timestamps) != 1:
        raise SignatureError("Stripe-Signature header needs exactly one timestamp")
    if not signatures:
        raise SignatureError("no v1 signature in Stripe-Signature header")
    return timestamps[0], signatures


@dataclass(frozen=True)
class Shopify:
    """Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>`; no timestamp."""

    keys: tuple[bytes, ...] = field(repr=False)
    name: str = field(default="shopify", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        h = _lowered(headers)
        received = _digest(_required(h, "X-Shopify-Hmac-Sha256"), "base64", "X-Shopify-Hmac-Sha256")
        _expect_match([received], (_mac(key, body) for key in self.keys))
        return Verified(self.name, _optional(h, "X-Shopify-Webhook-Id"))

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        return {"X-Shopify-Hmac-Sha256": base64.b64encode(_mac(self.keys[0], body)).decode(),
                "X-Shopify-Webhook-Id": delivery_id or str(uuid.uuid4())}


@dataclass(frozen=True)
class Slack:
    """Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of v0:{timestamp}:{body}>`.

    Slack sends no delivery header; Events API bodies carry `event_id`, used when present.
    """

    keys: tuple[bytes, ...] = field(repr=False)
    tolerance_s: int = DEFAULT_TOLERANCE_S
    name: str = field(default="slack", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        h = _lowered(headers)
        timestamp = _timestamp(h, "X-Slack-Request-Timestamp", now, self.tolerance_s)
        version, equals, text = _required(h, "X-Slack-Signature").partition("=")
        if version != "v0" or not equals:
            raise SignatureError("malformed X-Slack-Signature header")
        received = _digest(text, "hex", "X-Slack-Signature")
        message = f"v0:{timestamp}:".encode() + body
        _expect_match([received], (_mac(key, message) for key in self.keys))
        return Verified(self.name, _json_string(body, "event_id"))

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        timestamp = str(int(now))
        mac = _mac(self.keys[0], f"v0:{timestamp}:".encode() + body)
        return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": "v0=" + mac.hex()}


@dataclass(frozen=True)
class GenericHmac:
    """Any other HMAC sender: header, algorithm, encoding, prefix and what is signed are configured."""

    keys: tuple[bytes, ...] = field(repr=False)
    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    signed: tuple[str, ...] = ("body",)
    separator: str = "."
    id_header: str | None = None
    timestamp_header: str | None = None
    tolerance_s: int = DEFAULT_TOLERANCE_S
    name: str = field(default="hmac", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        h = _lowered(headers)
        delivery_id = self._delivery_id(h)
        timestamp = (_timestamp(h, self.timestamp_header, now, self.tolerance_s)
                     if self.timestamp_header else None)
        value = _required(h, self.header)
        if not value.startswith(self.prefix):
            raise SignatureError(f"malformed {self.header} header")
        received = _digest(value.removeprefix(self.prefix), self.encoding, self.header)
        message = self._message(delivery_id, timestamp, body)
        _expect_match([received], (_mac(key, message, self.algorithm) for key in self.keys))
        return Verified(self.name, delivery_id)

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.id_header:
            delivery_id = delivery_id or str(uuid.uuid4())
            headers[self.id_header] = delivery_id
        timestamp = None
        if self.timestamp_header:
            timestamp = headers[self.timestamp_header] = str(int(now))
        mac = _mac(self.keys[0], self._message(delivery_id, timestamp, body), self.algorithm)
        encoded = mac.hex() if self.encoding == "hex" else base64.b64encode(mac).decode()
        headers[self.header] = self.prefix + encoded
        return headers

    def _delivery_id(self, headers: dict[str, str]) -> str | None:
        if not self.id_header:
            return None
        if "id" in self.signed:
            return _required(headers, self.id_header)
        return _optional(headers, self.id_header)

    def _message(self, delivery_id: str | None, timestamp: str | None, body: bytes) -> bytes:
        parts = {"id": (delivery_id or "").encode(), "timestamp": (timestamp or "").encode(),
                 "body": body}
        return self.separator.encode().join(parts[part] for part in self.signed)


@dataclass(frozen=True)
class Bearer:
    """Static tokens: `Authorization: Bearer <token>`, or the bare token in any other header."""

    tokens: tuple[bytes, ...] = field(repr=False)
    header: str = "Authorization"
    name: str = field(default="bearer", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        h = _lowered(headers)
        token = _bearer_token(h, self.header) if self._is_authorization else _required(h, self.header)
        _expect_match([token.encode()], self.tokens)
        return Verified(self.name, None)

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        token = self.tokens[0].decode()
        return {self.header: f"Bearer {token}" if self._is_authorization else token}

    @property
    def _is_authorization(self) -> bool:
        return self.header.lower() == "authorization"


def _bearer_token(headers: dict[str, str], name: str = "Authorization") -> str:
    """The token of `Bearer <token>` (RFC 6750 §2.1; the scheme name is case-insensitive)."""
    value = headers.get(name.lower())
    if not value:
        raise SignatureError(f"missing {name} header")
    match = _BEARER.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise SignatureError(f"malformed {name} header")
    return match[1]


@dataclass(frozen=True)
class GoogleIdToken:
    """Google-signed ID tokens from other cloud functions, for one audience and listed accounts."""

    audience: str
    service_accounts: frozenset[str]
    verifier: IdTokenVerifier = field(repr=False)
    name: str = field(default="google-id-token", init=False)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        token = _bearer_token(_lowered(headers))
        claims = self.verifier.verify(token, audience=self.audience, now=now)
        email = claims.get("email")
        if not isinstance(email, str) or email not in self.service_accounts:
            raise SignatureError("ID token's account is not allowed")
        if claims.get("email_verified") is not True:
            raise SignatureError("ID token's email is not verified")
        return Verified(self.name, None, subject=email)

    def sign(self, body: bytes, now: float, delivery_id: str | None = None) -> dict[str, str]:
        raise ConfigError(
            "google-id-token cannot be signed locally: send `Authorization: Bearer $(gcloud auth "
            f"print-identity-token --audiences={self.audience})` from an allowed service account")
