"""The OpenAPI 3.1 document of the `webhook` function, generated from the workflow definitions.

One `POST /hooks/{name}` (and its `/validate`) per workflow, with the workflow's payload schema as
the request body, its auth schemes as security requirements and the headers they need as
parameters; every error is RFC 9457 problem+json (README, "HTTP surface"). OpenAPI 3.1 schema objects are JSON
Schema 2020-12 (https://spec.openapis.org/oas/v3.1.0#schema-object), so payload schemas are
embedded as they are, only their document-relative `$ref`s re-rooted where they now live.

Pure: built from a Registry, no I/O; callers build it once per instance and cache it. Only the raw
`auth` definitions are read (never secrets, nor the names of the variables holding them).
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.auth.openapi import AuthDoc, Header, workflow_auth
from gateway.errors import PROBLEM_TYPE_BASE
from gateway.params import MISSING
from gateway.workflows import Registry, Workflow

OPENAPI_VERSION = "3.1.0"
_SCHEMAS = "#/components/schemas/"

# status -> (component name, description); the problem+json answers of README, "HTTP surface".
PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The body is not valid JSON (UTF-8, no BOM, no NaN, no duplicate keys)."),
    401: ("Unauthorized", "No configured authentication scheme accepted the request (on /jobs: no operator credential)."),
    404: ("NotFound", "Unknown workflow or job."),
    409: ("Conflict", "The same idempotency key is still being processed; retry after Retry-After."),
    413: ("PayloadTooLarge", "The body is over the size limit (GATEWAY_MAX_BODY_BYTES)."),
    415: ("UnsupportedMediaType", "The body is not application/json."),
    422: ("Unprocessable", ("The payload violates the workflow's schema or types, or an idempotency key "
                            "was reused with a different body; `errors` lists every problem.")),
    502: ("BadGateway", "CARTO refused the job; retrying the same request will not help."),
    503: ("Unavailable", ("CARTO, Pub/Sub or the ledger is unavailable, or the workflow is paused; "
                          "nothing was done, retry after Retry-After.")),
}
_HOOK_ERRORS = (400, 401, 404, 409, 413, 415, 422, 502, 503)
_VALIDATE_ERRORS = (400, 401, 404, 413, 415, 422)
_JOB_ERRORS = {"get": (401, 404, 503), "delete": (401, 404, 409, 502, 503)}
# The operators' door (gateway.auth.operators): /jobs and this document, never a sender's signature.
OPERATOR_SCHEME = "bearerAuth"
_OPERATOR_SECURITY_SCHEME = {
    "type": "http", "scheme": "bearer",
    "description": "An operator token (GATEWAY_OPERATOR_TOKENS) or a Google ID token for this function's URL "
                   "whose email is in GATEWAY_OPERATORS. A webhook signature is refused here."}
_OPERATOR_SECURITY = [{OPERATOR_SCHEME: []}]
_OPERATORS_ONLY = "Operators only: `Authorization: Bearer` with an operator token or a Google ID token."
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}

# JSON form of each SQL type in `queryParameters` (gateway.sqltypes: one wire form per type).
_WIRE_TYPES: dict[str, dict[str, Any]] = {
    "STRING": {"type": "string"}, "INT64": {"type": "integer"}, "FLOAT64": {"type": "number"},
    "NUMERIC": {"type": "string", "description": "decimal text"}, "BOOL": {"type": "boolean"},
    "DATE": {"type": "string", "format": "date"}, "TIMESTAMP": {"type": "string", "format": "date-time"},
    "GEOGRAPHY": {"type": "string", "description": "GeoJSON text"},
    "JSON": {"type": "string", "description": "JSON text"},
}


def document(registry: Registry) -> dict[str, Any]:
    """The OpenAPI 3.1.0 document for every workflow of `registry`; deterministic (sorted)."""
    workflows = [registry.workflows[name] for name in sorted(registry.workflows)]
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = dict(_common_schemas())
    security_schemes: dict[str, Any] = {OPERATOR_SCHEME: _OPERATOR_SECURITY_SCHEME}
    for workflow in workflows:
        auth = workflow_auth(workflow.auth)
        security_schemes.update(auth.schemes)
        schemas[payload_key(workflow.name)] = embed_schema(workflow.payload_schema, _SCHEMAS + payload_key(workflow.name))
        schemas[f"rendered.{workflow.name}"] = _rendered_schema(workflow)
        paths[f"/hooks/{workflow.name}"] = {"post": _hook_operation(workflow, auth)}
        paths[f"/hooks/{workflow.name}/validate"] = {"post": _validate_operation(workflow, auth)}
    paths["/jobs/{job_id}"] = _job_operations()
    paths["/deliveries/{key}"] = _delivery_operations()
    paths["/healthz"] = {"get": _simple_get("health", "That the instance is up", "Health")}
    paths["/openapi.json"] = {"get": _operator_get("openapi", "This document", "OpenApiDocument")}
    paths.update(_problem_pages())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "CARTO Workflows webhook gateway", "version": "1.0.0",
                 "description": "Webhooks that run CARTO Workflows as jobs. Each `POST /hooks/{workflow}` "
                                "is authenticated, validated against the workflow's payload schema and "
                                "answered 202 with the job id; errors are RFC 9457 problem+json."},
        "tags": [{"name": "hooks", "description": "One per workflow"},
                 {"name": "jobs", "description": "Jobs started by hooks"},
                 {"name": "service", "description": "Health, this document and the problem types"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "responses": _problem_responses(),
            "securitySchemes": dict(sorted(security_schemes.items())),
        },
    }


_last: tuple[Registry, dict[str, Any]] | None = None


def cached_document(registry: Registry) -> dict[str, Any]:
    """`document(registry)`, built once for the registry an instance serves (do not mutate it)."""
    global _last
    last = _last
    if last is None or last[0] is not registry:
        last = _last = (registry, document(registry))  # one slot: an instance has one registry
    return last[1]


def payload_key(name: str) -> str:
    """The components/schemas key of a workflow's payload schema."""
    return f"payload.{name}"


