"""Correctly signed requests for every auth scheme, and the malformed variants each must refuse.

Importable by any test: the unit tests call `gateway.auth.signatures` directly, an HTTP test can
send the same cases through the app (each case carries the workflow `auth` entry, the
environment it reads, the headers, the body, the frozen clock and, for google-id-token, the
verifier to inject). Requests are signed here by plain, independent code following each
sender's documentation — never by `gateway.auth.signatures` — and a timestamp or id is re-signed
when it is the thing being malformed, so the only reason left to refuse is the malformation.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from gateway.auth.idtoken import GoogleIdTokenVerifier

NOW = 1_700_000_000
TOLERANCE_S = 300
BODY = b'{"clusters": 3, "radius_m": 250.5, "store": {"type": "retail"}}'
OTHER_BODY = b'{"clusters": 4, "radius_m": 250.5, "store": {"type": "retail"}}'
DELIVERY_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"

SW_KEY = hashlib.sha256(b"standard-webhooks test key").digest()
SECRETS = {
    "SW_SECRETS": "whsec_" + base64.b64encode(SW_KEY).decode(),
    "GITHUB_SECRETS": "gh-secret-6b1c2f0e",
    "STRIPE_SECRETS": "whsec_stripe0b9d6c1e4a7f2d8b",
    "SHOPIFY_SECRETS": "shpss_3f6a9c2e7d1b4a8f",
    "SLACK_SECRETS": "8f742231b10e8888abcd99yyyzzz85a5",
    "HMAC_SECRETS": "generic-hmac-secret-41d7",
    "BEARER_TOKENS": "tok_live_9f2c7a1e5b3d",
}

AUDIENCE = "https://europe-west1-proj.cloudfunctions.net/webhook"
SERVICE_ACCOUNT = "caller@proj.iam.gserviceaccount.com"
KEY_ID = "test-key-1"

AUTH: dict[str, dict[str, Any]] = {
    "standard-webhooks": {"scheme": "standard-webhooks", "secrets": "env:SW_SECRETS"},
    "github": {"scheme": "github", "secrets": "env:GITHUB_SECRETS"},
    "stripe": {"scheme": "stripe", "secrets": "env:STRIPE_SECRETS", "tolerance_s": TOLERANCE_S},
    "shopify": {"scheme": "shopify", "secrets": "env:SHOPIFY_SECRETS"},
    "slack": {"scheme": "slack", "secrets": "env:SLACK_SECRETS"},
    "hmac": {"scheme": "hmac", "secrets": "env:HMAC_SECRETS", "header": "X-Signature",
             "algorithm": "sha512", "encoding": "base64", "prefix": "sha512=",
             "signed": ["id", "timestamp", "body"], "separator": ".",
             "id_header": "X-Webhook-Id", "timestamp_header": "X-Webhook-Timestamp"},
    "bearer": {"scheme": "bearer", "tokens": "env:BEARER_TOKENS"},
    "google-id-token": {"scheme": "google-id-token", "audience": AUDIENCE,
                        "service_accounts": [SERVICE_ACCOUNT]},
}
SCHEMES = tuple(AUTH)


@dataclass(frozen=True)
class SignedRequest:
    """One request and everything needed to verify it: auth entry, env, clock, verifier."""

    scheme: str
    auth: Mapping[str, Any]
    env: Mapping[str, str]
    headers: dict[str, str]
    body: bytes = BODY
    now: float = NOW
    id_token_verifier: Any = None  # a gateway.auth.idtoken.IdTokenVerifier for google-id-token


@dataclass(frozen=True)
class MalformedCase:
    """A signed request with one thing wrong; `id` names the scheme and the fault."""

    id: str
    request: SignedRequest


# --- independent signers, one per scheme --------------------------------------------------------

def _mac(secret: bytes, message: bytes, digest: str = "sha256") -> bytes:
    return hmac.new(secret, message, digest).digest()


def standard_webhooks_headers(msg_id: str = DELIVERY_ID, ts: str = str(NOW),
                              body: bytes = BODY, key: bytes = SW_KEY) -> dict[str, str]:
    """Headers per the Standard Webhooks spec: base64 HMAC-SHA256 of `id.ts.body`."""
    signature = base64.b64encode(_mac(key, f"{msg_id}.{ts}.".encode() + body)).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1," + signature}


def github_headers(body: bytes = BODY, secret: str = SECRETS["GITHUB_SECRETS"]) -> dict[str, str]:
    """Headers per GitHub's docs: hex HMAC-SHA256 of the body, prefixed `sha256=`."""
    return {"X-Hub-Signature-256": "sha256=" + _mac(secret.encode(), body).hex(),
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}


