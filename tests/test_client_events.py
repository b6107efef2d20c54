"""workflow_gateway_client.parse_event: the fields it checks are the event schema's (so the two cannot
drift), every malformed message is a MalformedEvent the schema refuses too, and the forms it reads.
Real events pulled from the emulator and pushed through functions-framework: tests/test_client_stack.py."""

from __future__ import annotations

import base64
import copy
import json

import jsonschema
import pytest
from workflow_gateway_client import FIELDS, OUTCOMES, MalformedEvent, parse_event
from workflow_gateway_client._events import ERROR_FIELDS, RESULT_ERROR_FIELDS, RESULT_FIELDS, WORKFLOW_PATTERN

from gateway.events import completion_event
from gateway.ledger import Delivery
from tests.constants import ROOT

SCHEMA = json.loads((ROOT / "schemas" / "job-event.schema.json").read_text())


def schema_types(prop: dict) -> set[str]:
    """The JSON types a property of the schema allows (type, enum or oneOf)."""
    if "type" in prop:
        return set([prop["type"]] if isinstance(prop["type"], str) else prop["type"])
    if "enum" in prop:
        return {"string"} if all(isinstance(v, str) for v in prop["enum"]) else {"mixed"}
    return set().union(*(schema_types(option) for option in prop["oneOf"]))


def test_the_clients_fields_are_the_event_schemas():
    assert set(FIELDS) == set(SCHEMA["properties"])
    assert {name for name, (_, required) in FIELDS.items() if required} == set(SCHEMA["required"])
    for name, (types, _) in FIELDS.items():
        assert set(types) == schema_types(SCHEMA["properties"][name]), name
    assert list(OUTCOMES) == SCHEMA["properties"]["outcome"]["enum"]
    assert WORKFLOW_PATTERN == SCHEMA["properties"]["workflow"]["pattern"]
    error = next(o for o in SCHEMA["properties"]["error"]["oneOf"] if o["type"] == "object")
    assert set(ERROR_FIELDS) == set(error["properties"])
    assert {name for name, (_, required) in ERROR_FIELDS.items() if required} == set(error["required"])
    for name, (types, _) in ERROR_FIELDS.items():
        assert set(types) == schema_types(error["properties"][name]), name
    rows, failed = SCHEMA["properties"]["result"]["oneOf"]
    for fields, shape in ((RESULT_FIELDS, rows), (RESULT_ERROR_FIELDS, failed)):
        assert set(fields) == set(shape["properties"])
        assert {name for name, (_, required) in fields.items() if required} == set(shape["required"])
        for name, (types, _) in fields.items():
            assert set(types) == schema_types(shape["properties"][name]), name


def gateway_event(**changes) -> tuple[dict[str, str], dict]:
    """Attributes and data of a completion event as the gateway's own events module builds it."""
    fields = dict(key="k", workflow="store-clusters", idempotency_key="order-1", claim_token="c", expires_at=1_900_000_000.0,
                  created_at=1_800_000_000.0, connection="carto_dw",
                  api_base_url="http://carto", query="CALL x()", parameters={"n": 2}, fingerprint="f",
                  job_id="job-1", outcome="FAILED", carto_state="DONE", submitted_at=1_800_000_001.0,
                  finished_at=1_800_000_031.5, checks=3, delivery_id="order-1",
                  error={"reason": "invalidQuery", "location": "q", "message": "Query error: no"})
    fields.update(changes)
    message = completion_event(Delivery(**{k: v for k, v in fields.items() if k in Delivery.__dataclass_fields__}),
                               source="//carto-workflows-gateway/projects/p")
    return message.attributes, json.loads(message.data)


