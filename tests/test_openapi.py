"""The OpenAPI 3.1 document: valid for every kind of workflow, and true of the real `webhook` app.

The property test generates requests from the document with schemathesis (valid and invalid
bodies and headers), signs most of them with the workflow's own scheme, and POSTs them to the
real function app (functions-framework serving main.py) wired to the local CARTO job API and the
Pub/Sub emulator: nothing answers 5xx, every 4xx is problem+json, every answer is documented.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import referencing.jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from gateway.local.demos import write_demo_schemas
from gateway.openapi import cached_document, document, embed_schema
from gateway.workflows import load_registry
from tests.apptools import operator_headers
from tests.constants import CARTO_TOKEN, DEMO_SECRETS, OPERATOR_TOKEN, PROJECT, ROOT

CALL = "CALL `proj.ds.proc`({})"
SECRETS = {**DEMO_SECRETS, "GITHUB_SECRET": "gh-secret-SENTINEL", "HMAC_SECRET": "hm-secret-SENTINEL",
           "STRIPE_SECRET": "whsec_stripe-SENTINEL", "SHOPIFY_SECRET": "shop-secret-SENTINEL",
           "SLACK_SECRET": "slack-secret-SENTINEL", "BEARER_TOKENS": "bearer-token-SENTINEL"}
HMAC = {"scheme": "hmac", "secrets": "env:HMAC_SECRET", "header": "X-Signature", "algorithm": "sha512",
        "encoding": "base64", "prefix": "sha512=", "signed": ["id", "timestamp", "body"],
        "id_header": "X-Delivery", "timestamp_header": "X-Timestamp"}


def _workflow(auth: Any, parameters: dict[str, Any] | None = None, payload: dict[str, Any] | None = None,
              **extra: Any) -> dict[str, Any]:
    parameters = parameters or {"name": {"type": "STRING", "from": "/name"}}
    payload = payload or {"type": "object", "required": ["name"],
                          "properties": {"name": {"type": "string", "maxLength": 20}}}
    return {"description": "Test only.", "connection": "carto_dw",
            "query": CALL.format(",".join("@" + p for p in parameters)), "parameters": parameters,
            "payload": payload, "auth": auth, **extra}


TYPED_PAYLOAD = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "required": ["day", "ids", "area"],
    "properties": {"day": {"$ref": "#/$defs/day"}, "ids": {"type": "array", "items": {"$ref": "#/$defs/id"}},
                   "area": {"$ref": "#/$defs/point"}, "amount": {"type": "integer", "maximum": 10**12},
                   "flag": {"type": "boolean"}, "at": {"type": "string", "format": "date-time"}, "extra": {}},
    "$defs": {"day": {"type": "string", "format": "date"},
              "id": {"type": "integer", "minimum": 0, "maximum": 2**53},
              "point": {"type": "object", "required": ["type", "coordinates"], "additionalProperties": False,
                        "properties": {"type": {"const": "Point"}, "coordinates": {
                            "type": "array", "minItems": 2, "maxItems": 2,
                            "prefixItems": [{"type": "number", "minimum": -180, "maximum": 180},
                                            {"type": "number", "minimum": -90, "maximum": 90}]}}}},
}
TYPED_PARAMETERS = {
    "day": {"type": "DATE", "from": "/day"}, "ids": {"type": "ARRAY<INT64>", "from": "/ids"},
    "area": {"type": "GEOGRAPHY", "from": "/area"}, "amount": {"type": "NUMERIC", "from": "/amount", "default": "0"},
    "flag": {"type": "BOOL", "from": "/flag", "default": False},
    "at": {"type": "TIMESTAMP", "from": "/at", "default": "2024-01-01T00:00:00Z"},
    "extra": {"type": "JSON", "from": "/extra", "default": {}}, "region": {"type": "STRING", "header": "X-Region"},
}
# Workflows that can be signed locally; the property test drives each of them.
SIGNABLE = {
    "multi-auth": _workflow([{"scheme": "github", "secrets": "env:GITHUB_SECRET"}, HMAC]),
    "stripe-hook": _workflow([{"scheme": "stripe", "secrets": "env:STRIPE_SECRET", "tolerance_s": 600}]),
    "shopify-hook": _workflow([{"scheme": "shopify", "secrets": "env:SHOPIFY_SECRET"}]),
    "slack-hook": _workflow([{"scheme": "slack", "secrets": "env:SLACK_SECRET"}]),
    "bearer-hook": _workflow([{"scheme": "bearer", "tokens": "env:BEARER_TOKENS"}]),
    "typed": _workflow([{"scheme": "standard-webhooks", "secrets": "env:STORE_CLUSTERS_SECRET"}],
                       TYPED_PARAMETERS, TYPED_PAYLOAD, idempotency={"header": "webhook-id"}),
}
UNSIGNABLE = {
    "google-hook": _workflow([{"scheme": "google-id-token", "audience": "https://gw.example/hooks",
                               "service_accounts": ["caller@proj.iam.gserviceaccount.com"]}]),
    "token-header": _workflow([{"scheme": "bearer", "tokens": "env:BEARER_TOKENS", "header": "X-Api-Token"}]),
    "open-demo": _workflow("none"),
}


def write_schemas(target: Path, workflows: dict[str, dict[str, Any]]) -> Path:
    """The product's schemas/ with the demo workflows plus `workflows`, at `target`."""
    write_demo_schemas(target)
    for name, definition in workflows.items():
        (target / "workflows" / f"{name}.json").write_text(json.dumps(definition))
    return target