def stripe_signature(ts: str = str(NOW), body: bytes = BODY,
                     secret: str = SECRETS["STRIPE_SECRETS"]) -> str:
    """The v1 hex HMAC-SHA256 of `ts.body` keyed by the whole `whsec_…` string."""
    return _mac(secret.encode(), f"{ts}.".encode() + body).hex()


def stripe_headers(ts: str = str(NOW), body: bytes = BODY) -> dict[str, str]:
    return {"Stripe-Signature": f"t={ts},v1={stripe_signature(ts, body)}"}


def shopify_headers(body: bytes = BODY, secret: str = SECRETS["SHOPIFY_SECRETS"]) -> dict[str, str]:
    """Headers per Shopify's docs: base64 HMAC-SHA256 of the raw body."""
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(_mac(secret.encode(), body)).decode(),
            "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"}


def slack_headers(ts: str = str(NOW), body: bytes = BODY,
                  secret: str = SECRETS["SLACK_SECRETS"]) -> dict[str, str]:
    """Headers per Slack's docs: `v0=` + hex HMAC-SHA256 of `v0:ts:body`."""
    signature = _mac(secret.encode(), f"v0:{ts}:".encode() + body).hex()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=" + signature}


def hmac_headers(msg_id: str = DELIVERY_ID, ts: str = str(NOW), body: bytes = BODY,
                 secret: str = SECRETS["HMAC_SECRETS"]) -> dict[str, str]:
    """Headers for AUTH["hmac"]: base64 HMAC-SHA512 of `id.ts.body`, prefixed `sha512=`."""
    mac = _mac(secret.encode(), f"{msg_id}.{ts}.".encode() + body, "sha512")
    return {"X-Webhook-Id": msg_id, "X-Webhook-Timestamp": ts,
            "X-Signature": "sha512=" + base64.b64encode(mac).decode()}