# --- operations ---------------------------------------------------------------------------------

def _operation_id(verb: str, name: str) -> str:
    return f"{verb}_{name.replace('-', '_')}"  # names are [a-z0-9-], so this stays one-to-one


def _hook_operation(workflow: Workflow, auth: AuthDoc) -> dict[str, Any]:
    responses = {
        "200": _json_response("A replay of an earlier delivery: the original job, `duplicate: true`.",
                              "Accepted", location=True),
        "202": _json_response("The job was submitted to CARTO; follow it at `status_url`.", "Accepted", location=True),
    }
    return {
        "operationId": _operation_id("trigger", workflow.name),
        "tags": ["hooks"],
        "summary": _summary(workflow, f"Run workflow {workflow.name}"),
        "description": _hook_description(workflow, auth),
        "security": auth.security,
        "parameters": _header_parameters(workflow, auth),
        "requestBody": _request_body(workflow),
        "responses": {**responses, **_errors(_HOOK_ERRORS)},
    }


def _validate_operation(workflow: Workflow, auth: AuthDoc) -> dict[str, Any]:
    return {
        "operationId": _operation_id("validate", workflow.name),
        "tags": ["hooks"],
        "summary": f"What POST /hooks/{workflow.name} would submit; nothing is submitted",
        "description": auth.description,
        "security": auth.security,
        "parameters": _header_parameters(workflow, auth),
        "requestBody": _request_body(workflow),
        "responses": {"200": _json_response("The CALL and its typed queryParameters.", f"rendered.{workflow.name}"),
                      **_errors(_VALIDATE_ERRORS)},
    }


def _summary(workflow: Workflow, fallback: str) -> str:
    first = workflow.description.strip().splitlines()[0] if workflow.description.strip() else ""
    return first[:120] or fallback


