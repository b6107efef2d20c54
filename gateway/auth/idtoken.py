"""Google-signed OIDC ID tokens: what other cloud functions send instead of an HMAC.

A caller on Google Cloud gets a token for our URL from its metadata server
(https://cloud.google.com/run/docs/authenticating/service-to-service) and sends it as
`Authorization: Bearer <jwt>`. `GoogleIdTokenVerifier` checks its signature against Google's
certificates, issuer, audience and lifetime against the clock it is given; the signature
scheme in `gateway.auth.signatures` then checks the service account. The certificates come from a
`CertSource`: `GoogleCerts` fetches them on first use and caches them, tests pass their own.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.auth import exceptions as google_exceptions

from gateway.errors import SignatureError, Unavailable

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
# https://developers.google.com/identity/openid-connect/openid-connect#validatinganidtoken
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
DEFAULT_CLOCK_SKEW_S = 30
MAX_TOKEN_CHARS = 8192

# Three base64url segments without padding (RFC 7515 §7.1); anything else is refused before
# a certificate is looked up, so garbage never causes a fetch.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# google.auth.jwt.decode checks iat/exp against the wall clock, which the pure core must not
# read; a window this wide turns that check off and `_check_lifetime` applies the injected one.
_LIBRARY_CLOCK_OFF_S = 10**12
# Everything google.auth.jwt.decode raises for a token that is malformed or does not verify.
_DECODE_ERRORS = (google_exceptions.GoogleAuthError, ValueError, TypeError, KeyError,
                  IndexError, AttributeError)


class CertSource(Protocol):
    """Where the signing certificates come from: key id -> PEM certificate."""

    def certs(self) -> Mapping[str, str]: ...


class IdTokenVerifier(Protocol):
    """Checks an ID token's signature, issuer, audience and lifetime; returns its claims."""

    def verify(self, token: str, *, audience: str | Sequence[str], now: float) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class GoogleIdTokenVerifier:
    """Verifies Google-signed ID tokens against certificates from `cert_source`."""

    cert_source: CertSource
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S

    def verify(self, token: str, *, audience: str | Sequence[str], now: float) -> Mapping[str, Any]:
        """The token's claims (its `aud` one of `audience`); raises SignatureError for anything that does not verify."""
        if not audience:  # google.auth would skip the audience check on None
            raise SignatureError("no audience to check the ID token against")
        if len(token) > MAX_TOKEN_CHARS or not _JWT_SHAPE.fullmatch(token):
            raise SignatureError("ID token is malformed")
        claims = _decode(token, self.cert_source.certs(), audience)
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in GOOGLE_ISSUERS:
            raise SignatureError("ID token was not issued by Google")
        _check_lifetime(claims, now, self.clock_skew_s)
        return claims


def _decode(token: str, certs: Mapping[str, str], audience: str | Sequence[str]) -> Mapping[str, Any]:
    # Imported here: google.auth.jwt pulls in `cryptography`, 55-75 ms of every instance's cold
    # start, and only google-id-token workflows ever need it.
    from google.auth import jwt

    try:
        claims = jwt.decode(token, certs=certs, audience=audience,
                            clock_skew_in_seconds=_LIBRARY_CLOCK_OFF_S)
    except _DECODE_ERRORS as exc:
        raise SignatureError("ID token signature or audience does not verify") from exc
    if not isinstance(claims, Mapping):
        raise SignatureError("ID token is malformed")
    return claims


def _check_lifetime(claims: Mapping[str, Any], now: float, skew: int) -> None:
    issued, expires = claims.get("iat"), claims.get("exp")
    if not (_is_time(issued) and _is_time(expires)):
        raise SignatureError("ID token has no valid iat/exp")
    if now + skew < issued:
        raise SignatureError("ID token is not valid yet")
    if now - skew > expires:
        raise SignatureError("ID token has expired")


def _is_time(value: Any) -> bool:
    # json.loads accepts NaN and Infinity, and bool is an int: neither is a time.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class GoogleCerts:
    """Google's ID-token certificates, fetched on first use and cached for the max-age Google sends.

    `transport` is a google.auth.transport.Request (built lazily when not given); `clock` is
    monotonic seconds. A failed refresh keeps serving the previous certificates (Google
    publishes keys well before signing with them) and retries a minute later.
    """

    DEFAULT_MAX_AGE_S = 3600
    RETRY_AFTER_FAILURE_S = 60
    TIMEOUT_S = 10

    def __init__(self, transport: Callable[..., Any] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, url: str = GOOGLE_CERTS_URL):
        self._transport = transport
        self._clock = clock
        self._url = url
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] | None = None
        self._fresh_until = 0.0

    def certs(self) -> Mapping[str, str]:
        """The current certificates; raises Unavailable if none could ever be fetched."""
        with self._lock:
            if self._certs is None or self._clock() >= self._fresh_until:
                self._refresh()
            assert self._certs is not None
            return self._certs

    def _refresh(self) -> None:
        try:
            certs, max_age = self._fetch()
        except (google_exceptions.GoogleAuthError, ValueError) as exc:
            if self._certs is None:
                raise Unavailable("could not fetch Google's ID-token certificates") from exc
            self._fresh_until = self._clock() + self.RETRY_AFTER_FAILURE_S
            return
        self._certs, self._fresh_until = certs, self._clock() + max_age

    def _fetch(self) -> tuple[Mapping[str, str], int]:
        response = self._request()(self._url, method="GET", timeout=self.TIMEOUT_S)
        if response.status != 200:
            raise google_exceptions.TransportError(f"certificate endpoint answered {response.status}")
        certs = json.loads(response.data)
        if not isinstance(certs, dict) or not certs or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in certs.items()):
            raise ValueError("certificate endpoint answered an unexpected document")
        return certs, _max_age(response.headers.get("cache-control", ""), self.DEFAULT_MAX_AGE_S)

    def _request(self) -> Callable[..., Any]:
        if self._transport is None:
            # Imported here so that an instance with no google-id-token workflow never builds
            # a requests session for it.
            from google.auth.transport.requests import Request

            self._transport = Request()
        return self._transport


def _max_age(cache_control: str, default: int) -> int:
    """Seconds from a Cache-Control header's max-age (RFC 9111 §5.2.2.1), else `default`."""
    match = re.search(r"(?:^|[,\s])max-age=([0-9]{1,9})(?:$|[,\s])", cache_control, re.ASCII)
    return int(match[1]) if match else default