def test_a_gateway_event_parses_into_its_typed_fields():
    attributes, data = gateway_event()

    event = parse_event((attributes, json.dumps(data).encode()))

    assert (event.ce_id, event.outcome, event.job_id, event.workflow) == ("job-1:FAILED", "FAILED", "job-1", "store-clusters")
    assert event.error is not None and (event.error.reason, event.error.message) == ("invalidQuery", "Query error: no")
    assert event.duration_s == 30.5 and event.checks == 3 and not event.succeeded
    assert event.submitted_at.isoformat() == "2027-01-15T08:00:01+00:00"
    assert dict(event.parameters) == {"n": 2} and event.delivery_id == "order-1"
    with pytest.raises(TypeError):
        event.parameters["n"] = 3  # read-only view


def test_an_event_without_a_job_parses_with_its_delivery_id_and_time_in_the_queue():
    attributes, data = gateway_event(job_id=None, outcome="SUPERSEDED", carto_state=None, error=None,
                                     submitted_at=None, queued_at=1_800_000_000.0, finished_at=1_800_000_042.0,
                                     superseded_by="order-2", checks=0)
    jsonschema.validate(data, SCHEMA)

    event = parse_event((attributes, json.dumps(data).encode()))

    assert event.job_id is None and event.superseded and event.superseded_by == "order-2"
    assert event.ce_id.startswith("delivery-") and event.ce_id.endswith(":SUPERSEDED") and "job_id" not in attributes
    assert event.queued_s == 42.0 and event.type == "com.carto.workflows.job.superseded"


def test_an_event_submitted_inline_was_queued_for_no_time():
    attributes, data = gateway_event()

    assert parse_event((attributes, json.dumps(data).encode())).queued_s == 0


def push(attributes: dict, data: bytes) -> dict:
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "m1"},
            "subscription": "projects/p/subscriptions/s"}


def test_the_json_body_of_a_push_request_parses_too():
    attributes, data = gateway_event()

    event = parse_event(push(attributes, json.dumps(data).encode()))

    assert event.ce_id == "job-1:FAILED" and event.message_id == "m1"


def mutate(path: str, value=...):
    """A change to the event's data: set `path` (dotted) to value, or delete it when value is omitted."""
    def apply(data: dict) -> dict:
        data = copy.deepcopy(data)
        *parents, leaf = path.split(".")
        target = data
        for name in parents:
            target = target[name]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
        return data
    return apply


DATA_FAULTS = {
    "no job_id": mutate("job_id"),
    "empty job_id": mutate("job_id", ""),
    "outcome unknown": mutate("outcome", "EXPLODED"),
    "workflow not a name": mutate("workflow", "Store Clusters"),
    "checks a bool": mutate("checks", True),
    "checks negative": mutate("checks", -1),
    "checks fractional": mutate("checks", 1.5),
    "duration a string": mutate("duration_s", "30"),
    "no parameters": mutate("parameters"),
    "parameters a list": mutate("parameters", [1]),
    "state a number": mutate("state", 3),
    "error a string": mutate("error", "boom"),
    "error without message": mutate("error.message"),
    "error with extra field": mutate("error.stack", "x"),
    "no finished_at": mutate("finished_at"),
    "result a list": mutate("result", []),
    "result rows not objects": mutate("result", {"table": "p.d.t", "rows": [[1]], "schema": [], "truncated": False}),
    "result without truncated": mutate("result", {"table": "p.d.t", "rows": [], "schema": []}),
    "result error without reason": mutate("result", {"table": "p.d.t", "error": {"message": "no"}}),
    "result with rows and error": mutate("result", {"table": "p.d.t", "rows": [], "error": {"reason": "r",
                                                                                             "message": "m"}}),
}


@pytest.mark.parametrize("fault", DATA_FAULTS, ids=list(DATA_FAULTS))
def test_data_the_schema_refuses_is_a_malformed_event(fault):
    attributes, data = gateway_event()
    broken = DATA_FAULTS[fault](data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)

    with pytest.raises(MalformedEvent) as caught:
        parse_event((attributes, json.dumps(broken).encode()))

    assert str(caught.value)


