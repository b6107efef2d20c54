"""Every auth scheme of docs/authentication.md over HTTP, through the real functions-framework app.

Each scheme has a test-only workflow under tests/data/workflows/auth/ whose `auth` entry is the
one of tests/signature_cases.AUTH with AUTH_* variable names. They live in a sub-folder so the
shared `test_schemas` fixture (which copies tests/data/workflows/*.json) does not make every
other test supply their secrets. CARTO is the local job API on loopback, the ledger a real
SQLite file, the publisher a recording fake; the clock is frozen at signature_cases.NOW unless
a test signs with the wall clock (the CLI).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from gateway.app import App
from gateway.auth.signatures import REJECTED
from gateway.cli.check import lint
from gateway.errors import ConfigError
from gateway.local.demos import write_demo_schemas
from gateway.logs import JsonFormatter
from gateway.settings import Settings
from gateway.workflows import load_registry
from tests import signature_cases as cases
from tests.apptools import FakeClock, RecordingPublisher, function_client, operator_headers, settings_env
from tests.constants import CARTO_TOKEN, DATA, OPERATOR_TOKEN, ROOT
from tests.signature_cases import BODY, MALFORMED_CASES, NOW, SCHEMES

AUTH_WORKFLOWS = DATA / "workflows" / "auth"
DOC = ROOT / "docs" / "authentication.md"
# signature_cases' variable names -> the ones the auth-* workflows read.
ENV_NAMES = {"SW_SECRETS": "AUTH_STANDARD_WEBHOOKS_SECRETS", "GITHUB_SECRETS": "AUTH_GITHUB_SECRETS",
             "STRIPE_SECRETS": "AUTH_STRIPE_SECRETS", "SHOPIFY_SECRETS": "AUTH_SHOPIFY_SECRETS",
             "SLACK_SECRETS": "AUTH_SLACK_SECRETS", "HMAC_SECRETS": "AUTH_HMAC_SECRETS",
             "BEARER_TOKENS": "AUTH_BEARER_TOKENS"}
# scheme -> the variable its auth-* workflow reads
SECRET_ENV = {scheme: ENV_NAMES[entry.get("secrets", entry.get("tokens", ""))[4:]]
              for scheme, entry in cases.AUTH.items() if scheme != "google-id-token"}
HMAC_SCHEMES = ("standard-webhooks", "github", "stripe", "shopify", "slack", "hmac")
SECRET_SCHEMES = (*HMAC_SCHEMES, "bearer")
TABLE_ENV = {ENV_NAMES[name]: value for name, value in cases.SECRETS.items()}

pytestmark = pytest.mark.sandbox(token=CARTO_TOKEN, default_duration_s=60)  # jobs outlive every test


def workflow(scheme: str) -> str:
    return f"auth-{scheme}"


# --- signing with any secret, by the independent signers of tests/signature_cases ----------------

def whsec_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def whsec(label: str) -> str:
    return "whsec_" + base64.b64encode(hashlib.sha256(label.encode()).digest()).decode()


def sign(scheme: str, secret: str, delivery: str = "delivery-1", body: bytes = BODY) -> dict[str, str]:
    """Headers for `body` signed with `secret` as `scheme`'s sender does, carrying `delivery` where it can."""
    signers: dict[str, Callable[[], dict[str, str]]] = {
        "standard-webhooks": lambda: cases.standard_webhooks_headers(delivery, body=body, key=whsec_key(secret)),
        "github": lambda: {**cases.github_headers(body, secret), "X-GitHub-Delivery": delivery},
        "stripe": lambda: {"Stripe-Signature": f"t={NOW},v1={cases.stripe_signature(body=body, secret=secret)}"},
        "shopify": lambda: {**cases.shopify_headers(body, secret), "X-Shopify-Webhook-Id": delivery},
        "slack": lambda: cases.slack_headers(body=body, secret=secret),
        "hmac": lambda: cases.hmac_headers(delivery, body=body, secret=secret),
        "bearer": lambda: {**cases.bearer_headers(secret), "Idempotency-Key": delivery},
    }
    return signers[scheme]()


def rotation_secret(scheme: str, label: str) -> str:
    return whsec(f"{label} key") if scheme == "standard-webhooks" else f"{label}-{scheme}-secret"


# --- the app under test ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_schemas(tmp_path_factory) -> Path:
    """schemas/ with the demo workflows plus the auth-* test workflows."""
    target = write_demo_schemas(tmp_path_factory.mktemp("auth-schemas") / "schemas")
    for path in AUTH_WORKFLOWS.glob("auth-*.json"):
        shutil.copy(path, target / "workflows" / path.name)
    return target


@dataclass
class Gateway:
    """One built app, its function client and everything a request could have reached."""

    app: App
    client: Any
    sandbox: Any
    publisher: RecordingPublisher
    ledger_file: Path
    earlier_jobs: frozenset[str]

    def post(self, scheme: str, headers: Mapping[str, str], body: bytes = BODY, route: str = ""):
        sent = {"Content-Type": "application/json", **headers}
        return self.client.post(f"/hooks/{workflow(scheme)}{route}", data=body, headers=sent)

    def jobs(self) -> list[Any]:
        """The CARTO jobs this app submitted."""
        return [job for job in self.sandbox.jobs() if job.external_id not in self.earlier_jobs]

    def deliveries(self) -> int:
        with sqlite3.connect(self.ledger_file) as db:
            return db.execute("SELECT count(*) FROM deliveries").fetchone()[0]

    def assert_reached_nothing(self) -> None:
        assert self.jobs() == []
        assert self.deliveries() == 0
        assert self.publisher.messages == []


