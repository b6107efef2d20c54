"""Building a workflow's authentication schemes from its `auth` configuration (docs/authentication.md).

`env:NAME` references are read from the environment mapping passed in. One variable holds one
secret, verbatim (a secret may contain spaces), except that one trailing newline is dropped, as
files, `echo` and Secret Manager versions often carry one. Rotation is several references
(`"secrets": ["env:A", "env:A_NEXT"]`): every one is active. Every problem is a ConfigError
naming the entry and the variable, never a value.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.idtoken import GoogleCerts, GoogleIdTokenVerifier, IdTokenVerifier
from gateway.auth.signatures import (
    _VISIBLE,
    DEFAULT_TOLERANCE_S,
    Bearer,
    GenericHmac,
    GitHub,
    GoogleIdToken,
    NoAuth,
    Scheme,
    Shopify,
    Slack,
    StandardWebhooks,
    Stripe,
)
from gateway.errors import ConfigError

_ENV_REF = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """The secret in variable `name`: its value verbatim but for one trailing newline (or CRLF); None if the
    variable is unset, empty or blank (whitespace alone is a mistake, never a secret)."""
    value = env.get(name)
    if value is None:
        return None
    value = value.removesuffix("\n").removesuffix("\r") if value.endswith("\n") else value
    return value if value.strip() else None


def build_schemes(auth: str | Sequence[Mapping[str, Any]], env: Mapping[str, str], *,
                  id_token_verifier: IdTokenVerifier | None = None) -> tuple[Scheme, ...]:
    """The schemes a workflow's `auth` configures; ConfigError naming what is wrong (never a value)."""
    if auth == "none":
        return (NoAuth(),)
    if isinstance(auth, (str, bytes)) or not isinstance(auth, Sequence) or not auth:
        raise ConfigError('auth must be "none" or a non-empty list of schemes')
    verifier = (lambda: id_token_verifier) if id_token_verifier else default_id_token_verifier
    return tuple(_build(index, entry, env, verifier) for index, entry in enumerate(auth))


@functools.cache
def default_id_token_verifier() -> IdTokenVerifier:
    """One verifier per instance, fetching Google's certificates on first use."""
    return GoogleIdTokenVerifier(GoogleCerts())


@dataclass(frozen=True)
class _Spec:
    """One entry of `auth`, with readers that fail naming the entry and field."""

    where: str
    entry: Mapping[str, Any]
    env: Mapping[str, str] = field(repr=False)
    id_token_verifier: Callable[[], IdTokenVerifier] = field(repr=False)

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {message}")

    def secrets(self, key: str = "secrets") -> tuple[str, ...]:
        """One secret per referenced variable, in the order of the references (the first one signs)."""
        values = []
        for name in self.variables(key):
            value = read_secret(self.env, name)
            if value is None:
                raise self.fail(f"environment variable {name} is missing or empty")
            values.append(value)
        return tuple(values)

    def variables(self, key: str) -> tuple[str, ...]:
        """The variable names of `key`: one `env:NAME` or a non-empty list of them, each once."""
        refs = self.entry.get(key)
        refs = [refs] if isinstance(refs, str) else refs
        matches = [_ENV_REF.fullmatch(ref) if isinstance(ref, str) else None
                   for ref in (refs if isinstance(refs, list) else [None])]
        if not matches or not all(matches):  # never echo a reference: it may be a secret pasted inline by mistake
            raise self.fail(f"{key} must be 'env:NAME' or a non-empty list of them, each naming an environment variable")
        names = tuple(match[1] for match in matches if match)
        if len(set(names)) != len(names):
            raise self.fail(f"{key} names the same environment variable twice")
        return names

    def utf8_secrets(self) -> tuple[bytes, ...]:
        return tuple(secret.encode() for secret in self.secrets())

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.entry.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"{key} must be a string")
        return value

    def header(self, key: str, default: str | None = None) -> str | None:
        value = self.entry.get(key, default)
        if value is not None and not (isinstance(value, str) and _VISIBLE.fullmatch(value)):
            raise self.fail(f"{key} must be a header name")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.entry.get(key, options[0])
        if value not in options:
            raise self.fail(f"{key} must be one of {', '.join(options)}")
        return value

    def tolerance(self) -> int:
        value = self.entry.get("tolerance_s", DEFAULT_TOLERANCE_S)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail("tolerance_s must be a positive integer")
        return value


