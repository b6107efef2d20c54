"""Every malformed header is a SignatureError (401), never another exception, never a secret."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.config import build_schemes
from gateway.auth.signatures import REJECTED, verify_request
from gateway.errors import ConfigError, SignatureError
from tests.signature_cases import (
    AUTH,
    MALFORMED_CASES,
    NOW,
    SCHEMES,
    SECRETS,
    MalformedCase,
    SignedRequest,
    id_token_verifier,
    signed_request,
)


def schemes_for(request: SignedRequest, env=None):
    return build_schemes([request.auth], request.env if env is None else env,
                         id_token_verifier=request.id_token_verifier)


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=[case.id for case in MALFORMED_CASES])
def test_malformed_request_is_refused_with_a_generic_signature_error(case: MalformedCase):
    request = case.request
    with pytest.raises(SignatureError) as refused:
        verify_request(schemes_for(request), request.headers, request.body, request.now)
    assert refused.value.status == 401
    assert refused.value.detail == REJECTED


@pytest.mark.parametrize("scheme", SCHEMES)
def test_table_baseline_is_accepted_so_each_case_fails_for_its_own_fault(scheme):
    request = signed_request(scheme)
    verified = verify_request(schemes_for(request), request.headers, request.body, request.now)
    assert verified.scheme == scheme


@pytest.mark.parametrize("scheme", SCHEMES)
def test_table_covers_every_scheme(scheme):
    assert sum(case.request.scheme == scheme for case in MALFORMED_CASES) >= 10


# --- fuzz: nothing but SignatureError escapes ----------------------------------------------------

HEADER_TEXT = st.one_of(
    st.text(max_size=120),  # any code point, control characters included
    st.text(alphabet="v0129,=. tT-_+/abcdefABCDEF\u00e9\t", max_size=120),  # near the grammar
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def header_names(scheme: str) -> list[str]:
    return sorted(signed_request(scheme).headers)


@pytest.mark.parametrize("scheme", SCHEMES)
@FUZZ
@given(data=st.data(), body=st.binary(max_size=200))
def test_arbitrary_header_values_only_raise_signature_error(scheme, data, body):
    request = signed_request(scheme)
    names = header_names(scheme)
    headers = data.draw(st.dictionaries(st.sampled_from(names), HEADER_TEXT))
    with pytest.raises(SignatureError):
        verify_request(schemes_for(request), headers, body, NOW)


@pytest.mark.parametrize("scheme", SCHEMES)
@FUZZ
@given(data=st.data())
def test_splicing_text_into_a_valid_header_only_raises_signature_error(scheme, data):
    request = signed_request(scheme)
    name = data.draw(st.sampled_from(header_names(scheme)))
    value = request.headers[name]
    start = data.draw(st.integers(0, len(value)))
    end = data.draw(st.integers(start, len(value)))
    spliced = value[:start] + data.draw(HEADER_TEXT) + value[end:]
    headers = {**request.headers, name: spliced}
    try:
        verified = verify_request(schemes_for(request), headers, request.body, request.now)
    except SignatureError:
        return
    assert verified.scheme == scheme  # a splice may rebuild an equivalent valid header


@pytest.mark.parametrize("scheme", SCHEMES)
@FUZZ
@given(headers=st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=6),
       body=st.binary(max_size=100), now=st.floats(allow_nan=False, allow_infinity=False))
def test_arbitrary_header_names_bodies_and_clocks_only_raise_signature_error(scheme, headers, body, now):
    request = signed_request(scheme)
    with pytest.raises(SignatureError):
        verify_request(schemes_for(request), headers, body, now)


# --- no secret in any message or repr ------------------------------------------------------------

SENTINEL = "SENTINEL7f3a"
SENTINEL_KEY = (SENTINEL * 3).encode()  # 36 bytes, so its base64 form is a plausible whsec
SENTINEL_ENV = {
    **{name: f"{SENTINEL}-old {SENTINEL}-new" for name in SECRETS},
    "SW_SECRETS": "whsec_" + base64.b64encode(SENTINEL_KEY).decode(),
}
FORBIDDEN = (SENTINEL, base64.b64encode(SENTINEL_KEY).decode())


def messages(error: BaseException | None) -> list[str]:
    """str() of an error, its detail and everything on its cause chain, exception groups included."""
    found: list[str] = []
    while error is not None:
        found += [str(error), repr(error), getattr(error, "detail", "")]
        for member in getattr(error, "exceptions", ()):
            found += messages(member)
        error = error.__cause__ or error.__context__
    return found


def assert_no_sentinel(texts: list[str]) -> None:
    leaked = [text for text in texts if any(secret in text for secret in FORBIDDEN)]
    assert not leaked


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_repr_holds_no_secret(scheme):
    (built,) = build_schemes([AUTH[scheme]], SENTINEL_ENV, id_token_verifier=id_token_verifier())
    assert_no_sentinel([repr(built), str(built)])


def test_refusals_hold_no_secret():
    texts = []
    for case in MALFORMED_CASES:
        request = case.request
        with pytest.raises(SignatureError) as refused:
            verify_request(schemes_for(request, SENTINEL_ENV), request.headers, request.body, NOW)
        texts += messages(refused.value)
    assert texts
    assert_no_sentinel(texts)


def test_refusal_does_not_echo_the_header_value():
    (scheme,) = build_schemes([AUTH["bearer"]], SENTINEL_ENV)
    with pytest.raises(SignatureError) as refused:
        verify_request([scheme], {"Authorization": f"Bearer {SENTINEL}-guess"}, b"", NOW)
    assert_no_sentinel(messages(refused.value))


@pytest.mark.parametrize("entry", [
    {"scheme": "github", "secrets": SENTINEL},
    {"scheme": "bearer", "tokens": f"{SENTINEL} env:X"},
    {"scheme": "standard-webhooks", "secrets": "env:BAD"},
    {"scheme": "bearer", "tokens": "env:BAD"},
])
def test_config_errors_hold_no_secret(entry):
    env = {"BAD": f"{SENTINEL}\u00e9 not-base64!"}
    with pytest.raises(ConfigError) as failed:
        build_schemes([entry], env)
    assert_no_sentinel(messages(failed.value))
