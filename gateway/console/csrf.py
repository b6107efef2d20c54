"""CSRF tokens for the console's POST forms: an HMAC over who acts, on what, and when the form was made.

The secret is made once per instance and never leaves it, so a token is good only on the instance that
issued it, for the operator it was issued to, for the one action on the one delivery it names, and for
`MAX_AGE_S`. The console is deployed with one instance at most, so a form is posted back to where it was
made; after a restart an old form is refused and the confirmation page is simply loaded again.
(OWASP's "HMAC based token pattern": https://cheatsheetseries.owasp.org/cheatsheets/Cross-Site_Request_Forgery_Prevention_Cheat_Sheet.html)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MAX_AGE_S = 3600
_INSTANCE_SECRET = secrets.token_bytes(32)


def _mac(secret: bytes, operator: str, purpose: str, issued: int) -> str:
    message = "\n".join((operator, purpose, str(issued))).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(hmac.digest(secret, message, hashlib.sha256)).decode().rstrip("=")


def issue(operator: str, purpose: str, now: float, *, secret: bytes = _INSTANCE_SECRET) -> str:
    """A token for `operator` to do `purpose` (e.g. "cancel\\nKEY"), made at `now`."""
    issued = int(now)
    return f"{issued}.{_mac(secret, operator, purpose, issued)}"


def valid(token: str | None, operator: str, purpose: str, now: float, *, secret: bytes = _INSTANCE_SECRET) -> bool:
    """Whether `token` was issued here, to `operator`, for `purpose`, less than MAX_AGE_S ago."""
    issued_text, _, mac = (token or "").partition(".")
    if not issued_text.isdigit() or not mac:
        return False
    issued = int(issued_text)
    if not 0 <= now - issued <= MAX_AGE_S:
        return False
    return hmac.compare_digest(mac.encode(), _mac(secret, operator, purpose, issued).encode())
