"""Who may administer the gateway: `/jobs/{job_id}` and `/openapi.json` are for operators only.

A sender's webhook secret lets it deliver, never administer: a signature over an empty body names no
job and, for schemes without a timestamp, never expires. Operators present
`Authorization: Bearer <token>` with either

- a token from `GATEWAY_OPERATOR_TOKENS` (comma-separated), compared in constant time, or
- a Google-signed ID token (gateway.auth.idtoken: signature, issuer, lifetime, and an audience of
  `GATEWAY_OPERATOR_AUDIENCES`, the function's URL as deploy sets it; never taken from the request's Host
  or X-Forwarded-Proto, which a load balancer or a caller may choose) whose verified email is in
  `GATEWAY_OPERATORS` (comma-separated).

With neither setting every request is refused: the door is closed, not open. Every refusal is the
same 401; the reason is for the log and never holds a value.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.auth.idtoken import IdTokenVerifier
from gateway.errors import AuthenticationFailed, GatewayError, NotAnOperator

_BEARER = re.compile(r"bearer ([\x21-\x7e]+)", re.ASCII | re.IGNORECASE)
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")



@dataclass(frozen=True)
class Operator:
    """Who was let in: `token` (an operator token; which one is not said) or the ID token's email."""

    subject: str


@dataclass(frozen=True)
class Operators:
    """The operator credentials of one instance."""

    tokens: tuple[bytes, ...] = field(repr=False)
    emails: frozenset[str]
    id_token_verifier: Callable[[], IdTokenVerifier] = field(repr=False, compare=False)

    @classmethod
    def from_settings(cls, tokens: tuple[str, ...], emails: frozenset[str],
                      id_token_verifier: Callable[[], IdTokenVerifier]) -> Operators:
        return cls(tuple(token.encode() for token in tokens), emails, id_token_verifier)

    def verify(self, headers: Mapping[str, str], audiences: tuple[str, ...], now: float) -> Operator:
        """The operator behind the request's bearer credential; NotAnOperator otherwise."""
        if not self.tokens and not self.emails:
            raise NotAnOperator("neither GATEWAY_OPERATOR_TOKENS nor GATEWAY_OPERATORS is set")
        value = headers.get("Authorization")
        if not value:
            raise NotAnOperator("no Authorization header")
        match = _BEARER.fullmatch(value) if isinstance(value, str) else None
        if not match:
            raise NotAnOperator("the Authorization header is not Bearer <token>")
        credential = match[1].encode()
        matched = False
        for token in self.tokens:  # every token compared, so the time says nothing about which one
            matched |= hmac.compare_digest(credential, token)
        if matched:
            return Operator("token")
        if self.emails and _JWT.fullmatch(match[1]):
            return Operator(self._email(match[1], audiences, now))
        raise NotAnOperator("the bearer credential is no operator token")

    def _email(self, token: str, audiences: tuple[str, ...], now: float) -> str:
        if not audiences:
            raise NotAnOperator("GATEWAY_OPERATOR_AUDIENCES is not set: no ID token can name this function")
        try:
            claims = self.id_token_verifier().verify(token, audience=list(audiences), now=now)
        except AuthenticationFailed as exc:
            raise NotAnOperator(f"ID token refused: {exc}") from None
        except GatewayError:  # Google's certificates unavailable: an honest 503, not a 401
            raise
        email = claims.get("email")
        if not isinstance(email, str) or email not in self.emails:
            raise NotAnOperator("the ID token's email is not in GATEWAY_OPERATORS")
        if claims.get("email_verified") is not True:
            raise NotAnOperator("the ID token's email is not verified")
        return email