@dataclass
class RecordingVerifier:
    """An IdTokenVerifier that counts calls and delegates to signature_cases' trusted key."""

    calls: list[str] = field(default_factory=list)

    def verify(self, token: str, *, audience: str, now: float) -> Mapping[str, Any]:
        self.calls.append(audience)
        return cases.id_token_verifier().verify(token, audience=audience, now=now)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(auth_schemas, sandbox, tmp_path) -> GatewayFactory:
    """Build an app over the auth workflows (or `schemas`); `env` overrides, `clock=None` is the wall clock."""
    builds = itertools.count()

    def build(env: Mapping[str, str] | None = None, *, clock: float | None = NOW,
              verifier: Any = None, schemas: Path = auth_schemas) -> Gateway:
        state = tmp_path / f"state-{next(builds)}"
        settings = Settings.from_env(settings_env(schemas, sandbox.url, state, **{**TABLE_ENV, **(env or {})}))
        publisher = RecordingPublisher()
        app = App.build(settings, publisher=publisher,
                        clock=FakeClock(clock) if clock is not None else None,
                        id_token_verifier=verifier or RecordingVerifier())
        earlier = frozenset(job.external_id for job in sandbox.jobs())
        return Gateway(app, function_client(app), sandbox, publisher, state / "ledger.sqlite3", earlier)

    return build


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    return make_gateway()


class Capture(logging.Handler):
    """Every record once, as the JSON line the gateway writes and as text with its traceback."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.json_lines: list[str] = []
        self.lines: list[str] = []
        self.json, self.text = JsonFormatter("test-project"), logging.Formatter("%(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        if any(seen is record for seen in self.records):  # on `gateway` and the root: propagated twice
            return
        self.records.append(record)
        self.json_lines.append(self.json.format(record))
        self.lines += [self.json_lines[-1], self.text.format(record), repr(vars(record))]


@pytest.fixture
def captured_logs() -> Iterator[Capture]:
    capture = Capture()
    loggers = [logging.getLogger("gateway"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
    yield capture
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(capture)
        logger.setLevel(level)


def assert_problem(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(response.get_data())
    assert problem["status"] == status and problem["type"] and problem["title"]
    return problem


def assert_refused(response) -> None:
    problem = assert_problem(response, 401)
    assert problem["code"] == "bad-signature" and problem["detail"] == REJECTED


# --- the test workflows are the table's configuration -------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_auth_workflow_configures_the_tables_entry_for_its_scheme(scheme):
    entry = json.loads((AUTH_WORKFLOWS / f"{workflow(scheme)}.json").read_text())["auth"]
    expected = dict(cases.AUTH[scheme])
    for key in ("secrets", "tokens"):
        if key in expected:
            expected[key] = "env:" + ENV_NAMES[expected[key].removeprefix("env:")]
    assert entry == [expected]


# --- a signed delivery is a job, keyed by the sender's delivery id --------------------------------

STRIPE_EVENT = b'{"id": "evt_1PdQ2fGk8hZ3kLmN", "object": "event", "type": "checkout.session.completed"}'
SLACK_EVENT = b'{"type": "event_callback", "event_id": "Ev08MFMKH6", "event": {"type": "app_mention"}}'


def signed_delivery(scheme: str) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, the delivery id the gateway must key it by) as the real sender would send it."""
    if scheme == "stripe":
        return STRIPE_EVENT, cases.stripe_headers(body=STRIPE_EVENT), "evt_1PdQ2fGk8hZ3kLmN"
    if scheme == "slack":
        return SLACK_EVENT, cases.slack_headers(body=SLACK_EVENT), "Ev08MFMKH6"
    headers = cases.signed_request(scheme).headers
    if scheme in ("bearer", "google-id-token"):  # no delivery id of their own: the IETF header
        return BODY, {**headers, "Idempotency-Key": "order-1042"}, "order-1042"
    delivery_header = {"standard-webhooks": "webhook-id", "github": "X-GitHub-Delivery",
                       "shopify": "X-Shopify-Webhook-Id", "hmac": "X-Webhook-Id"}[scheme]
    return BODY, headers, headers[delivery_header]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_signed_delivery_is_accepted_and_keyed_by_its_delivery_id(gateway, scheme):
    body, headers, delivery_id = signed_delivery(scheme)

    response = gateway.post(scheme, headers, body)

    assert response.status_code == 202, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["delivery_id"] == delivery_id and answer["duplicate"] is False
    assert [job.external_id for job in gateway.jobs()] == [answer["job_id"]]
    assert gateway.app.ledger.get(f"{workflow(scheme)}:{delivery_id}").job_id == answer["job_id"]
    assert len(gateway.publisher.on("workflow-jobs")) == 1


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_replayed_delivery_is_a_200_duplicate_of_the_same_job(gateway, scheme):
    body, headers, _ = signed_delivery(scheme)
    first = gateway.post(scheme, headers, body)

    replay = gateway.post(scheme, headers, body)

    assert replay.status_code == 200, replay.get_data(as_text=True)
    assert replay.get_json()["duplicate"] is True
    assert replay.get_json()["job_id"] == first.get_json()["job_id"]
    assert len(gateway.jobs()) == 1