def _hook_description(workflow: Workflow, auth: AuthDoc) -> str:
    parts = [workflow.description.strip()] if workflow.description.strip() else []
    parts.append(auth.description)
    parts.append("Query parameters:\n" + "\n".join(f"- `{name}` ({spec.type}) {_source(spec)}"
                                                   for name, spec in workflow.parameters.items()))
    parts.append("Retries with the same idempotency key (`Idempotency-Key`, or the scheme's delivery id) "
                 "answer the original job.")
    if workflow.result is not None:
        table = f"`{workflow.result.table}`" if workflow.result.table else "the table the job names"
        columns = ", ".join(f"`{c}`" for c in workflow.result.columns) if workflow.result.columns else "every column"
        parts.append(f"Result: the SUCCEEDED completion event carries the first {workflow.result.rows} rows of "
                     f"{table} ({columns}) in `result`.")
    if workflow.paused:
        parts.append("**Paused**: every delivery answers 503 with Retry-After until it is resumed.")
    return "\n\n".join(parts)


def _source(spec: Any) -> str:
    default = "" if spec.default is MISSING else f", default `{_short(spec.default)}`"
    if spec.pointer is not None:
        return f"from body `{spec.pointer}`{default}"
    if spec.header is not None:
        return f"from header `{spec.header}`{default}"
    return "constant"


def _short(value: Any) -> str:
    import json

    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _header_parameters(workflow: Workflow, auth: AuthDoc) -> list[dict[str, Any]]:
    headers = list(auth.headers)
    for name, spec in workflow.parameters.items():
        if spec.header is not None:
            headers.append(Header(spec.header, spec.default is MISSING, f"Value of query parameter `{name}` ({spec.type})."))
    if workflow.idempotency_header:
        headers.append(Header(workflow.idempotency_header, False, "The idempotency key of this delivery."))
    headers.append(Header("Idempotency-Key", False, "Retries with the same key answer the original job."))
    seen: dict[str, dict[str, Any]] = {}
    for header in headers:
        # Header names are case-insensitive; OpenAPI ignores parameters named Authorization/Content-Type/Accept.
        if header.name.lower() not in seen and header.name.lower() not in ("authorization", "content-type", "accept"):
            seen[header.name.lower()] = {"name": header.name, "in": "header", "required": header.required,
                                         "description": header.description, "schema": {"type": "string"}}
    return list(seen.values())


def _request_body(workflow: Workflow) -> dict[str, Any]:
    return {"required": True, "description": "The webhook body; authenticated on its raw bytes.",
            "content": {"application/json": {"schema": {"$ref": _SCHEMAS + payload_key(workflow.name)}}}}


def _job_operations() -> dict[str, Any]:
    parameter = {"name": "job_id", "in": "path", "required": True, "description": "The CARTO job id (`externalId`).",
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,200}$"}}
    auth_note, security = _OPERATORS_ONLY, _OPERATOR_SECURITY
    return {
        "parameters": [parameter],
        "get": {"operationId": "get_job", "tags": ["jobs"], "summary": "The job's record and live status",
                "description": auth_note, "security": security,
                "responses": {"200": _json_response("The job.", "Job"), **_errors(_JOB_ERRORS["get"])}},
        "delete": {"operationId": "cancel_job", "tags": ["jobs"], "summary": "Cancel the CARTO job",
                   "description": auth_note, "security": security,
                   "responses": {"200": _json_response("The job after cancelling.", "Job"),
                                 **_errors(_JOB_ERRORS["delete"])}},
    }


def _delivery_operations() -> dict[str, Any]:
    parameter = {"name": "key", "in": "path", "required": True,
                 "description": "The delivery's key, `{workflow}:{idempotency key}`, percent-encoded.",
                 "schema": {"type": "string", "minLength": 1}}
    return {
        "parameters": [parameter],
        "get": {"operationId": "get_delivery", "tags": ["jobs"],
                "summary": "A delivery's record: the status_url of a delivery accepted before it had a job",
                "description": _OPERATORS_ONLY, "security": _OPERATOR_SECURITY,
                "responses": {"200": _json_response("The delivery.", "Delivery"), **_errors((401, 404, 503))}},
    }


