"""gateway.auth.signatures: published vectors, official libraries, rotation, replay window, config."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path

import pytest
import standardwebhooks.webhooks
import stripe
from werkzeug.datastructures import EnvironHeaders

from gateway.auth.config import build_schemes
from gateway.auth.signatures import (
    REJECTED,
    Bearer,
    GitHub,
    NoAuth,
    Verified,
    verify_request,
)
from gateway.errors import ConfigError, SignatureError
from tests.signature_cases import (
    AUDIENCE,
    AUTH,
    BODY,
    NOW,
    SCHEMES,
    SECRETS,
    SERVICE_ACCOUNT,
    SW_KEY,
    id_token,
    id_token_verifier,
    signed_request,
)

VECTORS = Path(__file__).parent / "data" / "signatures"
BODY_SIGNING = ("standard-webhooks", "github", "stripe", "shopify", "slack", "hmac")
TIMESTAMPED = ("standard-webhooks", "stripe", "slack", "hmac")


def vector(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


def only(auth: dict, env: dict[str, str] | None = None):
    """The one scheme that `auth` configures (env defaults to the cases' secrets)."""
    (scheme,) = build_schemes([auth], SECRETS if env is None else env,
                              id_token_verifier=id_token_verifier())
    return scheme


def scheme_named(name: str):
    return only(AUTH[name])


def rotating(auth: dict) -> dict:
    """`auth` with its one secret reference turned into two: env:X (the current) and env:X_NEXT."""
    key = "tokens" if "tokens" in auth else "secrets"
    return {**auth, key: [auth[key], auth[key] + "_NEXT"]}


# --- published vectors, frozen clock -------------------------------------------------------------

def test_github_docs_vector_verifies():
    v = vector("github")
    # The docs' secret holds spaces, which an env value would read as several secrets.
    scheme = GitHub((v["secret"].encode(),))
    assert scheme.verify(v["headers"], v["body"].encode(), NOW) == Verified("github", None)


def test_github_docs_vector_is_what_sign_produces():
    v = vector("github")
    signed = GitHub((v["secret"].encode(),)).sign(v["body"].encode(), NOW)
    assert signed["X-Hub-Signature-256"] == v["headers"]["X-Hub-Signature-256"]


def test_slack_docs_vector_verifies_at_its_timestamp():
    v = vector("slack")
    scheme = only(AUTH["slack"], {"SLACK_SECRETS": v["secret"]})
    assert scheme.verify(v["headers"], v["body"].encode(), v["now"]).scheme == "slack"


def test_slack_docs_vector_is_what_sign_produces():
    v = vector("slack")
    scheme = only(AUTH["slack"], {"SLACK_SECRETS": v["secret"]})
    assert scheme.sign(v["body"].encode(), v["now"]) == v["headers"]


def test_standard_webhooks_spec_vector_verifies():
    v = vector("standard-webhooks")
    scheme = only(AUTH["standard-webhooks"], {"SW_SECRETS": v["secret"]})
    verified = scheme.verify(v["headers"], v["body"].encode(), v["now"])
    assert verified == Verified("standard-webhooks", v["headers"]["webhook-id"])


def test_standard_webhooks_spec_vector_is_what_sign_produces():
    v = vector("standard-webhooks")
    scheme = only(AUTH["standard-webhooks"], {"SW_SECRETS": v["secret"]})
    assert scheme.sign(v["body"].encode(), v["now"], v["headers"]["webhook-id"]) == v["headers"]


def test_standard_webhooks_secret_without_prefix_or_padding_is_the_same_key():
    v = vector("standard-webhooks")
    bare = v["secret"].removeprefix("whsec_").rstrip("=")
    scheme = only(AUTH["standard-webhooks"], {"SW_SECRETS": bare})
    assert scheme.verify(v["headers"], v["body"].encode(), v["now"]).scheme == "standard-webhooks"


# --- official libraries and documented algorithms ------------------------------------------------

class FrozenDatetime(dt.datetime):
    """datetime whose now() is NOW, for the standardwebhooks library's own clock."""

    @classmethod
    def now(cls, tz=None):
        return dt.datetime.fromtimestamp(NOW, tz=tz)


def test_standard_webhooks_library_signature_verifies():
    official = standardwebhooks.webhooks.Webhook(SECRETS["SW_SECRETS"])
    signature = official.sign("msg_1", dt.datetime.fromtimestamp(NOW, dt.UTC), BODY.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": signature}
    assert scheme_named("standard-webhooks").verify(headers, BODY, NOW).delivery_id == "msg_1"


def test_standard_webhooks_library_verifies_our_signature(monkeypatch):
    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", FrozenDatetime)
    headers = scheme_named("standard-webhooks").sign(BODY, NOW, "msg_1")
    official = standardwebhooks.webhooks.Webhook(SECRETS["SW_SECRETS"])
    assert official.verify(BODY, headers) == json.loads(BODY)


def test_standard_webhooks_library_refuses_our_signature_of_another_body(monkeypatch):
    # Proves the frozen clock above is what lets the library accept, not a lenient check.
    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", FrozenDatetime)
    headers = scheme_named("standard-webhooks").sign(b'{"other": 1}', NOW, "msg_1")
    official = standardwebhooks.webhooks.Webhook(SECRETS["SW_SECRETS"])
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        official.verify(BODY, headers)


def test_stripe_library_signature_verifies():
    header = stripe.WebhookSignature.generate_signature_header(
        BODY.decode(), SECRETS["STRIPE_SECRETS"], timestamp=NOW)
    assert scheme_named("stripe").verify({"Stripe-Signature": header}, BODY, NOW).scheme == "stripe"


def test_stripe_library_verifies_our_signature():
    header = scheme_named("stripe").sign(BODY, NOW)["Stripe-Signature"]
    # tolerance=None: the library would otherwise compare with the wall clock.
    assert stripe.WebhookSignature.verify_header(BODY, header, SECRETS["STRIPE_SECRETS"], None)


def test_stripe_key_is_the_whole_whsec_string_not_its_base64_decoding():
    secret = SECRETS["STRIPE_SECRETS"]
    documented = hmac.new(secret.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert scheme_named("stripe").sign(BODY, NOW) == {"Stripe-Signature": f"t={NOW},v1={documented}"}


def test_shopify_signature_is_base64_hmac_sha256_of_the_raw_body():
    documented = base64.b64encode(
        hmac.new(SECRETS["SHOPIFY_SECRETS"].encode(), BODY, hashlib.sha256).digest()).decode()
    signed = scheme_named("shopify").sign(BODY, NOW, "delivery-1")
    assert signed == {"X-Shopify-Hmac-Sha256": documented, "X-Shopify-Webhook-Id": "delivery-1"}


@pytest.mark.parametrize("name", [s for s in SCHEMES if s != "google-id-token"])
def test_what_sign_produces_verifies(name):
    scheme = scheme_named(name)
    assert scheme.verify(scheme.sign(BODY, NOW), BODY, NOW).scheme == name


@pytest.mark.parametrize("name", SCHEMES)
def test_independently_signed_request_verifies(name):
    request = signed_request(name)
    scheme = only(request.auth, dict(request.env))
    assert scheme.verify(request.headers, request.body, request.now).scheme == name


# --- delivery ids ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("standard-webhooks", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
    ("github", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ("shopify", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
    ("hmac", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
    ("bearer", None),
])
def test_delivery_id_comes_from_the_senders_header(name, expected):
    request = signed_request(name)
    assert scheme_named(name).verify(request.headers, request.body, NOW).delivery_id == expected


def test_github_delivery_header_is_optional():
    headers = {"X-Hub-Signature-256": scheme_named("github").sign(BODY, NOW)["X-Hub-Signature-256"]}
    assert scheme_named("github").verify(headers, BODY, NOW).delivery_id is None


def test_stripe_delivery_id_is_the_event_id_in_the_body():
    event = b'{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event"}'
    scheme = scheme_named("stripe")
    assert scheme.verify(scheme.sign(event, NOW), event, NOW).delivery_id == "evt_1NG8Du2eZvKYlo2CUI79vXWy"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"id": 7}', b"[" * 100_000, b"\xff"])
def test_stripe_delivery_id_is_none_when_the_body_holds_no_event_id(body):
    scheme = scheme_named("stripe")
    assert scheme.verify(scheme.sign(body, NOW), body, NOW).delivery_id is None


def test_slack_delivery_id_is_the_events_api_event_id():
    event = b'{"type": "event_callback", "event_id": "Ev08MFMKH6"}'
    scheme = scheme_named("slack")
    assert scheme.verify(scheme.sign(event, NOW), event, NOW).delivery_id == "Ev08MFMKH6"


def test_google_id_token_subject_is_the_service_account():
    request = signed_request("google-id-token")
    verified = scheme_named("google-id-token").verify(request.headers, BODY, NOW)
    assert verified == Verified("google-id-token", None, subject=SERVICE_ACCOUNT)


# --- replay window -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", TIMESTAMPED)
@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_exactly_at_the_tolerance_is_accepted(name, offset):
    scheme = scheme_named(name)
    assert scheme.verify(scheme.sign(BODY, NOW + offset), BODY, NOW).scheme == name


@pytest.mark.parametrize("name", TIMESTAMPED)
@pytest.mark.parametrize("offset", [-61, 61])
def test_configured_tolerance_narrows_the_window(name, offset):
    scheme = only({**AUTH[name], "tolerance_s": 60})
    with pytest.raises(SignatureError):
        scheme.verify(scheme.sign(BODY, NOW + offset), BODY, NOW)


# --- rotation ----------------------------------------------------------------------------------

OLD_KEY, NEW_KEY = b"o" * 32, b"n" * 32
OLD_WHSEC, NEW_WHSEC = (f"whsec_{base64.b64encode(k).decode()}" for k in (OLD_KEY, NEW_KEY))


def sw_signature(key: bytes, msg_id: str = "msg_1") -> str:
    mac = hmac.new(key, f"{msg_id}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def sw_headers(signature: str) -> dict[str, str]:
    return {"webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": signature}


def test_standard_webhooks_header_with_two_signatures_passes_when_the_second_matches():
    scheme = only(rotating(AUTH["standard-webhooks"]), {"SW_SECRETS": OLD_WHSEC, "SW_SECRETS_NEXT": NEW_WHSEC})
    header = f"{sw_signature(b'x' * 32)} {sw_signature(NEW_KEY)}"
    assert scheme.verify(sw_headers(header), BODY, NOW).scheme == "standard-webhooks"


def test_standard_webhooks_old_signature_passes_while_both_secrets_are_configured():
    scheme = only(rotating(AUTH["standard-webhooks"]), {"SW_SECRETS": OLD_WHSEC, "SW_SECRETS_NEXT": NEW_WHSEC})
    assert scheme.verify(sw_headers(sw_signature(OLD_KEY)), BODY, NOW).scheme == "standard-webhooks"


def test_standard_webhooks_old_signature_fails_once_the_old_secret_is_removed():
    scheme = only(AUTH["standard-webhooks"], {"SW_SECRETS": NEW_WHSEC})
    with pytest.raises(SignatureError):
        scheme.verify(sw_headers(sw_signature(OLD_KEY)), BODY, NOW)


def stripe_v1(secret: str) -> str:
    return hmac.new(secret.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()


def test_stripe_header_with_two_v1_signatures_passes_when_the_second_matches():
    scheme = only(rotating(AUTH["stripe"]), {"STRIPE_SECRETS": "whsec_old", "STRIPE_SECRETS_NEXT": "whsec_new"})
    header = f"t={NOW},v1={stripe_v1('whsec_unknown')},v0={stripe_v1('x')},v1={stripe_v1('whsec_new')}"
    assert scheme.verify({"Stripe-Signature": header}, BODY, NOW).scheme == "stripe"


def test_stripe_old_signature_fails_once_the_old_secret_is_removed():
    scheme = only(AUTH["stripe"], {"STRIPE_SECRETS": "whsec_new"})
    with pytest.raises(SignatureError):
        scheme.verify({"Stripe-Signature": f"t={NOW},v1={stripe_v1('whsec_old')}"}, BODY, NOW)


SINGLE_SIGNATURE = ("github", "shopify", "slack", "hmac", "bearer")
ENV_VAR = {name: AUTH[name].get("secrets", AUTH[name].get("tokens", "")).removeprefix("env:")
           for name in SINGLE_SIGNATURE}


@pytest.mark.parametrize("name", SINGLE_SIGNATURE)
def test_signature_by_the_second_of_two_secrets_passes(name):
    signed_with_new = only(AUTH[name], {ENV_VAR[name]: "new-secret"}).sign(BODY, NOW)
    both = only(rotating(AUTH[name]), {ENV_VAR[name]: "old-secret", ENV_VAR[name] + "_NEXT": "new-secret"})
    assert both.verify(signed_with_new, BODY, NOW).scheme == name


@pytest.mark.parametrize("name", SINGLE_SIGNATURE)
def test_signature_by_a_removed_secret_fails(name):
    signed_with_old = only(AUTH[name], {ENV_VAR[name]: "old-secret"}).sign(BODY, NOW)
    rotated = only(AUTH[name], {ENV_VAR[name]: "new-secret"})
    with pytest.raises(SignatureError):
        rotated.verify(signed_with_old, BODY, NOW)


# --- the raw body is what is signed ----------------------------------------------------------------

@pytest.mark.parametrize("name", BODY_SIGNING)
def test_reserialised_json_body_fails_with_the_original_signature(name):
    original = b'{"clusters": 3, "store": {"type": "retail"}}'
    reordered = json.dumps({"store": {"type": "retail"}, "clusters": 3}).encode()
    assert json.loads(reordered) == json.loads(original)
    scheme = scheme_named(name)
    with pytest.raises(SignatureError):
        scheme.verify(scheme.sign(original, NOW, "d-1"), reordered, NOW)


# --- the generic hmac scheme ------------------------------------------------------------------------

def test_hmac_defaults_to_hex_sha256_of_the_body_alone():
    scheme = only({"scheme": "hmac", "secrets": "env:HMAC_SECRETS", "header": "X-Signature"})
    expected = hmac.new(SECRETS["HMAC_SECRETS"].encode(), BODY, hashlib.sha256).hexdigest()
    assert scheme.sign(BODY, NOW) == {"X-Signature": expected}


def test_hmac_signs_the_configured_parts_in_order_with_the_separator():
    auth = {"scheme": "hmac", "secrets": "env:HMAC_SECRETS", "header": "X-Sig",
            "signed": ["timestamp", "body"], "separator": ":", "timestamp_header": "X-Ts"}
    expected = hmac.new(SECRETS["HMAC_SECRETS"].encode(), f"{NOW}:".encode() + BODY,
                        hashlib.sha256).hexdigest()
    assert only(auth).sign(BODY, NOW) == {"X-Ts": str(NOW), "X-Sig": expected}


def test_hmac_part_order_matters():
    auth = {"scheme": "hmac", "secrets": "env:HMAC_SECRETS", "header": "X-Sig",
            "signed": ["timestamp", "body"], "timestamp_header": "X-Ts"}
    swapped = only({**auth, "signed": ["body", "timestamp"]})
    with pytest.raises(SignatureError):
        only(auth).verify(swapped.sign(BODY, NOW), BODY, NOW)


def test_hmac_unsigned_id_header_is_the_delivery_id():
    scheme = only({"scheme": "hmac", "secrets": "env:HMAC_SECRETS", "header": "X-Sig",
                   "id_header": "X-Delivery"})
    assert scheme.verify(scheme.sign(BODY, NOW, "d-42"), BODY, NOW).delivery_id == "d-42"


# --- bearer and google-id-token --------------------------------------------------------------------

def test_bearer_scheme_name_is_case_insensitive():
    headers = {"Authorization": "bearer " + SECRETS["BEARER_TOKENS"]}
    assert scheme_named("bearer").verify(headers, BODY, NOW).scheme == "bearer"


def test_bearer_in_a_custom_header_is_the_bare_token():
    scheme = only({"scheme": "bearer", "tokens": "env:BEARER_TOKENS", "header": "X-Gitlab-Token"})
    assert scheme.sign(BODY, NOW) == {"X-Gitlab-Token": SECRETS["BEARER_TOKENS"]}
    assert scheme.verify({"x-gitlab-token": SECRETS["BEARER_TOKENS"]}, BODY, NOW).scheme == "bearer"


def test_bearer_signs_with_the_token_of_the_first_reference():
    scheme = only(rotating(AUTH["bearer"]), {"BEARER_TOKENS": "first", "BEARER_TOKENS_NEXT": "second"})
    assert scheme.sign(BODY, NOW) == {"Authorization": "Bearer first"}


def test_google_id_token_cannot_be_signed_locally_and_says_how_to_get_one():
    with pytest.raises(ConfigError, match="print-identity-token"):
        scheme_named("google-id-token").sign(BODY, NOW)


def test_google_id_token_for_an_account_of_a_longer_list_passes():
    auth = {**AUTH["google-id-token"], "service_accounts": ["a@p.iam.gserviceaccount.com", SERVICE_ACCOUNT]}
    headers = {"Authorization": f"Bearer {id_token()}"}
    assert only(auth).verify(headers, BODY, NOW).subject == SERVICE_ACCOUNT


def test_google_id_token_for_another_audience_fails():
    auth = {**AUTH["google-id-token"], "audience": AUDIENCE + "/other"}
    with pytest.raises(SignatureError):
        only(auth).verify({"Authorization": f"Bearer {id_token()}"}, BODY, NOW)


# --- verify_request and header handling -------------------------------------------------------------

def test_request_passes_when_any_configured_scheme_accepts():
    schemes = build_schemes([AUTH["github"], AUTH["bearer"]], SECRETS)
    verified = verify_request(schemes, {"Authorization": "Bearer " + SECRETS["BEARER_TOKENS"]}, BODY, NOW)
    assert verified.scheme == "bearer"


def test_refusal_is_generic_and_keeps_each_schemes_reason_as_its_cause():
    schemes = build_schemes([AUTH["github"], AUTH["bearer"]], SECRETS)
    with pytest.raises(SignatureError) as refused:
        verify_request(schemes, {"Authorization": "Bearer sentinel-value"}, BODY, NOW)
    assert refused.value.detail == REJECTED
    assert [str(e) for e in refused.value.__cause__.exceptions] == [
        "missing X-Hub-Signature-256 header", "no signature matches"]


def test_no_scheme_at_all_refuses():
    with pytest.raises(SignatureError):
        verify_request((), {}, BODY, NOW)


def test_auth_none_accepts_any_request():
    assert build_schemes("none", {}) == (NoAuth(),)
    assert verify_request(build_schemes("none", {}), {}, b"", NOW) == Verified("none", None)


def test_werkzeug_environ_headers_are_read_case_insensitively():
    headers = scheme_named("standard-webhooks").sign(BODY, NOW, "msg_9")
    environ = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    verified = scheme_named("standard-webhooks").verify(EnvironHeaders(environ), BODY, NOW)
    assert verified.delivery_id == "msg_9"


def test_plain_dict_headers_are_read_case_insensitively():
    headers = {name.upper(): value for name, value in scheme_named("github").sign(BODY, NOW).items()}
    assert scheme_named("github").verify(headers, BODY, NOW).scheme == "github"


# --- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "secret"), [
    ("It's a Secret to Everybody", b"It's a Secret to Everybody"),  # GitHub's documented example: spaces are kept
    ("s3cr3t\n", b"s3cr3t"),  # what a file, `echo` or a Secret Manager version leaves: one newline dropped
    ("s3cr3t\r\n", b"s3cr3t"),
    ("s3cr3t\n\n", b"s3cr3t\n"),  # only one
    (" padded\t", b" padded\t"),  # nothing else is trimmed
])
def test_one_variable_holds_one_secret_verbatim_but_for_one_trailing_newline(value, secret):
    assert only(AUTH["github"], {"GITHUB_SECRETS": value}) == GitHub((secret,))


def test_every_reference_of_a_list_is_one_active_secret_in_order():
    auth = {**AUTH["github"], "secrets": ["env:A", "env:B", "env:C"]}
    assert only(auth, {"A": "first secret", "B": "second\n", "C": "third"}) == GitHub(
        (b"first secret", b"second", b"third"))


@pytest.mark.parametrize("refs", [[], ["env:A", "env:A"], ["env:A", "A"], ["env:A", 7], {"env": "A"}])
def test_a_list_of_references_must_be_non_empty_distinct_env_references(refs):
    with pytest.raises(ConfigError, match=r"auth\[0\] \(github\): secrets ") as refused:
        build_schemes([{**AUTH["github"], "secrets": refs}], {"A": "value-of-a"})
    assert "value-of-a" not in str(refused.value)


def test_an_unset_variable_of_a_rotation_list_is_a_config_error_naming_it():
    auth = {**AUTH["github"], "secrets": ["env:A", "env:A_NEXT"]}
    with pytest.raises(ConfigError, match="A_NEXT is missing or empty") as refused:
        build_schemes([auth], {"A": "secret-of-a"})
    assert "secret-of-a" not in str(refused.value)


@pytest.mark.parametrize("env", [{}, {"GITHUB_SECRETS": ""}, {"GITHUB_SECRETS": " \n"}])
def test_missing_or_empty_secret_variable_is_a_config_error_naming_it(env):
    with pytest.raises(ConfigError, match=r"auth\[0\] \(github\).*GITHUB_SECRETS"):
        build_schemes([AUTH["github"]], env)


@pytest.mark.parametrize("auth", ["None", "", [], {"scheme": "github"}, None, b"none"])
def test_auth_must_be_none_or_a_list(auth):
    with pytest.raises(ConfigError, match="auth must be"):
        build_schemes(auth, SECRETS)


@pytest.mark.parametrize(("entry", "message"), [
    ("github", r"auth\[0\] must be an object"),
    ({"scheme": "gitlab", "secrets": "env:X"}, "scheme must be one of"),
    ({"scheme": "github", "secrets": "GITHUB_SECRETS"}, "secrets must be 'env:NAME'"),
    ({"scheme": "github"}, "secrets must be 'env:NAME'"),
    ({**AUTH["stripe"], "tolerance_s": 0}, "tolerance_s must be a positive integer"),
    ({**AUTH["stripe"], "tolerance_s": True}, "tolerance_s must be a positive integer"),
    ({**AUTH["slack"], "tolerance_s": "300"}, "tolerance_s must be a positive integer"),
    ({"scheme": "hmac", "secrets": "env:HMAC_SECRETS"}, "header is required"),
    ({**AUTH["hmac"], "algorithm": "md5"}, "algorithm must be one of sha256, sha512"),
    ({**AUTH["hmac"], "encoding": "base32"}, "encoding must be one of hex, base64"),
    ({**AUTH["hmac"], "signed": ["id", "timestamp"]}, "signed must list body"),
    ({**AUTH["hmac"], "signed": ["body", "body"]}, "signed must list body"),
    ({**AUTH["hmac"], "signed": ["body", "nonce"]}, "signed must list body"),
    ({**AUTH["hmac"], "id_header": None}, "signing the id needs id_header"),
    ({**AUTH["hmac"], "timestamp_header": None}, "timestamp in signed and timestamp_header"),
    ({**AUTH["hmac"], "signed": ["id", "body"]}, "timestamp in signed and timestamp_header"),
    ({**AUTH["hmac"], "header": "X Sig"}, "header must be a header name"),
    ({**AUTH["hmac"], "prefix": 1}, "prefix must be a string"),
    ({**AUTH["google-id-token"], "audience": ""}, "audience is required"),
    ({**AUTH["google-id-token"], "service_accounts": []}, "service_accounts must list"),
    ({**AUTH["google-id-token"], "service_accounts": "a@b"}, "service_accounts must list"),
])
def test_bad_auth_entry_is_a_config_error_saying_what_is_wrong(entry, message):
    with pytest.raises(ConfigError, match=message):
        build_schemes([entry], SECRETS, id_token_verifier=id_token_verifier())


@pytest.mark.parametrize("secret", ["not base64!", "whsec_", "whsec_@@@@"])
def test_standard_webhooks_secret_that_is_not_base64_is_a_config_error(secret):
    with pytest.raises(ConfigError, match="not whsec_<base64>"):
        build_schemes([AUTH["standard-webhooks"]], {"SW_SECRETS": secret})


def test_bearer_tokens_must_be_visible_ascii():
    with pytest.raises(ConfigError, match="tokens must be visible ASCII"):
        build_schemes([AUTH["bearer"]], {"BEARER_TOKENS": "caf\u00e9"})


def test_standard_webhooks_key_is_the_decoded_secret():
    assert scheme_named("standard-webhooks").keys == (SW_KEY,)


def test_google_id_token_without_an_injected_verifier_builds_without_fetching():
    # The default verifier fetches Google's certificates lazily, on the first token.
    (scheme,) = build_schemes([AUTH["google-id-token"]], {})
    assert scheme.audience == AUDIENCE


def test_scheme_reprs_name_the_scheme():
    assert repr(Bearer((b"t",))) == "Bearer(header='Authorization', name='bearer')"