@pytest.fixture(scope="module")
def every_scheme(tmp_path_factory) -> dict[str, Any]:
    """The document of the product workflows plus one workflow per kind of auth."""
    schemas = write_schemas(tmp_path_factory.mktemp("openapi") / "schemas", {**SIGNABLE, **UNSIGNABLE})
    return document(load_registry(schemas, SECRETS))


def _resolver(doc: dict[str, Any]) -> referencing.Registry:
    return referencing.Registry().with_resource("urn:openapi", referencing.jsonschema.DRAFT202012.create_resource(doc))


def validator_for(doc: dict[str, Any], pointer: str) -> jsonschema.Draft202012Validator:
    """A validator of the schema at `pointer` (e.g. #/components/schemas/Job), with the document's refs."""
    return jsonschema.Draft202012Validator({"$ref": "urn:openapi" + pointer}, registry=_resolver(doc))


# --- the document -------------------------------------------------------------------------------

def test_the_product_workflows_give_a_valid_openapi_3_1_document():
    doc = document(load_registry(ROOT / "examples", {}, require_secrets=False))

    validate(doc, cls=OpenAPIV31SpecValidator)
    assert doc["openapi"] == "3.1.0"
    assert "/hooks/store-clusters" in doc["paths"]


def test_the_test_workflows_give_a_valid_openapi_3_1_document(test_schemas):
    doc = document(load_registry(test_schemas, {}, require_secrets=False))

    validate(doc, cls=OpenAPIV31SpecValidator)
    assert {"/hooks/slow-report", "/hooks/store-clusters-float/validate"} <= set(doc["paths"])


def test_a_workflow_of_every_auth_kind_gives_a_valid_openapi_3_1_document(every_scheme):
    validate(every_scheme, cls=OpenAPIV31SpecValidator)


def test_the_validator_would_catch_a_broken_document(every_scheme):
    broken = json.loads(json.dumps(every_scheme))
    del broken["paths"]["/hooks/typed"]["post"]["responses"]["202"]["description"]  # required by OpenAPI

    with pytest.raises(OpenAPIValidationError):
        validate(broken, cls=OpenAPIV31SpecValidator)


def test_every_service_route_is_described(every_scheme):
    paths = every_scheme["paths"]

    assert set(paths["/jobs/{job_id}"]) >= {"get", "delete"}
    assert "get" in paths["/healthz"] and "get" in paths["/openapi.json"]
    assert all(f"/hooks/{name}" in paths and f"/hooks/{name}/validate" in paths for name in {**SIGNABLE, **UNSIGNABLE})


