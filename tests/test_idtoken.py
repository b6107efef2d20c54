"""gateway.auth.idtoken: Google ID tokens checked against certificates and a clock that are passed in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from google.auth import crypt, jwt

from gateway.auth.idtoken import GOOGLE_CERTS_URL, GoogleCerts, GoogleIdTokenVerifier
from gateway.errors import SignatureError, Unavailable
from tests.signature_cases import (
    AUDIENCE,
    KEY_ID,
    NOW,
    SERVICE_ACCOUNT,
    StaticCerts,
    id_token,
    id_token_claims,
    id_token_verifier,
    signing_key,
)


def verify(token: str, now: float = NOW, audience: str = AUDIENCE):
    return id_token_verifier().verify(token, audience=audience, now=now)


def test_valid_token_yields_its_claims():
    claims = verify(id_token())
    assert (claims["email"], claims["aud"]) == (SERVICE_ACCOUNT, AUDIENCE)


@pytest.mark.parametrize("issuer", ["accounts.google.com", "https://accounts.google.com"])
def test_both_google_issuer_spellings_are_accepted(issuer):
    assert verify(id_token(iss=issuer))["iss"] == issuer


@pytest.mark.parametrize("issuer", ["https://accounts.google.com/", "securetoken.google.com", None,
                                    ["accounts.google.com"], {"accounts.google.com": 1}])
def test_other_issuers_are_refused(issuer):
    with pytest.raises(SignatureError, match="not issued by Google"):
        verify(id_token(iss=issuer))


def test_expiry_is_checked_against_the_clock_passed_in_not_the_wall_clock():
    token = id_token(iat=1_000, exp=4_600)  # expired decades ago by the wall clock
    assert verify(token, now=2_000)["exp"] == 4_600


@pytest.mark.parametrize("now", [NOW + 3600 + 30, NOW - 30])
def test_clock_skew_of_30_s_is_tolerated_at_both_ends(now):
    assert verify(id_token(), now=now)["email"] == SERVICE_ACCOUNT


def test_token_expired_beyond_the_skew_is_refused():
    with pytest.raises(SignatureError, match="expired"):
        verify(id_token(), now=NOW + 3600 + 31)


def test_token_issued_beyond_the_skew_in_the_future_is_refused():
    with pytest.raises(SignatureError, match="not valid yet"):
        verify(id_token(), now=NOW - 31)


@pytest.mark.parametrize("exp", [float("inf"), float("nan"), True, "9999999999", None])
def test_exp_that_is_not_a_finite_number_is_refused(exp):
    with pytest.raises(SignatureError):
        verify(id_token(exp=exp))


def test_wrong_audience_is_refused():
    with pytest.raises(SignatureError):
        verify(id_token(), audience=AUDIENCE + "/other")


def test_token_signed_by_an_untrusted_key_with_the_trusted_key_id_is_refused():
    with pytest.raises(SignatureError):
        verify(id_token(signing_key("impostor")))


def token_without_key_id() -> str:
    signer = crypt.RSASigner.from_string(signing_key().private_pem, key_id=None)
    return jwt.encode(signer, id_token_claims()).decode()


def test_token_without_key_id_passes_when_any_cert_verifies_it():
    verifier = GoogleIdTokenVerifier(StaticCerts({"a": signing_key("other").cert_pem,
                                                  "b": signing_key().cert_pem}))
    claims = verifier.verify(token_without_key_id(), audience=AUDIENCE, now=NOW)
    assert claims["email"] == SERVICE_ACCOUNT


def test_token_without_key_id_fails_when_no_cert_verifies_it():
    verifier = GoogleIdTokenVerifier(StaticCerts({"a": signing_key("other").cert_pem}))
    with pytest.raises(SignatureError):
        verifier.verify(token_without_key_id(), audience=AUDIENCE, now=NOW)


@dataclass
class CountingCerts:
    """A CertSource that records how often it was asked."""

    calls: int = 0

    def certs(self):
        self.calls += 1
        return {KEY_ID: signing_key().cert_pem}


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "a.b.c=", "a.b.\u00e9",
                                   "a." + "b" * 9000 + ".c"])
def test_token_of_the_wrong_shape_is_refused_without_looking_up_certificates(token):
    certs = CountingCerts()
    with pytest.raises(SignatureError, match="malformed"):
        GoogleIdTokenVerifier(certs).verify(token, audience=AUDIENCE, now=NOW)
    assert certs.calls == 0


# --- GoogleCerts: fetched once, cached for max-age ---------------------------------------------

@dataclass
class FakeResponse:
    status: int
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordingTransport:
    """Answers each call with the next response (or raises it); records what was asked."""

    responses: list
    calls: list = field(default_factory=list)

    def __call__(self, url, method="GET", **kwargs):
        self.calls.append((url, method, kwargs.get("timeout")))
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response


def certs_response(certs: dict[str, str], cache_control: str = "public, max-age=600") -> FakeResponse:
    return FakeResponse(200, json.dumps(certs).encode(), {"cache-control": cache_control})


def test_certificates_are_fetched_once_from_google_and_cached(clock):
    transport = RecordingTransport([certs_response({"k1": "pem1"})])
    source = GoogleCerts(transport, clock=clock.now)
    assert source.certs() == source.certs() == {"k1": "pem1"}
    assert transport.calls == [(GOOGLE_CERTS_URL, "GET", GoogleCerts.TIMEOUT_S)]


def test_certificates_are_fetched_again_after_their_max_age(clock):
    transport = RecordingTransport([certs_response({"k1": "pem1"}), certs_response({"k2": "pem2"})])
    source = GoogleCerts(transport, clock=clock.now)
    source.certs()
    clock.advance(600)
    assert source.certs() == {"k2": "pem2"}


def test_without_cache_control_certificates_are_kept_an_hour(clock):
    transport = RecordingTransport([certs_response({"k1": "pem1"}, cache_control="no-transform")])
    source = GoogleCerts(transport, clock=clock.now)
    source.certs()
    clock.advance(3599)
    assert source.certs() == {"k1": "pem1"}
    assert len(transport.calls) == 1


@pytest.mark.parametrize("failure", [
    FakeResponse(503, b"unavailable"), FakeResponse(200, b"not json"), FakeResponse(200, b"[]"),
    FakeResponse(200, b'{"k1": 1}'),
])
def test_no_certificates_at_all_is_unavailable_not_an_authentication_failure(failure, clock):
    source = GoogleCerts(RecordingTransport([failure]), clock=clock.now)
    with pytest.raises(Unavailable):
        source.certs()


def test_transport_error_with_no_certificates_is_unavailable(clock):
    from google.auth.exceptions import TransportError

    source = GoogleCerts(RecordingTransport([TransportError("connection refused")]), clock=clock.now)
    with pytest.raises(Unavailable):
        source.certs()


def test_failed_refresh_keeps_serving_the_previous_certificates_and_retries_a_minute_later(clock):
    transport = RecordingTransport([certs_response({"k1": "pem1"}), FakeResponse(500, b""),
                                    certs_response({"k2": "pem2"})])
    source = GoogleCerts(transport, clock=clock.now)
    source.certs()
    clock.advance(600)
    assert source.certs() == {"k1": "pem1"}
    clock.advance(59)
    assert source.certs() == {"k1": "pem1"}
    clock.advance(1)
    assert source.certs() == {"k2": "pem2"}
    assert len(transport.calls) == 3


def test_verifier_over_google_certs_accepts_a_token_signed_by_a_published_key(clock):
    transport = RecordingTransport([certs_response({KEY_ID: signing_key().cert_pem})])
    verifier = GoogleIdTokenVerifier(GoogleCerts(transport, clock=clock.now))
    assert verifier.verify(id_token(), audience=AUDIENCE, now=NOW)["email"] == SERVICE_ACCOUNT


@pytest.mark.parametrize("payload", [[], "claims", 7, None, {"iat": "a", "exp": []},
                                     {**id_token_claims(), "aud": [AUDIENCE]},
                                     {**id_token_claims(), "iat": None}])
def test_correctly_signed_token_with_odd_claims_is_refused(payload):
    token = jwt.encode(signing_key().signer, payload).decode()
    with pytest.raises(SignatureError):
        verify(token)


@pytest.mark.parametrize("header", [{"kid": [KEY_ID]}, {"kid": {"a": 1}}, {"alg": ["RS256"]},
                                    {"alg": "HS256"}, {"alg": "none"}])
def test_correctly_signed_token_with_odd_header_is_refused(header):
    signer = crypt.RSASigner.from_string(signing_key().private_pem, key_id=None)  # keeps our kid
    token = jwt.encode(signer, id_token_claims(), header=dict(header)).decode()
    with pytest.raises(SignatureError):
        verify(token)
