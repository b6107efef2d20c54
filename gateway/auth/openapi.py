"""How each sender's authentication appears in the OpenAPI document: security schemes, the extra
headers a scheme needs, and a one-line summary per `auth` entry (docs/authentication.md in short).

Reads only the raw `auth` definitions: never a secret, nor the name of a variable holding one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_GOOGLE_ISSUER = "https://accounts.google.com"


@dataclass(frozen=True)
class Header:
    """A request header a scheme needs besides the one its security scheme names."""

    name: str
    required: bool
    description: str


@dataclass(frozen=True)
class SchemeDoc:
    """How one `auth` entry shows in OpenAPI: its security scheme, extra headers and a summary."""

    key: str
    scheme: dict[str, Any]
    headers: tuple[Header, ...]
    summary: str


@dataclass(frozen=True)
class AuthDoc:
    """A workflow's auth as OpenAPI: requirements (alternatives), schemes, headers, a description."""

    security: list[dict[str, list[str]]]
    schemes: dict[str, dict[str, Any]]
    headers: tuple[Header, ...]
    description: str


def workflow_auth(auth: Any) -> AuthDoc:
    """The OpenAPI view of a workflow's `auth` ("none" or a list of scheme entries)."""
    if auth == "none":
        return AuthDoc([], {}, (), "No authentication (`\"auth\": \"none\"`, local demos only).")
    docs = [scheme_doc(entry) for entry in auth]
    security: list[dict[str, list[str]]] = []
    for doc in docs:
        if {doc.key: []} not in security:
            security.append({doc.key: []})
    lines = "\n".join(f"- {doc.summary}" for doc in docs)
    lead = "Authentication" if len(docs) == 1 else "Authentication, any one of"
    return AuthDoc(security, {d.key: d.scheme for d in docs}, _merged_headers(docs), f"{lead}:\n{lines}")


def _merged_headers(docs: list[SchemeDoc]) -> tuple[Header, ...]:
    # Any one scheme may authenticate the request, so a header is required only if every scheme needs it.
    merged: dict[str, Header] = {}
    for doc in docs:
        for header in doc.headers:
            key = header.name.lower()
            required = all(any(h.name.lower() == key and h.required for h in d.headers) for d in docs)
            merged.setdefault(key, Header(header.name, required, header.description))
    return tuple(merged.values())


def _api_key(header: str, description: str) -> dict[str, Any]:
    return {"type": "apiKey", "in": "header", "name": header, "description": description}


def _standard_webhooks(entry: Mapping[str, Any]) -> SchemeDoc:
    return SchemeDoc(
        "standardWebhooks",
        _api_key("webhook-signature", "Standard Webhooks: `v1,<base64 HMAC-SHA256 of "
                 "{webhook-id}.{webhook-timestamp}.{body}>`, several space-separated."),
        (Header("webhook-id", True, "Unique message id, kept as the delivery id."),
         Header("webhook-timestamp", True, "Unix seconds; refused outside the replay window.")),
        f"Standard Webhooks (https://www.standardwebhooks.com/), replay window ±{_tolerance(entry)} s.")


def _github(entry: Mapping[str, Any]) -> SchemeDoc:
    return SchemeDoc(
        "github", _api_key("X-Hub-Signature-256", "GitHub: `sha256=<hex HMAC-SHA256 of the body>`."),
        (Header("X-GitHub-Delivery", False, "GitHub's delivery id."),),
        "GitHub webhook signature (`X-Hub-Signature-256`).")


def _stripe(entry: Mapping[str, Any]) -> SchemeDoc:
    return SchemeDoc(
        "stripe", _api_key("Stripe-Signature", "Stripe: `t=<unix seconds>,v1=<hex HMAC-SHA256 of {t}.{body}>`."),
        (), f"Stripe webhook signature (`Stripe-Signature`), replay window ±{_tolerance(entry)} s.")


def _shopify(entry: Mapping[str, Any]) -> SchemeDoc:
    return SchemeDoc(
        "shopify", _api_key("X-Shopify-Hmac-Sha256", "Shopify: base64 HMAC-SHA256 of the body."),
        (Header("X-Shopify-Webhook-Id", False, "Shopify's webhook id."),),
        "Shopify webhook signature (`X-Shopify-Hmac-Sha256`).")


def _slack(entry: Mapping[str, Any]) -> SchemeDoc:
    return SchemeDoc(
        "slack", _api_key("X-Slack-Signature", "Slack: `v0=<hex HMAC-SHA256 of v0:{timestamp}:{body}>`."),
        (Header("X-Slack-Request-Timestamp", True, "Unix seconds; refused outside the replay window."),),
        f"Slack request signature (`X-Slack-Signature`), replay window ±{_tolerance(entry)} s.")


def _hmac(entry: Mapping[str, Any]) -> SchemeDoc:
    header, signed = str(entry["header"]), list(entry.get("signed", ["body"]))
    separator = entry.get("separator", ".")
    recipe = (f"{entry.get('prefix', '')}<{entry.get('encoding', 'hex')} HMAC-"
              f"{str(entry.get('algorithm', 'sha256')).upper()} of {separator.join('{' + p + '}' for p in signed)}>")
    headers = []
    if entry.get("id_header"):
        headers.append(Header(entry["id_header"], "id" in signed, "Delivery id" + (" (signed)." if "id" in signed else ".")))
    if entry.get("timestamp_header"):
        headers.append(Header(entry["timestamp_header"], True, "Unix seconds (signed); refused outside the replay window."))
    return SchemeDoc(f"hmac.{header}", _api_key(header, "HMAC signature of the request."), tuple(headers),
                     f"HMAC signature in `{header}`: `{recipe}`.")


def _bearer(entry: Mapping[str, Any]) -> SchemeDoc:
    header = str(entry.get("header", "Authorization"))
    if header.lower() == "authorization":
        return SchemeDoc("bearer", {"type": "http", "scheme": "bearer", "description": "A static token."},
                         (), "A static bearer token (`Authorization: Bearer <token>`).")
    return SchemeDoc(f"token.{header}", _api_key(header, "A static token."), (), f"A static token in `{header}`.")


def _google_id_token(entry: Mapping[str, Any]) -> SchemeDoc:
    return SchemeDoc(
        "googleIdToken",
        {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
         "description": f"A Google-signed OIDC ID token (issuer {_GOOGLE_ISSUER}) of an allowed service account."},
        (), f"A Google-signed ID token for audience `{entry.get('audience', '')}` from an allowed service account "
            "(`Authorization: Bearer <token>`; workflow_gateway_client.trigger sends one).")


def _tolerance(entry: Mapping[str, Any]) -> int:
    from gateway.auth.signatures import DEFAULT_TOLERANCE_S

    return int(entry.get("tolerance_s", DEFAULT_TOLERANCE_S))


_SCHEME_DOCS: dict[str, Callable[[Mapping[str, Any]], SchemeDoc]] = {
    "standard-webhooks": _standard_webhooks, "github": _github, "stripe": _stripe, "shopify": _shopify,
    "slack": _slack, "hmac": _hmac, "bearer": _bearer, "google-id-token": _google_id_token,
}


def scheme_doc(entry: Mapping[str, Any]) -> SchemeDoc:
    """The OpenAPI view of one checked `auth` entry."""
    return _SCHEME_DOCS[entry["scheme"]](entry)