def test_an_unparseable_time_is_a_malformed_event():
    attributes, data = gateway_event()

    with pytest.raises(MalformedEvent, match="submitted_at"):
        parse_event((attributes, json.dumps({**data, "submitted_at": "yesterday"}).encode()))


def test_fields_the_schema_may_gain_later_are_ignored():
    attributes, data = gateway_event()

    assert parse_event((attributes, json.dumps({**data, "cost_usd": 0.2}).encode())).job_id == "job-1"


def test_a_null_error_state_and_delivery_id_and_no_trace_are_valid():
    attributes, data = gateway_event(outcome="SUCCEEDED", error=None, carto_state=None, delivery_id=None)
    data.pop("trace")
    jsonschema.validate(data, SCHEMA)

    event = parse_event((attributes, json.dumps(data).encode()))

    assert event.succeeded and event.error is None and event.state is None and event.trace is None


def _attrs(change):
    attributes, data = gateway_event()
    return change(dict(attributes)), json.dumps(data).encode()


MESSAGE_FAULTS = {
    "None": None,
    "a string": "job-1:FAILED",
    "data not JSON": ({"ce-id": "job-1:FAILED", "ce-type": "t"}, b"{not json"),
    "data not UTF-8": ({"ce-id": "job-1:FAILED", "ce-type": "t"}, b"\xff\xfe"),
    "data a JSON list": ({"ce-id": "job-1:FAILED", "ce-type": "t"}, b"[1, 2]"),
    "attributes not a mapping": (42, b"{}"),
    "no ce-id": _attrs(lambda a: {k: v for k, v in a.items() if k != "ce-id"}),
    "ce-id of another job": _attrs(lambda a: {**a, "ce-id": "job-2:FAILED"}),
    "outcome attribute disagrees": _attrs(lambda a: {**a, "outcome": "SUCCEEDED"}),
    "push envelope without message": {"subscription": "s"},
    "push data not base64": {"message": {"data": "***", "attributes": {}}},
    "push without data": {"message": {"attributes": {}}},
}


@pytest.mark.parametrize("received", MESSAGE_FAULTS.values(), ids=list(MESSAGE_FAULTS))
def test_what_is_not_a_completion_event_is_a_malformed_event_never_a_key_error(received):
    with pytest.raises(MalformedEvent) as caught:
        parse_event(received)

    assert isinstance(caught.value, ValueError) and str(caught.value)


ROWS = {"table": "p.d.out", "rows": [{"store_id": 1, "score": 0.5}, {"store_id": 2, "score": None}],
        "schema": [{"name": "store_id", "type": "INT64"}, {"name": "score", "type": "FLOAT64"}], "truncated": True}


def test_a_result_parses_into_rows_schema_and_truncated():
    attributes, data = gateway_event(outcome="SUCCEEDED", error=None, result=ROWS)
    jsonschema.validate(data, SCHEMA)

    result = parse_event((attributes, json.dumps(data).encode())).result

    assert result.ok and result.table == "p.d.out" and result.truncated is True
    assert [dict(row) for row in result.rows] == ROWS["rows"]
    assert [(c.name, c.type) for c in result.schema] == [("store_id", "INT64"), ("score", "FLOAT64")]


def test_a_failed_read_parses_into_its_error_and_no_rows():
    failed = {"table": None, "error": {"reason": "noOutputTable", "message": "the job names no table"}}
    attributes, data = gateway_event(outcome="SUCCEEDED", error=None, result=failed)
    jsonschema.validate(data, SCHEMA)

    result = parse_event((attributes, json.dumps(data).encode())).result

    assert not result.ok and result.rows == () and result.error.reason == "noOutputTable"


def test_an_event_without_result_has_none():
    attributes, data = gateway_event(outcome="SUCCEEDED", error=None)

    assert "result" not in data and parse_event((attributes, json.dumps(data).encode())).result is None