@pytest.mark.parametrize("scheme", ["bearer", "google-id-token"])
def test_without_a_delivery_id_or_idempotency_key_each_request_is_its_own_job(gateway, scheme):
    headers = cases.signed_request(scheme).headers

    answers = [gateway.post(scheme, headers) for _ in range(2)]

    assert [a.status_code for a in answers] == [202, 202]
    assert len(gateway.jobs()) == 2


SLACK_HANDSHAKE = (b'{"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "type": "url_verification", '
                   b'"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}')


def test_slacks_signed_url_verification_is_answered_with_its_challenge_and_submits_nothing(gateway):
    response = gateway.post("slack", cases.slack_headers(body=SLACK_HANDSHAKE), SLACK_HANDSHAKE)

    assert response.status_code == 200
    assert response.get_json() == {"challenge": json.loads(SLACK_HANDSHAKE)["challenge"]}
    gateway.assert_reached_nothing()


def test_an_unsigned_slack_url_verification_is_a_401(gateway):
    headers = cases.slack_headers(body=SLACK_HANDSHAKE, secret="not-the-signing-secret")

    assert_refused(gateway.post("slack", headers, SLACK_HANDSHAKE))


def test_a_url_verification_body_for_another_scheme_is_an_ordinary_delivery(gateway):
    response = gateway.post("github", cases.github_headers(SLACK_HANDSHAKE), SLACK_HANDSHAKE)

    assert response.status_code == 202 and len(gateway.jobs()) == 1


# --- every malformed header of the table, over HTTP -------------------------------------------------

@pytest.mark.parametrize("case", MALFORMED_CASES, ids=[case.id for case in MALFORMED_CASES])
def test_a_malformed_header_is_a_401_problem_that_reaches_nothing(gateway, case):
    assert case.request.env == cases.SECRETS and case.request.now == NOW  # what `gateway` is built with

    response = gateway.post(case.request.scheme, case.request.headers, case.request.body)

    assert_refused(response)
    gateway.assert_reached_nothing()


def test_a_refusal_is_logged_with_its_reason_for_the_operator(gateway, captured_logs):
    stale = cases.standard_webhooks_headers(ts=str(NOW - 301))

    assert_refused(gateway.post("standard-webhooks", stale))

    lines = [json.loads(line) for line in captured_logs.json_lines]
    refusals = [line for line in lines if line["message"].startswith("authentication refused")]
    assert [(r["message"], r["workflow"]) for r in refusals] == [
        ("authentication refused: webhook-timestamp header is outside the replay window", "auth-standard-webhooks")]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_tables_baseline_is_accepted_over_http_so_each_case_fails_for_its_own_fault(gateway, scheme):
    request = cases.signed_request(scheme)
    assert gateway.post(scheme, request.headers, request.body).status_code == 202


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_validate_route_refuses_a_bad_signature_too(gateway, scheme):
    first_fault = cases.malformed_cases((scheme,))[0].request

    assert_refused(gateway.post(scheme, first_fault.headers, first_fault.body, route="/validate"))
    gateway.assert_reached_nothing()


# --- rotation: several references, one secret each ---------------------------------------------------

@pytest.fixture(scope="module")
def rotation_schemas(auth_schemas, tmp_path_factory) -> Path:
    """The auth workflows with `"secrets": ["env:X", "env:X_NEXT"]`: the current and the next secret."""
    target = tmp_path_factory.mktemp("rotation-schemas") / "schemas"
    shutil.copytree(auth_schemas, target)
    for scheme in SECRET_SCHEMES:
        path = target / "workflows" / f"{workflow(scheme)}.json"
        definition = json.loads(path.read_text())
        (entry,) = definition["auth"]
        key = "tokens" if "tokens" in entry else "secrets"
        entry[key] = [entry[key], entry[key] + "_NEXT"]
        path.write_text(json.dumps(definition))
    return target


# Every rotation workflow loads at once: the others' second variables hold their table secrets.
NEXT_ENV = {SECRET_ENV[scheme] + "_NEXT": TABLE_ENV[SECRET_ENV[scheme]] for scheme in SECRET_SCHEMES}


def rotating(scheme: str, current: str, following: str) -> dict[str, str]:
    return {**NEXT_ENV, SECRET_ENV[scheme]: current, SECRET_ENV[scheme] + "_NEXT": following}


def two_signatures(scheme: str, stranger: str, current: str) -> dict[str, str]:
    """One header carrying a signature by `stranger` first and by `current` second."""
    if scheme == "standard-webhooks":
        first, second = (sign(scheme, s)["webhook-signature"] for s in (stranger, current))
        return {**sign(scheme, current), "webhook-signature": f"{first} {second}"}
    first, second = (cases.stripe_signature(secret=s) for s in (stranger, current))
    return {"Stripe-Signature": f"t={NOW},v1={first},v1={second}"}