def _build(index: int, entry: Any, env: Mapping[str, str],
           verifier: Callable[[], IdTokenVerifier]) -> Scheme:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"auth[{index}] must be an object")
    name = entry.get("scheme")
    builder = _BUILDERS.get(name) if isinstance(name, str) else None
    if builder is None:
        raise ConfigError(f"auth[{index}]: scheme must be one of {', '.join(_BUILDERS)}")
    # Unknown fields are the meta-schema's to refuse (additionalProperties: false).
    return builder(_Spec(f"auth[{index}] ({name})", entry, env, verifier))


def _standard_webhooks(spec: _Spec) -> Scheme:
    return StandardWebhooks(tuple(_whsec_key(spec, s) for s in spec.secrets()), spec.tolerance())


def _whsec_key(spec: _Spec, secret: str) -> bytes:
    # `whsec_` + base64 of the key; like the reference library, padding may be left off.
    text = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise spec.fail("a secret in its environment variable is not whsec_<base64>")
    return key


def _generic_hmac(spec: _Spec) -> Scheme:
    signed = spec.entry.get("signed", ["body"])
    if (not isinstance(signed, list) or "body" not in signed or len(set(signed)) != len(signed)
            or not set(signed) <= {"id", "timestamp", "body"}):
        raise spec.fail("signed must list body and optionally id and timestamp, once each")
    header, id_header = spec.header("header"), spec.header("id_header")
    timestamp_header = spec.header("timestamp_header")
    if not header:
        raise spec.fail("header is required")
    if "id" in signed and not id_header:
        raise spec.fail("signing the id needs id_header")
    if ("timestamp" in signed) != bool(timestamp_header):
        # An unsigned timestamp could be rewritten by a replayer, so it would protect nothing.
        raise spec.fail("timestamp in signed and timestamp_header go together")
    return GenericHmac(
        spec.utf8_secrets(), header, algorithm=spec.choice("algorithm", ("sha256", "sha512")),
        encoding=spec.choice("encoding", ("hex", "base64")), prefix=spec.text("prefix", "") or "",
        signed=tuple(signed), separator=spec.text("separator", ".") or "", id_header=id_header,
        timestamp_header=timestamp_header, tolerance_s=spec.tolerance())


def _bearer(spec: _Spec) -> Scheme:
    tokens = spec.secrets("tokens")
    if not all(_VISIBLE.fullmatch(token) for token in tokens):
        raise spec.fail("tokens must be visible ASCII")
    header = spec.header("header", "Authorization") or "Authorization"
    return Bearer(tuple(token.encode() for token in tokens), header)


def _google_id_token(spec: _Spec) -> Scheme:
    audience = spec.entry.get("audience")
    accounts = spec.entry.get("service_accounts")
    if not isinstance(audience, str) or not audience:
        raise spec.fail("audience is required")
    if not isinstance(accounts, list) or not accounts or not all(
            isinstance(account, str) and account for account in accounts):
        raise spec.fail("service_accounts must list at least one email")
    return GoogleIdToken(audience, frozenset(accounts), spec.id_token_verifier())


_BUILDERS: dict[str, Callable[[_Spec], Scheme]] = {
    "standard-webhooks": _standard_webhooks,
    "github": lambda spec: GitHub(spec.utf8_secrets()),
    "stripe": lambda spec: Stripe(spec.utf8_secrets(), spec.tolerance()),
    "shopify": lambda spec: Shopify(spec.utf8_secrets()),
    "slack": lambda spec: Slack(spec.utf8_secrets(), spec.tolerance()),
    "hmac": _generic_hmac,
    "bearer": _bearer,
    "google-id-token": _google_id_token,
}