def _operator_get(operation_id: str, summary: str, schema: str) -> dict[str, Any]:
    operation = _simple_get(operation_id, summary, schema)
    operation["responses"].update(_errors((401,)))
    return {**operation, "description": _OPERATORS_ONLY, "security": _OPERATOR_SECURITY}


def _simple_get(operation_id: str, summary: str, schema: str) -> dict[str, Any]:
    return {"operationId": operation_id, "tags": ["service"], "summary": summary, "security": [],
            "responses": {"200": _json_response(summary + ".", schema)}}


def _problem_pages() -> dict[str, Any]:
    """Where a problem's `type` leads: plain text saying what went wrong and what to do."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    code = {"name": "code", "in": "path", "required": True, "description": "The problem's `code`; /problems lists them.",
            "schema": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"}}
    return {
        "/problems": {"get": {"operationId": "list_problems", "tags": ["service"], "security": [],
                              "summary": "Every problem type, with its status and title",
                              "responses": {"200": {"description": "One line per problem type.", "content": text}}}},
        "/problems/{code}": {"get": {
            "operationId": "explain_problem", "tags": ["service"], "security": [], "parameters": [code],
            "summary": "What a problem means and what to do about it",
            "responses": {"200": {"description": "The explanation.", "content": text}, **_errors((404,))}}},
    }


def _json_response(description: str, schema: str, *, location: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": {"$ref": _SCHEMAS + schema}}}}
    if location:
        response["headers"] = {"Location": {"description": "Where to follow the job.", "schema": {"type": "string"}}}
    return response


def _errors(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/{PROBLEMS[status][0]}"} for status in statuses}


def _problem_responses() -> dict[str, Any]:
    responses = {}
    for status, (name, description) in sorted(PROBLEMS.items()):
        response: dict[str, Any] = {"description": description,
                                    "content": {"application/problem+json": {"schema": {"$ref": _SCHEMAS + "Problem"}}}}
        if status in (409, 503):
            response["headers"] = {"Retry-After": _RETRY_AFTER}
        responses[name] = response
    return dict(sorted(responses.items()))


# --- schemas ------------------------------------------------------------------------------------

def _rendered_schema(workflow: Workflow) -> dict[str, Any]:
    parameters = {name: _wire_type(spec.type) for name, spec in workflow.parameters.items()}
    wire: dict[str, Any] = {"type": "object", "properties": parameters, "required": list(parameters),
                            "additionalProperties": False}
    if workflow.positional:  # an array in placeholder order (Snowflake :k, PostgreSQL and Redshift $k)
        ordered = sorted(workflow.parameters.values(), key=lambda spec: spec.position or 0)
        wire = {"type": "array", "prefixItems": [{**_wire_type(spec.type), "title": spec.name} for spec in ordered],
                "minItems": len(ordered), "maxItems": len(ordered)}
    return {"type": "object", "required": ["query", "queryParameters"], "additionalProperties": False,
            "properties": {"query": {"type": "string", "const": workflow.query}, "queryParameters": wire}}


def _wire_type(sql_type: str) -> dict[str, Any]:
    if sql_type.startswith("ARRAY<"):
        return {"type": "array", "items": dict(_WIRE_TYPES[sql_type[6:-1]])}
    return dict(_WIRE_TYPES[sql_type])


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [{"type": "null"}, schema]}


def _common_schemas() -> dict[str, Any]:
    error = {"type": "object", "required": ["message"],
             "properties": {"reason": {"type": ["string", "null"]}, "location": {"type": ["string", "null"]},
                            "message": {"type": "string"}}}
    outcome = {"enum": ["SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", None]}
    return {
        "Problem": {
            "type": "object", "description": "RFC 9457 problem details.",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string", "format": "uri-reference", "examples": [PROBLEM_TYPE_BASE + "validation-failed"],
                         "description": "Relative to the function's URL: GET it for what went wrong and what to do."},
                "title": {"type": "string"}, "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "code": {"type": "string", "description": "Stable machine-readable code, the last segment of `type`."},
                "errors": {"type": "array", "items": {
                    "type": "object", "required": ["path", "message"],
                    "properties": {"path": {"type": "string", "description": "JSON Pointer into the payload, "
                                                                             "or header:<Name>"},
                                   "message": {"type": "string"}}}}}},
        "Accepted": {
            "type": "object", "required": ["job_id", "workflow", "status_url", "delivery_id", "duplicate"],
            "properties": {"job_id": {"type": "string"}, "workflow": {"type": "string"},
                           "status_url": {"type": "string", "description": "GET it for the job's status."},
                           "delivery_id": {"type": ["string", "null"]},
                           "duplicate": {"type": "boolean", "description": "true when this replays an earlier delivery."}}},
        "Job": {
            "type": "object",
            "required": ["job_id", "workflow", "state", "outcome", "carto_state", "error", "delivery_id", "checks",
                         "parameters", "submitted_at", "finished_at", "event_published"],
            "properties": {
                "job_id": {"type": "string"}, "workflow": {"type": "string"},
                "state": {"enum": ["claimed", "submitted", "tracked", "finished"]}, "outcome": outcome,
                "carto_state": {"type": ["string", "null"]}, "error": _nullable(error),
                "delivery_id": {"type": ["string", "null"]}, "checks": {"type": "integer", "minimum": 0},
                "parameters": {"type": "object"},
                "submitted_at": {"type": ["string", "null"], "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "event_published": {"type": "boolean"},
                "live": {"type": "object", "description": "CARTO's answer now, while the job runs.",
                         "properties": {"state": {"type": ["string", "null"]}, "outcome": outcome,
                                        "error": _nullable(error), "unavailable": {"type": "string"}}}}},
        "Delivery": {
            "type": "object", "description": "The ledger's record of one delivery (times RFC 3339), never a secret.",
            "required": ["key", "workflow", "state", "delivery_id", "job_id", "job_url", "outcome", "created_at"],
            "properties": {
                "key": {"type": "string"}, "workflow": {"type": "string"}, "state": {"type": "string"},
                "delivery_id": {"type": ["string", "null"]}, "job_id": {"type": ["string", "null"]},
                "job_url": {"type": ["string", "null"], "description": "GET it for the job's live status."},
                "outcome": {"type": ["string", "null"]}, "created_at": {"type": "string", "format": "date-time",
                                                                        "description": "When it was accepted."}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "OpenApiDocument": {"type": "object", "description": "An OpenAPI 3.1 document."},
    }


# Keywords whose value is a schema, a list of schemas, or a map of name -> schema (JSON Schema 2020-12).
_ONE_SCHEMA = frozenset({"items", "additionalItems", "additionalProperties", "not", "if", "then", "else", "contains",
                         "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema"})
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_SCHEMA_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def embed_schema(schema: Any, pointer: str) -> Any:
    """A copy of `schema` whose `#/…` references still work once it lives at `pointer` in another document.

    A schema (or subschema) with its own `$id` is a resource of its own, where `#/…` already
    resolves against itself: it is copied unchanged.
    """
    if not isinstance(schema, dict) or "$id" in schema:
        return copy.deepcopy(schema)
    embedded: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("$ref", "$dynamicRef") and isinstance(value, str) and (value == "#" or value.startswith("#/")):
            embedded[key] = pointer + value[1:]
        elif key in _SCHEMA_MAP and isinstance(value, dict):
            embedded[key] = {name: embed_schema(sub, pointer) for name, sub in value.items()}
        elif key in _SCHEMA_LIST and isinstance(value, list):
            embedded[key] = [embed_schema(sub, pointer) for sub in value]
        elif key in _ONE_SCHEMA:
            embedded[key] = embed_schema(value, pointer)
        else:
            embedded[key] = copy.deepcopy(value)
    return embedded