@pytest.mark.parametrize("scheme", ["standard-webhooks", "stripe"])
def test_a_header_whose_second_signature_matches_a_configured_secret_is_accepted(make_gateway, rotation_schemas,
                                                                                 scheme):
    old, new, stranger = (rotation_secret(scheme, label) for label in ("old", "new", "stranger"))
    gateway = make_gateway(rotating(scheme, old, new), schemas=rotation_schemas)

    response = gateway.post(scheme, two_signatures(scheme, stranger, new))

    assert response.status_code == 202, response.get_data(as_text=True)


@pytest.mark.parametrize("scheme", SECRET_SCHEMES)
def test_while_rotating_both_secrets_are_accepted(make_gateway, rotation_schemas, scheme):
    old, new = rotation_secret(scheme, "old"), rotation_secret(scheme, "new")
    gateway = make_gateway(rotating(scheme, old, new), schemas=rotation_schemas)

    statuses = [gateway.post(scheme, sign(scheme, secret, delivery=f"d-{i}")).status_code
                for i, secret in enumerate((old, new))]

    assert statuses == [202, 202]


@pytest.mark.parametrize("scheme", SECRET_SCHEMES)
def test_after_the_old_secret_is_removed_its_signature_alone_is_a_401(make_gateway, scheme):
    old, new = rotation_secret(scheme, "old"), rotation_secret(scheme, "new")
    gateway = make_gateway({SECRET_ENV[scheme]: new})

    assert_refused(gateway.post(scheme, sign(scheme, old)))
    gateway.assert_reached_nothing()
    assert gateway.post(scheme, sign(scheme, new)).status_code == 202


@pytest.mark.parametrize("scheme", ["standard-webhooks", "stripe"])
def test_after_the_old_secret_is_removed_a_header_signed_by_old_and_stranger_is_a_401(make_gateway, scheme):
    old, new, stranger = (rotation_secret(scheme, label) for label in ("old", "new", "stranger"))
    gateway = make_gateway({SECRET_ENV[scheme]: new})

    assert_refused(gateway.post(scheme, two_signatures(scheme, stranger, old)))
    gateway.assert_reached_nothing()


@pytest.mark.parametrize("scheme", SECRET_SCHEMES)
def test_a_rotation_whose_second_variable_is_unset_does_not_load_and_names_it(make_gateway, rotation_schemas,
                                                                              scheme):
    current = rotation_secret(scheme, "current")
    env = {**TABLE_ENV, **NEXT_ENV, SECRET_ENV[scheme]: current}
    del env[SECRET_ENV[scheme] + "_NEXT"]

    with pytest.raises(ConfigError) as refused:
        load_registry(rotation_schemas, env)

    assert f"{workflow(scheme)}.json" in str(refused.value) and f"{SECRET_ENV[scheme]}_NEXT" in str(refused.value)
    assert current not in str(refused.value)


# --- one variable, one secret: spaces are part of it ---------------------------------------------------

GITHUB_VECTOR = json.loads((DATA / "signatures" / "github.json").read_text())


def test_githubs_documented_example_secret_verifies_githubs_published_vector_over_http(make_gateway):
    """docs.github.com, "Validating webhook deliveries", testing the webhook payload validation."""
    assert GITHUB_VECTOR["secret"] == "It's a Secret to Everybody"
    body = GITHUB_VECTOR["body"].encode()
    gateway = make_gateway({SECRET_ENV["github"]: GITHUB_VECTOR["secret"]})

    # "Hello, World!" is no JSON: a 400 *after* the signature verified, where a wrong secret is a 401.
    accepted = gateway.post("github", GITHUB_VECTOR["headers"], body, route="/validate")
    refused = make_gateway({SECRET_ENV["github"]: "It's"}).post("github", GITHUB_VECTOR["headers"], body)

    assert_problem(accepted, 400)
    assert_refused(refused)


def test_a_secret_with_spaces_verifies_a_signed_delivery_over_http(make_gateway):
    secret = "It's a Secret to Everybody"
    gateway = make_gateway({SECRET_ENV["github"]: secret})

    response = gateway.post("github", sign("github", secret))

    assert response.status_code == 202, response.get_data(as_text=True)
    assert_refused(gateway.post("github", sign("github", "It's")))  # a word of it is no secret of its own


@pytest.mark.parametrize("scheme", SECRET_SCHEMES)
def test_a_secret_read_from_a_variable_ending_in_a_newline_verifies(make_gateway, scheme):
    secret = rotation_secret(scheme, "from-a-file")
    gateway = make_gateway({SECRET_ENV[scheme]: secret + "\n"})

    assert gateway.post(scheme, sign(scheme, secret)).status_code == 202


@pytest.mark.parametrize("value", ["", "\n"])
def test_an_empty_secret_variable_does_not_load_and_names_it(make_gateway, value):
    with pytest.raises(ConfigError, match=f"auth-github.json.*{SECRET_ENV['github']} is missing or empty"):
        make_gateway({SECRET_ENV["github"]: value})


# --- the raw body is what is signed ------------------------------------------------------------

RESERIALISED = {
    "re-ordered": json.dumps(dict(reversed(json.loads(BODY).items()))).encode(),
    "compacted": json.dumps(json.loads(BODY), separators=(",", ":")).encode(),
}


