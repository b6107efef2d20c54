"""Every malformed header is a SignatureError (401), never another exception, never a secret."""

from __future__ import annotations

import base64
from collections.abc import Callable

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
from tests.strategies import Outcomes


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


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _after(prefix: str, decode: Callable[[str], bytes]) -> Callable[[str], object]:
    return lambda value: decode(value.removeprefix(prefix)) if value.startswith(prefix) else value


# What each signature header says, decoded here from the senders' docs (not by gateway.auth): a splice
# the gateway accepts must say the same (hex in any case, the `Bearer` word in any case, same MAC bytes).
MEANING: dict[str, Callable[[str], object]] = {
    "webhook-signature": lambda v: {_b64(sig) for version, _, sig in (e.partition(",") for e in v.split(" "))
                                    if version == "v1"},
    "Stripe-Signature": lambda v: {(key, _hex(x) if key == "v1" else x)
                                   for key, _, x in (item.partition("=") for item in v.split(",")) if key in ("t", "v1")},
    "X-Hub-Signature-256": _after("sha256=", _hex),
    "X-Slack-Signature": _after("v0=", _hex),
    "X-Shopify-Hmac-Sha256": _b64,
    "X-Signature": _after("sha512=", _b64),
    "Authorization": lambda v: (v.partition(" ")[0].lower(), v.partition(" ")[2]),
}
LISTS = {"webhook-signature", "Stripe-Signature"}  # a sender may add entries; the original's must all remain
UNSIGNED_IDS = {"X-GitHub-Delivery", "X-Shopify-Webhook-Id"}  # delivery ids the MAC does not cover


def assert_says_the_same(name: str, original: str, spliced: str) -> None:
    meaning = MEANING.get(name, str)  # timestamps and signed ids: the very same text
    try:
        said = meaning(spliced)
    except ValueError:
        raise AssertionError(f"accepted a {name} header that does not decode: {spliced!r}") from None
    expected = meaning(original)
    assert said >= expected if name in LISTS else said == expected, f"accepted a different {name}: {spliced!r}"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_spliced_header_is_refused_unless_it_says_the_same(scheme):
    request = signed_request(scheme)
    schemes = schemes_for(request)
    baseline = verify_request(schemes, request.headers, request.body, request.now)
    outcomes = Outcomes()

    @FUZZ
    @given(data=st.data())
    def splice(data):
        name = data.draw(st.sampled_from(header_names(scheme)))
        value = request.headers[name]
        start = data.draw(st.integers(0, len(value)) | st.sampled_from([0, len(value)]))  # the ends, often
        end = data.draw(st.integers(start, len(value)) | st.just(start))
        spliced = value[:start] + data.draw(HEADER_TEXT) + value[end:]
        try:
            verified = verify_request(schemes, {**request.headers, name: spliced}, request.body, request.now)
        except SignatureError:
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        if name in UNSIGNED_IDS:  # accepted as sent, and used as the delivery id as sent (an empty one is none)
            assert verified.delivery_id == (spliced or None)
            return
        assert_says_the_same(name, value, spliced)
        assert verified == baseline

    splice()
    outcomes.assert_both()  # a verifier that refused every splice (the unchanged header too) would fail here


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
    **{name: f"{SENTINEL}-secret" for name in SECRETS},  # one variable, one secret
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