def bearer_headers(token: str = SECRETS["BEARER_TOKENS"]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- Google ID tokens signed by a key of our own ------------------------------------------------

@dataclass(frozen=True)
class StaticCerts:
    """A CertSource holding fixed certificates (key id -> PEM)."""

    by_key_id: Mapping[str, str]

    def certs(self) -> Mapping[str, str]:
        return self.by_key_id


@dataclass(frozen=True)
class SigningKey:
    """An RSA key with a self-signed certificate, standing in for one of Google's."""

    signer: crypt.RSASigner
    cert_pem: str
    private_pem: bytes


@functools.cache
def signing_key(name: str = "trusted", key_id: str = KEY_ID) -> SigningKey:
    """A fresh RSA key and self-signed certificate (cached per name for speed)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.test")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(private.public_key()).serial_number(1)
            .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2040, 1, 1, tzinfo=dt.UTC))
            .sign(private, hashes.SHA256()))
    private_pem = private.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    return SigningKey(crypt.RSASigner.from_string(private_pem, key_id=key_id),
                      cert.public_bytes(serialization.Encoding.PEM).decode(), private_pem)


def id_token_verifier() -> GoogleIdTokenVerifier:
    """A verifier trusting only `signing_key()`."""
    return GoogleIdTokenVerifier(StaticCerts({KEY_ID: signing_key().cert_pem}))


def id_token_claims(**overrides: Any) -> dict[str, Any]:
    """The claims of a metadata-server token for AUDIENCE, issued at NOW; `None` drops a claim."""
    claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "azp": "1234567890",
              "sub": "1234567890", "email": SERVICE_ACCOUNT, "email_verified": True,
              "iat": NOW, "exp": NOW + 3600}
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def id_token(key: SigningKey | None = None, **overrides: Any) -> str:
    """A signed ID token with `id_token_claims(**overrides)`."""
    signer = (key or signing_key()).signer
    return jwt.encode(signer, id_token_claims(**overrides)).decode()


def google_headers(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or id_token()}"}


# --- the table --------------------------------------------------------------------------------

def signed_request(scheme: str) -> SignedRequest:
    """The correctly signed baseline request for `scheme`."""
    verifier = id_token_verifier() if scheme == "google-id-token" else None
    return SignedRequest(scheme, AUTH[scheme], dict(SECRETS), _SIGNERS[scheme](),
                         id_token_verifier=verifier)


_SIGNERS: dict[str, Callable[[], dict[str, str]]] = {
    "standard-webhooks": standard_webhooks_headers, "github": github_headers,
    "stripe": stripe_headers, "shopify": shopify_headers, "slack": slack_headers,
    "hmac": hmac_headers, "bearer": bearer_headers, "google-id-token": google_headers,
}

NON_ASCII = "\u00e9"  # latin-1, so an HTTP client can still send it


def _replaced(headers: dict[str, str], name: str, value: str | None) -> dict[str, str]:
    changed = {k: v for k, v in headers.items() if k != name}
    if value is not None:
        changed[name] = value
    return changed


def _each_header(headers: dict[str, str], required: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """The faults every required header must refuse: gone, empty, padded, non-ASCII."""
    faults = {}
    for name in required:
        value = headers[name]
        faults |= {
            f"{name} missing": _replaced(headers, name, None),
            f"{name} empty": _replaced(headers, name, ""),
            f"{name} leading space": _replaced(headers, name, " " + value),
            f"{name} trailing space": _replaced(headers, name, value + " "),
            f"{name} non-ASCII": _replaced(headers, name, value[:-1] + NON_ASCII),
            f"{name} tab inside": _replaced(headers, name, value[:4] + "\t" + value[4:]),
        }
    return faults


def _bad_timestamps(sign: Callable[..., dict[str, str]]) -> dict[str, dict[str, str]]:
    """Timestamps that are not plain decimal integers within ±300 s, each correctly signed."""
    texts = {"zero-padded": "0" + str(NOW), "fractional": f"{NOW}.0", "plus sign": f"+{NOW}",
             "negative": f"-{NOW}", "underscores": f"{NOW:_}", "exponent": "1.7e9",
             "hex": hex(NOW), "non-ASCII digits": str(NOW).translate(_ARABIC_INDIC),
             "301 s old": str(NOW - TOLERANCE_S - 1), "301 s ahead": str(NOW + TOLERANCE_S + 1),
             "zero": "0"}
    return {f"timestamp {fault}": sign(ts=text) for fault, text in texts.items()}


_ARABIC_INDIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


def _standard_webhooks_faults() -> dict[str, dict[str, str]]:
    good = standard_webhooks_headers()
    signature = good["webhook-signature"].removeprefix("v1,")
    sig = {
        "no comma": "v1" + signature, "three parts": f"v1,{signature},v1",
        "only v0": "v0," + signature, "only v2": "v2," + signature,
        "only v1a": "v1a," + signature, "empty version": "," + signature, "empty signature": "v1,",
        "bad base64": "v1,!!" + signature[2:], "stray character": f"v1,{signature[:8]}*{signature[8:]}",
        "base64 without padding": "v1," + signature.rstrip("="),
        "two spaces between": f"v2,{signature}  v1,{signature}",
        "other body": standard_webhooks_headers(body=OTHER_BODY)["webhook-signature"],
        "hex instead of base64": "v1," + base64.b64decode(signature).hex(),
    }
    faults = {f"signature {k}": _replaced(good, "webhook-signature", v) for k, v in sig.items()}
    faults |= _bad_timestamps(standard_webhooks_headers)
    faults["id non-ASCII"] = standard_webhooks_headers(msg_id=DELIVERY_ID + NON_ASCII)
    return faults | _each_header(good, ("webhook-id", "webhook-timestamp", "webhook-signature"))


def _github_faults() -> dict[str, dict[str, str]]:
    good = github_headers()
    hex_sig = good["X-Hub-Signature-256"].removeprefix("sha256=")
    sig = {
        "no prefix": hex_sig, "no equals": "sha256" + hex_sig, "upper-case prefix": "SHA256=" + hex_sig,
        "sha1 only": "sha1=" + hashlib.sha1(b"x").hexdigest(), "bad hex": "sha256=zz" + hex_sig[2:],
        "odd hex": "sha256=" + hex_sig[:-1], "three parts": f"sha256={hex_sig}=",
        "other body": github_headers(OTHER_BODY)["X-Hub-Signature-256"],
        "base64 instead of hex": "sha256=" + base64.b64encode(bytes.fromhex(hex_sig)).decode(),
    }
    faults = {f"signature {k}": _replaced(good, "X-Hub-Signature-256", v) for k, v in sig.items()}
    faults["delivery non-ASCII"] = _replaced(good, "X-GitHub-Delivery", "72d3" + NON_ASCII)
    return faults | _each_header(good, ("X-Hub-Signature-256",))


def _stripe_faults() -> dict[str, dict[str, str]]:
    v1 = stripe_signature()
    header = {
        "no timestamp": f"v1={v1}", "no v1": f"t={NOW}", "only v0": f"t={NOW},v0={v1}",
        "only v2": f"t={NOW},v2={v1}", "two timestamps": f"t={NOW},t={NOW},v1={v1}",
        "no comma": f"t={NOW}v1={v1}", "item without equals": f"t={NOW},v1",
        "empty item": f"t={NOW},,v1={v1}", "trailing comma": f"t={NOW},v1={v1},",
        "space after comma": f"t={NOW}, v1={v1}", "bad hex": f"t={NOW},v1=zz{v1[2:]}",
        "three parts": f"t={NOW},v1={v1}=", "empty timestamp": f"t=,v1={v1}",
        "other body": f"t={NOW},v1={stripe_signature(body=OTHER_BODY)}",
        "upper-case keys": f"T={NOW},V1={v1}",
    }
    faults = {f"signature {k}": {"Stripe-Signature": v} for k, v in header.items()}
    faults |= _bad_timestamps(stripe_headers)
    return faults | _each_header(stripe_headers(), ("Stripe-Signature",))


def _shopify_faults() -> dict[str, dict[str, str]]:
    good = shopify_headers()
    b64 = good["X-Shopify-Hmac-Sha256"]
    sig = {
        "bad base64": "!!" + b64[2:], "missing padding": b64.rstrip("="),
        "stray character": f"{b64[:8]}*{b64[8:]}",
        "url-safe alphabet": b64.replace("+", "-").replace("/", "_") + "-_",
        "hex instead of base64": base64.b64decode(b64).hex(), "prefixed": "sha256=" + b64,
        "other body": shopify_headers(OTHER_BODY)["X-Shopify-Hmac-Sha256"],
    }
    faults = {f"signature {k}": _replaced(good, "X-Shopify-Hmac-Sha256", v) for k, v in sig.items()}
    return faults | _each_header(good, ("X-Shopify-Hmac-Sha256",))


def _slack_faults() -> dict[str, dict[str, str]]:
    good = slack_headers()
    hex_sig = good["X-Slack-Signature"].removeprefix("v0=")
    sig = {
        "only v1": "v1=" + hex_sig, "only v2": "v2=" + hex_sig, "no equals": "v0" + hex_sig,
        "colon": "v0:" + hex_sig, "three parts": f"v0={hex_sig}=", "bad hex": "v0=zz" + hex_sig[2:],
        "two signatures": f"v0={hex_sig},v0={hex_sig}",
        "other body": slack_headers(body=OTHER_BODY)["X-Slack-Signature"],
    }
    faults = {f"signature {k}": _replaced(good, "X-Slack-Signature", v) for k, v in sig.items()}
    faults |= _bad_timestamps(slack_headers)
    return faults | _each_header(good, ("X-Slack-Request-Timestamp", "X-Slack-Signature"))


def _hmac_faults() -> dict[str, dict[str, str]]:
    good = hmac_headers()
    b64 = good["X-Signature"].removeprefix("sha512=")
    sig = {
        "no prefix": b64, "sha256 prefix": "sha256=" + b64, "bad base64": "sha512=!!" + b64[2:],
        "stray character": f"sha512={b64[:8]}*{b64[8:]}",
        "hex instead of base64": "sha512=" + base64.b64decode(b64).hex(),
        "other body": hmac_headers(body=OTHER_BODY)["X-Signature"],
        "other id": hmac_headers(msg_id="msg_other")["X-Signature"],
    }
    faults = {f"signature {k}": _replaced(good, "X-Signature", v) for k, v in sig.items()}
    faults |= _bad_timestamps(hmac_headers)
    faults["id non-ASCII"] = hmac_headers(msg_id=DELIVERY_ID + NON_ASCII)
    return faults | _each_header(good, ("X-Signature", "X-Webhook-Id", "X-Webhook-Timestamp"))


def _bearer_faults() -> dict[str, dict[str, str]]:
    token = SECRETS["BEARER_TOKENS"]
    values = {
        "scheme only": "Bearer", "scheme and space": "Bearer ", "two spaces": f"Bearer  {token}",
        "basic scheme": f"Basic {token}", "no scheme": token, "wrong token": "Bearer tok_live_0",
        "token with extra": f"Bearer {token}x", "token truncated": f"Bearer {token[:-1]}",
        "two tokens": f"Bearer {token} {token}",
    }
    faults = {f"authorization {k}": {"Authorization": v} for k, v in values.items()}
    return faults | _each_header(bearer_headers(), ("Authorization",))


def _google_faults() -> dict[str, dict[str, str]]:
    token = id_token()
    header, payload, signature = token.split(".")
    tokens = {
        "two segments": f"{header}.{payload}", "padded segment": f"{header}.{payload}=.{signature}",
        "bad segment": f"{header}.!{payload}.{signature}", "not JSON": "e30.bm90IGpzb24.c2ln",
        "signed by another key": id_token(signing_key("untrusted")),
        "unknown key id": id_token(signing_key("rotated", key_id="unknown-key")),
        "tampered payload": f"{header}.{id_token(exp=NOW + 7200).split('.')[1]}.{signature}",
        "alg none": f"eyJhbGciOiJub25lIn0.{payload}.{signature}",
        "wrong audience": id_token(aud="https://elsewhere.example"),
        "wrong issuer": id_token(iss="https://evil.example"),
        "expired": id_token(iat=NOW - 3700, exp=NOW - 100),
        "issued in the future": id_token(iat=NOW + 100, exp=NOW + 3700),
        "no exp": id_token(exp=None), "string exp": id_token(exp=str(NOW + 3600)),
        "unlisted account": id_token(email="other@proj.iam.gserviceaccount.com"),
        "email not verified": id_token(email_verified=False),
        "email verified as string": id_token(email_verified="true"), "no email": id_token(email=None),
    }
    faults = {f"token {k}": {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
    faults["authorization basic scheme"] = {"Authorization": f"Basic {token}"}
    faults["authorization scheme only"] = {"Authorization": "Bearer"}
    return faults | _each_header(google_headers(token), ("Authorization",))


_FAULTS: dict[str, Callable[[], dict[str, dict[str, str]]]] = {
    "standard-webhooks": _standard_webhooks_faults, "github": _github_faults,
    "stripe": _stripe_faults, "shopify": _shopify_faults, "slack": _slack_faults,
    "hmac": _hmac_faults, "bearer": _bearer_faults, "google-id-token": _google_faults,
}


def malformed_cases(schemes: tuple[str, ...] = SCHEMES) -> list[MalformedCase]:
    """Every malformed variant of every scheme's signed request; each must be refused."""
    return [MalformedCase(f"{scheme}: {fault}", replace(signed_request(scheme), headers=headers))
            for scheme in schemes for fault, headers in _FAULTS[scheme]().items()]


MALFORMED_CASES = malformed_cases()