@pytest.mark.parametrize("variant", RESERIALISED)
@pytest.mark.parametrize("scheme", HMAC_SCHEMES)
def test_a_reserialised_body_with_the_original_signature_is_a_401(gateway, scheme, variant):
    headers = cases.signed_request(scheme).headers
    assert json.loads(RESERIALISED[variant]) == json.loads(BODY)

    assert_refused(gateway.post(scheme, headers, RESERIALISED[variant]))
    gateway.assert_reached_nothing()


# --- no secret anywhere ------------------------------------------------------------------------------

SENTINEL_KEY = b"SENTINEL-standard-webhooks-key-c41e"
SENTINELS = {
    "standard-webhooks": "whsec_" + base64.b64encode(SENTINEL_KEY).decode(),
    "github": "SENTINEL-github-9d2e7a", "stripe": "whsec_SENTINELstripe5b8f01",
    "shopify": "SENTINEL-shopify-2c6d44", "slack": "SENTINEL-slack-e71b09",
    "hmac": "SENTINEL-hmac-0fa3c6", "bearer": "SENTINEL-bearer-token-83d1",
}


def forbidden_texts(secret: str) -> set[str]:
    """The secret, its base64 part and, where that decodes, the key bytes it stands for."""
    texts = {secret, secret.removeprefix("whsec_")}
    try:
        texts.add(base64.b64decode(secret.removeprefix("whsec_"), validate=True).decode("latin-1"))
    except (binascii.Error, ValueError):
        pass
    return {text for text in texts if len(text) >= 8}


def sentinel_traffic(gateway: Gateway, scheme: str) -> Iterator[Any]:
    """Valid, replayed, wrongly signed, malformed, unparseable and invalid requests, and the job route."""
    secret = SENTINELS[scheme]
    accepted = gateway.post(scheme, sign(scheme, secret, delivery=f"{scheme}-ok"))
    yield accepted
    yield gateway.post(scheme, sign(scheme, secret, delivery=f"{scheme}-ok"))
    yield gateway.post(scheme, sign(scheme, rotation_secret(scheme, "wrong"), delivery=f"{scheme}-bad"))
    yield gateway.post(scheme, sign(scheme, secret, delivery=f"{scheme}-reordered"), RESERIALISED["re-ordered"])
    for body in (b"[]", b"{not json", b'{"store": {"type": 7}}'):
        yield gateway.post(scheme, sign(scheme, secret, delivery=f"{scheme}-{body!r}", body=body), body)
    yield gateway.post(scheme, sign(scheme, secret, delivery=f"{scheme}-v"), route="/validate")
    job_id = accepted.get_json()["job_id"]
    yield gateway.client.get(f"/jobs/{job_id}", headers=sign(scheme, secret, delivery=f"{scheme}-get", body=b""))
    for case in cases.malformed_cases((scheme,)):
        yield gateway.post(scheme, case.request.headers, case.request.body)


def operator_traffic(gateway: Gateway, job_id: str) -> Iterator[Any]:
    """The operator token reading and cancelling a job and the document; near misses of it refused."""
    yield gateway.client.get(f"/jobs/{job_id}", headers=operator_headers())
    yield gateway.client.get("/openapi.json", headers=operator_headers())
    for near_miss in (OPERATOR_TOKEN[:-1], OPERATOR_TOKEN + "0", OPERATOR_TOKEN.upper()):
        yield gateway.client.get(f"/jobs/{job_id}", headers=operator_headers(near_miss))
    yield gateway.client.get(f"/jobs/{job_id}", headers={"Authorization": f"Basic {OPERATOR_TOKEN}"})
    yield gateway.client.delete(f"/jobs/{job_id}", headers=operator_headers())


def google_traffic(gateway: Gateway, token: str) -> Iterator[Any]:
    yield gateway.post("google-id-token", cases.google_headers(token))
    for case in cases.malformed_cases(("google-id-token",)):
        yield gateway.post("google-id-token", case.request.headers, case.request.body)


def test_no_secret_appears_in_any_response_log_line_message_or_record(make_gateway, captured_logs):
    gateway = make_gateway({SECRET_ENV[scheme]: secret for scheme, secret in SENTINELS.items()})
    token = cases.id_token(sub="sentinel-subject")  # a bearer credential for an hour: no less secret
    responses = [response for scheme in SECRET_SCHEMES for response in sentinel_traffic(gateway, scheme)]
    responses += google_traffic(gateway, token)
    responses += operator_traffic(gateway, responses[0].get_json()["job_id"])

    outputs = [text for r in responses for text in (r.get_data(as_text=True), repr(dict(r.headers)))]
    outputs += captured_logs.lines
    outputs += [repr(message) for _, message in gateway.publisher.messages]
    outputs += [path.read_bytes().decode("latin-1") for path in gateway.ledger_file.parent.glob("ledger.sqlite3*")]
    sent_to_carto = [json.dumps(job.__dict__, default=str) for job in gateway.jobs()]

    assert {200, 202, 400, 401, 422} <= {r.status_code for r in responses} and captured_logs.lines
    webhook_secrets = {text for secret in SENTINELS.values() for text in forbidden_texts(secret)}
    webhook_secrets |= {token, token.rsplit(".", 1)[1]}
    for text in webhook_secrets | {CARTO_TOKEN, OPERATOR_TOKEN}:
        assert text not in "\n".join(outputs), f"a secret leaked: {text[:12]}…"
    for text in webhook_secrets:
        assert text not in "\n".join(sent_to_carto), f"a secret reached CARTO: {text[:12]}…"