@pytest.mark.parametrize("name, key, expected", [
    ("multi-auth", "github", {"type": "apiKey", "in": "header", "name": "X-Hub-Signature-256"}),
    ("multi-auth", "hmac.X-Signature", {"type": "apiKey", "in": "header", "name": "X-Signature"}),
    ("stripe-hook", "stripe", {"type": "apiKey", "in": "header", "name": "Stripe-Signature"}),
    ("shopify-hook", "shopify", {"type": "apiKey", "in": "header", "name": "X-Shopify-Hmac-Sha256"}),
    ("slack-hook", "slack", {"type": "apiKey", "in": "header", "name": "X-Slack-Signature"}),
    ("typed", "standardWebhooks", {"type": "apiKey", "in": "header", "name": "webhook-signature"}),
    ("bearer-hook", "bearer", {"type": "http", "scheme": "bearer"}),
    ("token-header", "token.X-Api-Token", {"type": "apiKey", "in": "header", "name": "X-Api-Token"}),
    ("google-hook", "googleIdToken", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
])
def test_each_auth_scheme_is_a_security_requirement_of_its_hook(every_scheme, name, key, expected):
    operation = every_scheme["paths"][f"/hooks/{name}"]["post"]
    scheme = every_scheme["components"]["securitySchemes"][key]

    assert {key: []} in operation["security"]
    assert expected.items() <= scheme.items()


def test_several_schemes_are_alternatives(every_scheme):
    operation = every_scheme["paths"]["/hooks/multi-auth"]["post"]

    assert operation["security"] == [{"github": []}, {"hmac.X-Signature": []}]


def _headers(operation: dict[str, Any]) -> dict[str, bool]:
    return {p["name"]: p["required"] for p in operation["parameters"] if p["in"] == "header"}


def test_the_headers_a_scheme_needs_are_required_parameters(every_scheme):
    assert _headers(every_scheme["paths"]["/hooks/typed"]["post"]) == {
        "webhook-id": True, "webhook-timestamp": True, "X-Region": True, "Idempotency-Key": False}
    assert _headers(every_scheme["paths"]["/hooks/slack-hook"]["post"])["X-Slack-Request-Timestamp"] is True


def test_a_header_only_one_of_several_schemes_needs_is_optional(every_scheme):
    headers = _headers(every_scheme["paths"]["/hooks/multi-auth"]["post"])

    assert headers["X-Delivery"] is False and headers["X-Timestamp"] is False and headers["X-GitHub-Delivery"] is False


def test_a_workflow_without_auth_has_no_security_requirement(every_scheme):
    assert every_scheme["paths"]["/hooks/open-demo"]["post"]["security"] == []


@pytest.mark.parametrize("path, method", [("/jobs/{job_id}", "get"), ("/jobs/{job_id}", "delete"), ("/openapi.json", "get")])
def test_the_operator_routes_take_the_bearer_scheme_of_operators_and_no_webhook_scheme(every_scheme, path, method):
    operation = every_scheme["paths"][path][method]

    assert operation["security"] == [{"bearerAuth": []}]  # not even open-demo's jobs are open
    bearer = every_scheme["components"]["securitySchemes"]["bearerAuth"]
    assert bearer["type"] == "http" and bearer["scheme"] == "bearer" and "GATEWAY_OPERATORS" in bearer["description"]
    assert "401" in operation["responses"]


def test_healthz_needs_no_credential(every_scheme):
    assert every_scheme["paths"]["/healthz"]["get"]["security"] == []


def test_every_error_answer_is_problem_json_with_the_shared_schema(every_scheme):
    operation = every_scheme["paths"]["/hooks/typed"]["post"]
    responses = every_scheme["components"]["responses"]

    statuses = sorted(int(s) for s in operation["responses"] if int(s) >= 400)
    assert statuses == [400, 401, 404, 409, 413, 415, 422, 502, 503]
    for status in statuses:
        name = operation["responses"][str(status)]["$ref"].rsplit("/", 1)[1]
        assert responses[name]["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert "Retry-After" in responses["Unavailable"]["headers"]


def test_the_request_body_is_the_workflow_payload_schema_and_its_refs_resolve(every_scheme):
    body = every_scheme["paths"]["/hooks/typed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    payload = validator_for(every_scheme, body["$ref"])

    point = {"type": "Point", "coordinates": [2.17, 41.38]}
    assert payload.is_valid({"day": "2024-05-01", "ids": [1, 2], "area": point})
    assert not payload.is_valid({"day": "2024-05-01", "ids": [-1], "area": point})  # via #/$defs/id
    assert not payload.is_valid({"day": "2024-05-01", "ids": [1], "area": {"type": "Line"}})  # via #/$defs/point


def test_the_validate_answer_types_each_query_parameter(every_scheme):
    rendered = every_scheme["components"]["schemas"]["rendered.typed"]["properties"]["queryParameters"]

    assert rendered["properties"]["ids"] == {"type": "array", "items": {"type": "integer"}}
    assert rendered["properties"]["day"] == {"type": "string", "format": "date"}
    assert rendered["properties"]["amount"]["type"] == "string"
    assert rendered["required"] == list(TYPED_PARAMETERS)


def test_the_document_is_the_same_whatever_order_the_workflows_load_in(tmp_path):
    first = write_schemas(tmp_path / "a", {**SIGNABLE, **UNSIGNABLE})
    second = write_schemas(tmp_path / "b", dict(reversed({**UNSIGNABLE, **SIGNABLE}.items())))
    a, b = document(load_registry(first, SECRETS)), document(load_registry(second, SECRETS))

    assert json.dumps(a) == json.dumps(b)
    assert list(a["paths"]) == sorted(a["paths"])


def test_the_document_names_no_secret_nor_the_variable_holding_it(every_scheme):
    text = json.dumps(every_scheme)

    assert "env:" not in text
    assert not [name for name, value in SECRETS.items() if name in text or value in text]


def test_the_cached_document_is_built_once_per_registry():
    first = load_registry(ROOT / "examples", {}, require_secrets=False)
    second = load_registry(ROOT / "examples", {}, require_secrets=False)

    assert cached_document(first) is cached_document(first)
    assert cached_document(second) is not cached_document(first)
    assert cached_document(second) == document(second)


def test_a_local_ref_is_rerooted_where_the_payload_now_lives():
    schema = {"properties": {"a": {"$ref": "#/$defs/a"}, "self": {"$ref": "#"}, "const": {"const": {"$ref": "#/x"}}},
              "$defs": {"a": {"type": "string"}}}

    embedded = embed_schema(schema, "#/components/schemas/payload.w")

    assert embedded["properties"]["a"] == {"$ref": "#/components/schemas/payload.w/$defs/a"}
    assert embedded["properties"]["self"] == {"$ref": "#/components/schemas/payload.w"}
    assert embedded["properties"]["const"] == {"const": {"$ref": "#/x"}}  # data, not a reference
    assert schema["properties"]["a"] == {"$ref": "#/$defs/a"}  # the workflow's own schema is untouched


def test_a_schema_with_its_own_id_is_embedded_unchanged():
    schema = {"$id": "https://example.com/p.json", "properties": {"a": {"$ref": "#/$defs/a"}}}

    assert embed_schema(schema, "#/components/schemas/payload.w") == schema


# --- the document against the real app ------------------------------------------------------------

@pytest.fixture(scope="module")
def live(pubsub_emulator, tmp_path_factory):
    """The real `webhook` app from main.py, on the local CARTO job API and the Pub/Sub emulator."""
    import functions_framework

    from gateway.local.emulators import ensure_topics
    from gateway.local.sandbox import serve

    state = tmp_path_factory.mktemp("openapi-live")
    schemas = write_schemas(state / "schemas", SIGNABLE)
    for path in (ROOT / "tests" / "data" / "workflows").glob("*.json"):
        shutil.copy(path, schemas / "workflows" / path.name)
    sandbox = serve(token=CARTO_TOKEN)
    topic = f"openapi-jobs-{uuid.uuid4().hex[:8]}"
    env = {**SECRETS, "GATEWAY_SCHEMAS_DIR": str(schemas), "CARTO_API_BASE_URL": sandbox.url,
           "CARTO_API_TOKEN": CARTO_TOKEN, "GATEWAY_LEDGER": f"sqlite:///{state / 'ledger.sqlite3'}",
           "GOOGLE_CLOUD_PROJECT": PROJECT, "GATEWAY_JOBS_TOPIC": topic, "GATEWAY_OPERATOR_TOKENS": OPERATOR_TOKEN}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        ensure_topics(PROJECT, [topic])
        client = functions_framework.create_app(target="webhook", source=str(ROOT / "main.py")).test_client()
        main = sys.modules["main"]
        main._build.cache_clear()  # an App cached by an earlier test would carry another environment
        yield client, main._app()
        main._build.cache_clear()
    sandbox.stop()


def test_the_app_serves_the_document_it_generates_to_operators_only(live):
    client, app = live
    assert client.get("/openapi.json").status_code == 401

    answer = client.get("/openapi.json", headers=operator_headers())

    assert answer.status_code == 200
    assert answer.get_json() == document(app.registry)


def _documented(doc: dict[str, Any], path: str, status: int, content_type: str) -> jsonschema.Draft202012Validator:
    """The validator of what the document promises for this answer; fails when it promises none."""
    responses = doc["paths"][path]["post"]["responses"]
    assert str(status) in responses, f"{path} answered an undocumented {status}"
    response = responses[str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    media = content_type.split(";")[0].strip()
    assert media in response["content"], f"{path} {status} answered {media}, documented {list(response['content'])}"
    return validator_for(doc, response["content"][media]["schema"]["$ref"])


def _requests(doc: dict[str, Any]):
    """Requests generated from the document: valid and invalid cases of every hook and its /validate."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(doc)
    operations = [schema[path]["POST"] for path in doc["paths"] if path.startswith("/hooks/")]
    cases = st.one_of([op.as_strategy(mode) for op in operations for mode in GenerationMode])
    return st.tuples(
        cases,
        st.sampled_from(["signed", "signed", "signed", "unsigned", "tampered"]),
        st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8", "text/plain", ""]),
        st.one_of(st.uuids().map(str), st.sampled_from(["replayed-1", "replayed-2"])),
        st.booleans(),
    )


def _encode(case: Any, ascii_only: bool) -> bytes:
    from schemathesis.core import NotSet

    if isinstance(case.body, NotSet):
        return b""
    if isinstance(case.body, bytes):  # schemathesis's negative mode also sends bodies that are not JSON
        return case.body
    # Non-ASCII output, lone surrogates included, also exercises the UTF-8 checks.
    return json.dumps(case.body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _headers_for(app: Any, case: Any, signing: str, body: bytes, content_type: str, delivery_id: str) -> dict[str, str]:
    headers = {str(k).lower(): str(v) for k, v in (case.headers or {}).items()}
    workflow = app.registry.get(case.path.split("/")[2])
    if signing != "unsigned":
        signed = workflow.schemes[0].sign(body + (b" " if signing == "tampered" else b""), time.time(), delivery_id)
        headers.update({k.lower(): v for k, v in signed.items()})
    headers["content-type"] = content_type
    return {k: v for k, v in headers.items() if v}


def _check(doc: dict[str, Any], path: str, answer: Any) -> None:
    assert answer.status_code < 500, f"{path} answered {answer.status_code}: {answer.get_data(as_text=True)}"
    body = answer.get_json(force=True, silent=True)
    if answer.status_code >= 400:
        assert answer.content_type == "application/problem+json"
        assert body["status"] == answer.status_code and {"type", "title", "detail", "code"} <= set(body)
    _documented(doc, path, answer.status_code, answer.content_type).validate(body)


def test_requests_generated_from_the_document_get_no_5xx_and_only_documented_answers(live):
    client, app = live
    doc = document(app.registry)

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(_requests(doc))
    def run(request):
        case, signing, content_type, delivery_id, ascii_only = request
        body = _encode(case, ascii_only)
        headers = _headers_for(app, case, signing, body, content_type, delivery_id)
        answer = client.post(case.formatted_path, data=body, headers=headers)
        _check(doc, case.path, answer)

    run()