# --- python -m gateway sign ------------------------------------------------------------------------

def cli(auth_schemas: Path, sandbox_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(auth_schemas, sandbox_url, tmp_path, **TABLE_ENV)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def parse_headers(output: str) -> dict[str, str]:
    headers = dict(line.split(": ", 1) for line in output.splitlines() if line)
    assert all(re.fullmatch(r"[A-Za-z0-9-]+", name) for name in headers)
    return headers


@pytest.mark.parametrize("scheme", SECRET_SCHEMES)
def test_the_headers_that_python_m_gateway_sign_prints_are_accepted(make_gateway, auth_schemas, sandbox,
                                                                    tmp_path, scheme):
    payload = tmp_path / "payload.json"
    payload.write_bytes(BODY)
    gateway = make_gateway(clock=None)  # the CLI signs with the wall clock

    signed = cli(auth_schemas, sandbox.url, tmp_path, "sign", workflow(scheme), str(payload))

    assert signed.returncode == 0, signed.stderr
    headers = parse_headers(signed.stdout)
    assert headers["Content-Type"] == "application/json"
    assert gateway.post(scheme, headers, BODY).status_code == 202


def test_sign_for_google_id_token_explains_how_to_get_a_token(auth_schemas, sandbox, tmp_path):
    payload = tmp_path / "payload.json"
    payload.write_bytes(BODY)

    signed = cli(auth_schemas, sandbox.url, tmp_path, "sign", workflow("google-id-token"), str(payload))

    assert signed.returncode == 1 and signed.stdout == ""
    assert "gcloud auth print-identity-token" in signed.stderr and cases.AUDIENCE in signed.stderr


# --- the body limit comes before authentication ---------------------------------------------------

OVERSIZED = json.dumps({"pad": "x" * 300}).encode()


@pytest.fixture
def limited(make_gateway) -> Gateway:
    return make_gateway({"GATEWAY_MAX_BODY_BYTES": "100"})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_unsigned_body_over_the_limit_is_a_413_not_a_401(limited, scheme):
    problem = assert_problem(limited.post(scheme, {}, OVERSIZED), 413)

    assert "100" in problem["detail"]
    limited.assert_reached_nothing()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_unsigned_chunked_body_over_the_limit_is_a_413_not_a_401(limited, scheme):
    response = limited.client.post(f"/hooks/{workflow(scheme)}", input_stream=io.BytesIO(OVERSIZED),
                                   headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                                   environ_overrides={"wsgi.input_terminated": True})

    assert_problem(response, 413)
    limited.assert_reached_nothing()


def test_a_validly_authenticated_body_over_the_limit_never_reaches_the_verifier(make_gateway):
    verifier = RecordingVerifier()
    gateway = make_gateway({"GATEWAY_MAX_BODY_BYTES": "100"}, verifier=verifier)

    assert_problem(gateway.post("google-id-token", cases.google_headers(), OVERSIZED), 413)
    assert verifier.calls == []
    assert gateway.post("google-id-token", cases.google_headers(), BODY).status_code == 202
    assert verifier.calls == [cases.AUDIENCE]


@pytest.fixture
def served(limited) -> Iterator[str]:
    """The limited app behind a real WSGI server on loopback."""
    flask_app = limited.client.application
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def test_a_chunked_body_over_the_limit_sent_over_a_socket_is_a_413(served, limited):
    chunks = (OVERSIZED[i:i + 50] for i in range(0, len(OVERSIZED), 50))  # no Content-Length: chunked

    response = requests.post(f"{served}/hooks/{workflow('github')}", data=chunks,
                             headers={"Content-Type": "application/json"}, timeout=10)

    assert response.status_code == 413 and response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Content-Type"] == "application/problem+json"
    limited.assert_reached_nothing()


# --- docs/authentication.md: its examples load, and the complete one works -------------------------

PUSH = {"ref": "refs/heads/main", "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "created": False, "deleted": False,
        "repository": {"id": 1296269, "name": "Hello-World", "full_name": "octocat/Hello-World"},
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "head_commit": {"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "message": "Update README.md"}}
PING = {"zen": "Keep it logically awesome.", "hook_id": 12345678, "hook": {"type": "Repository", "active": True}}


def documented_workflows() -> dict[str, dict[str, Any]]:
    """Every JSON example of the doc that has an `auth`: complete workflows as `github-push`, the
    others as the seed workflow with that `auth`."""
    seed = json.loads((ROOT / "examples" / "workflows" / "store-clusters.json").read_text())
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.DOTALL)]
    examples = [block for block in blocks if isinstance(block, dict) and "auth" in block]
    complete = [example for example in examples if "query" in example]
    assert len(complete) == 1, "the doc's one complete workflow is saved as github-push.json"
    documented = {f"example-{index}": {**seed, "auth": example["auth"]}
                  for index, example in enumerate(examples) if "query" not in example}
    return {**documented, "github-push": complete[0]}


@pytest.fixture
def doc_schemas(tmp_path) -> Path:
    schemas = tmp_path / "doc-schemas"
    (schemas / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / "schemas" / "workflow.schema.json", schemas)
    for name, definition in documented_workflows().items():
        (schemas / "workflows" / f"{name}.json").write_text(json.dumps(definition))
    return schemas


def doc_env() -> dict[str, str]:
    """A value for every variable the doc's examples name."""
    refs = [entry[key] for definition in documented_workflows().values() for entry in definition["auth"]
            for key in ("secrets", "tokens") if key in entry]
    names = {ref[4:] for ref_or_list in refs for ref in ([ref_or_list] if isinstance(ref_or_list, str) else ref_or_list)}
    return {name: whsec(name) for name in names}


def test_every_auth_example_in_the_docs_loads_and_lints_clean(doc_schemas):
    registry = load_registry(doc_schemas, doc_env(), id_token_verifier=RecordingVerifier())

    documented = {scheme.name for workflow in registry.workflows.values() for scheme in workflow.schemes}
    assert documented == set(SCHEMES) and len(registry.workflows) == len(documented_workflows())
    assert lint(registry) == []


@pytest.fixture
def doc_gateway(make_gateway, doc_schemas) -> Gateway:
    return make_gateway(doc_env(), schemas=doc_schemas)


def post_to_github_push(gateway: Gateway, payload: Any):
    body = json.dumps(payload, indent=2).encode()
    headers = {**cases.github_headers(body, doc_env()["GITHUB_PUSH_SECRET"]), "Content-Type": "application/json"}
    return gateway.client.post("/hooks/github-push", data=body, headers=headers)


def test_the_documented_github_push_workflow_runs_a_signed_push(doc_gateway):
    response = post_to_github_push(doc_gateway, PUSH)

    assert response.status_code == 202, response.get_data(as_text=True)
    assert [job.query_parameters for job in doc_gateway.jobs()] == [{
        "repository": "octocat/Hello-World", "ref": "refs/heads/main",
        "commit_sha": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "pusher": "octocat"}]


def test_the_documented_github_push_workflow_answers_githubs_ping_with_a_422(doc_gateway):
    assert_problem(post_to_github_push(doc_gateway, PING), 422)
    doc_gateway.assert_reached_nothing()


# --- /jobs and /openapi.json are for operators, never for a sender's signature ------------------------

OPERATOR_EMAIL = "oncall@example.com"
OWN_URL = "https://gateway-webhook-abc123-uc.a.run.app"  # GATEWAY_OPERATOR_AUDIENCES: the audience ID tokens name


@pytest.fixture
def job_of(make_gateway):
    """(gateway, job id) for one accepted delivery per scheme, on a gateway with both operator settings."""
    gateway = make_gateway({"GATEWAY_OPERATORS": OPERATOR_EMAIL, "GATEWAY_OPERATOR_AUDIENCES": OWN_URL})

    def submit(scheme: str) -> str:
        body, headers, _ = signed_delivery(scheme)
        response = gateway.post(scheme, headers, body)
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.get_json()["job_id"]

    return gateway, submit


def signed_over_an_empty_body(scheme: str) -> dict[str, str]:
    """A sender's valid credential for its workflow, over the empty body of a GET or DELETE."""
    if scheme == "google-id-token":
        return cases.google_headers()
    return sign(scheme, cases.SECRETS[{v: k for k, v in ENV_NAMES.items()}[SECRET_ENV[scheme]]], body=b"")


def assert_not_an_operator(response) -> None:
    problem = assert_problem(response, 401)
    assert problem["code"] == "not-an-operator" and response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_senders_valid_signature_over_an_empty_body_is_a_401_on_jobs(job_of, scheme, method):
    gateway, submit = job_of
    job_id = submit(scheme)
    headers = signed_over_an_empty_body(scheme)
    assert gateway.client.post(f"/hooks/{workflow(scheme)}/validate", data=b"",
                               headers={**headers, "Content-Type": "application/json"}).status_code == 400  # it verifies

    assert_not_an_operator(gateway.client.open(f"/jobs/{job_id}", method=method, headers=headers))
    assert not any(job.cancelled for job in gateway.jobs())


def test_an_operator_token_reads_and_cancels_a_job(job_of):
    gateway, submit = job_of
    job_id = submit("github")

    shown = gateway.client.get(f"/jobs/{job_id}", headers=operator_headers())
    cancelled = gateway.client.delete(f"/jobs/{job_id}", headers=operator_headers())

    assert shown.status_code == 200 and shown.get_json()["job_id"] == job_id
    assert cancelled.status_code == 200 and cancelled.get_json()["outcome"] == "CANCELLED"
    assert [job.cancelled for job in gateway.jobs()] == [True]


@pytest.mark.parametrize("headers", [
    {}, operator_headers("not-the-operator-token"), operator_headers(OPERATOR_TOKEN + "x"),
    {"Authorization": OPERATOR_TOKEN}, {"Authorization": f"Basic {OPERATOR_TOKEN}"}, {"X-Operator-Token": OPERATOR_TOKEN},
], ids=["none", "wrong", "longer", "no-scheme", "basic", "other-header"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_no_or_a_wrong_operator_credential_is_a_401(job_of, headers, method):
    gateway, submit = job_of
    job_id = submit("github")

    assert_not_an_operator(gateway.client.open(f"/jobs/{job_id}", method=method, headers=headers))
    assert_not_an_operator(gateway.client.get("/jobs/no-such-job", headers=headers))  # not even a 404
    assert not any(job.cancelled for job in gateway.jobs())


def test_without_operator_settings_jobs_is_a_401_for_everyone(make_gateway):
    gateway = make_gateway({"GATEWAY_OPERATOR_TOKENS": "", "GATEWAY_OPERATORS": ""})
    body, headers, _ = signed_delivery("github")
    job_id = gateway.post("github", headers, body).get_json()["job_id"]
    anyones = cases.id_token(aud=OWN_URL, email=OPERATOR_EMAIL)

    for credential in (operator_headers(), cases.google_headers(anyones), {}):
        assert_not_an_operator(gateway.client.get(f"/jobs/{job_id}", headers=credential))
        assert_not_an_operator(gateway.client.delete(f"/jobs/{job_id}", headers=credential))
        assert_not_an_operator(gateway.client.get("/openapi.json", headers=credential))


def test_a_google_id_token_of_an_operator_email_reads_a_job_and_another_email_is_a_401(job_of):
    gateway, submit = job_of
    job_id = submit("github")
    operator = cases.id_token(aud=OWN_URL, email=OPERATOR_EMAIL)

    shown = gateway.client.get(f"/jobs/{job_id}", headers=cases.google_headers(operator))

    assert shown.status_code == 200 and shown.get_json()["job_id"] == job_id
    for refused in (cases.id_token(aud=OWN_URL, email="someone@example.com"),  # not an operator
                    cases.id_token(aud=OWN_URL, email=OPERATOR_EMAIL, email_verified=False),
                    cases.id_token(aud=cases.AUDIENCE, email=OPERATOR_EMAIL),  # minted for another URL
                    cases.id_token(aud=OWN_URL, email=OPERATOR_EMAIL, exp=cases.NOW - 3600, iat=cases.NOW - 7200),
                    cases.id_token(cases.signing_key("untrusted"), aud=OWN_URL, email=OPERATOR_EMAIL)):
        assert_not_an_operator(gateway.client.get(f"/jobs/{job_id}", headers=cases.google_headers(refused)))
    assert not any(job.cancelled for job in gateway.jobs())


@pytest.mark.parametrize("host, proto", [
    (None, None), ("localhost", "https"), ("attacker.example", "https"), ("attacker.example", "http"),
    ("gateway-sweep-abc123-uc.a.run.app", "https")])
def test_an_operator_id_token_for_another_audience_is_a_401_whatever_host_the_request_names(job_of, host, proto):
    gateway, submit = job_of
    job_id = submit("github")
    headers = {**({"Host": host} if host else {}), **({"X-Forwarded-Proto": proto} if proto else {})}
    others = [cases.id_token(aud=f"{proto or 'http'}://{host or 'localhost'}", email=OPERATOR_EMAIL),  # the Host's URL
              cases.id_token(aud="https://gateway-console-abc123-uc.a.run.app", email=OPERATOR_EMAIL)]

    for token in others:
        assert_not_an_operator(gateway.client.get(f"/jobs/{job_id}", headers={**cases.google_headers(token), **headers}))
    mine = cases.id_token(aud=OWN_URL, email=OPERATOR_EMAIL)
    assert gateway.client.get(f"/jobs/{job_id}", headers={**cases.google_headers(mine), **headers}).status_code == 200


def test_without_configured_audiences_no_id_token_is_an_operator(make_gateway):
    gateway = make_gateway({"GATEWAY_OPERATORS": OPERATOR_EMAIL})
    body, headers, _ = signed_delivery("github")
    job_id = gateway.post("github", headers, body).get_json()["job_id"]

    for audience in (OWN_URL, "http://localhost"):
        token = cases.id_token(aud=audience, email=OPERATOR_EMAIL)
        assert_not_an_operator(gateway.client.get(f"/jobs/{job_id}", headers=cases.google_headers(token)))


def test_the_openapi_document_is_served_to_an_operator_only(job_of):
    gateway, _ = job_of
    sender = signed_over_an_empty_body("github")

    assert_not_an_operator(gateway.client.get("/openapi.json"))
    assert_not_an_operator(gateway.client.get("/openapi.json", headers=sender))
    document = gateway.client.get("/openapi.json", headers=operator_headers())
    assert document.status_code == 200 and "/hooks/auth-github" in document.get_json()["paths"]
    health = gateway.client.get("/healthz")
    assert health.get_json() == {"status": "ok"} and "auth-" not in health.get_data(as_text=True)


def test_an_operators_request_is_logged_with_who_and_a_refusal_with_why(job_of, captured_logs):
    gateway, submit = job_of
    job_id = submit("github")
    gateway.client.get(f"/jobs/{job_id}", headers=operator_headers())
    gateway.client.get(f"/jobs/{job_id}", headers=cases.google_headers(cases.id_token(aud=OWN_URL, email=OPERATOR_EMAIL)))
    gateway.client.get(f"/jobs/{job_id}", headers=operator_headers("wrong-token"))

    lines = [json.loads(line) for line in captured_logs.json_lines]
    answered = [(line.get("operator"), line["status"]) for line in lines if line["message"].startswith("answered GET /jobs")]
    assert answered == [("token", 200), (OPERATOR_EMAIL, 200), (None, 401)]
    assert any(line["message"] == "operator authentication refused: the bearer credential is no operator token"
               for line in lines)
