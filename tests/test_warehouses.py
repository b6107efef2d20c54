"""Every warehouse family: placeholders decide it, positional parameters go out as an array in
placeholder order, each family's type names bind by the same rules, Databricks is refused at load."""

from __future__ import annotations

import json

import pytest

from gateway.errors import ConfigError, Unprocessable
from gateway.validation import render
from gateway.warehouses import DATABRICKS_REFUSED, binding_type, scan
from gateway.workflows import load_registry
from tests.constants import DEMO_SECRETS, ROOT

SNOWFLAKE = json.loads((ROOT / "examples" / "workflows" / "store-revenue-snowflake.json").read_text())
POSTGRES = json.loads((ROOT / "examples" / "workflows" / "parcels-postgres.json").read_text())
ENV = {**DEMO_SECRETS}


def load(schemas, **definitions):
    for name, definition in definitions.items():
        (schemas / "workflows" / f"{name}.json").write_text(json.dumps(definition))
    return load_registry(schemas, ENV)


def load_error(schemas, **definitions) -> str:
    with pytest.raises(ConfigError) as raised:
        load(schemas, **definitions)
    return str(raised.value)


@pytest.mark.parametrize("query, style, tokens", [
    ("CALL `p.d.x`(@a, @b, @a)", "@name", ("a", "b")),
    ("CALL DB.S.P(:2, :1)", ":1", (2, 1)),
    ("CALL s.p($1, $2::integer, '$3')", "$1", (1, 2)),
    ("CALL s.p(:name)", ":name", ("name",)),
    ("CALL s.p('12:30', @@x, /* :1 */ 'a')", None, ()),
])
def test_placeholders_are_found_outside_literals_comments_and_casts(query, style, tokens):
    found = scan(query)
    assert found.style == style and (found.names or found.positions) == tokens


def test_the_placeholders_decide_the_family(schemas):
    registry = load(schemas, sf={k: v for k, v in SNOWFLAKE.items() if k != "warehouse"},
                    pg={k: v for k, v in POSTGRES.items() if k != "warehouse"})
    assert registry.get("sf").warehouse == "snowflake" and registry.get("pg").warehouse == "postgresql"
    redshift = {**POSTGRES, "warehouse": "redshift",  # Redshift has no arrays: SUPER takes JSON text
                "parameters": {**POSTGRES["parameters"], "zonings": {"type": "super", "position": 4, "value": "[]"}}}
    assert load(schemas, rs=redshift).get("rs").warehouse == "redshift"


def test_a_warehouse_that_contradicts_the_placeholders_is_refused(schemas):
    message = load_error(schemas, bad={**SNOWFLAKE, "warehouse": "bigquery"})
    assert "warehouse bigquery takes @name placeholders, but the query uses :1" in message


@pytest.mark.parametrize("change", [
    {"warehouse": "databricks"},
    {"query": "CALL cat.sch.proc(:store_type)", "parameters": {"store_type": {"type": "STRING", "from": "/store_type"}}},
])
def test_databricks_is_refused_saying_no_public_source_documents_its_parameters(schemas, change):
    message = load_error(schemas, dbx={**SNOWFLAKE, **change})
    assert DATABRICKS_REFUSED in message and "no public CARTO source" in message


def test_a_positional_parameter_needs_its_placeholder_number(schemas):
    parameters = {**SNOWFLAKE["parameters"], "since": {"type": "DATE", "from": "/since"}}
    message = load_error(schemas, bad={**SNOWFLAKE, "parameters": parameters})
    assert "$.parameters.since.position: required for snowflake" in message and ":4 has no parameter" in message


def test_a_type_the_family_does_not_have_names_file_path_and_choices(schemas):
    parameters = {**POSTGRES["parameters"], "city": {"type": "VARCHAR2", "position": 1, "from": "/city"}}
    message = load_error(schemas, bad={**POSTGRES, "parameters": parameters})
    assert "bad.json" in message and "$.parameters.city.type" in message and "PostgreSQL" in message


@pytest.mark.parametrize("family, declared, binds_as", [
    ("snowflake", "NUMBER(38,0)", "INT64"), ("snowflake", "number(10, 2)", "NUMERIC"), ("snowflake", "FLOAT", "FLOAT64"),
    ("snowflake", "VARCHAR(100)", "STRING"), ("snowflake", "BOOLEAN", "BOOL"), ("snowflake", "TIMESTAMP_TZ", "TIMESTAMP"),
    ("snowflake", "GEOGRAPHY", "GEOGRAPHY"), ("snowflake", "VARIANT", "JSON"), ("snowflake", "ARRAY", "JSON"),
    ("postgresql", "integer", "INT64"), ("postgresql", "bigint", "INT64"), ("postgresql", "double precision", "FLOAT64"),
    ("postgresql", "numeric(12,3)", "NUMERIC"), ("postgresql", "text", "STRING"), ("postgresql", "boolean", "BOOL"),
    ("postgresql", "timestamptz", "TIMESTAMP"), ("postgresql", "geometry", "GEOGRAPHY"), ("postgresql", "jsonb", "JSON"),
    ("postgresql", "text[]", "ARRAY<STRING>"), ("redshift", "super", "JSON"), ("bigquery", "int64", "INT64"),
])
def test_each_familys_type_names_map_onto_the_binding_rules(family, declared, binds_as):
    assert binding_type(family, declared) == binds_as


@pytest.mark.parametrize("family, declared", [("redshift", "text[]"), ("bigquery", "VARCHAR"), ("snowflake", "SUPER")])
def test_a_type_another_family_has_is_refused(family, declared):
    with pytest.raises(ConfigError):
        binding_type(family, declared)


def test_positional_parameters_render_as_an_array_in_placeholder_order(schemas):
    reordered = {**POSTGRES, "query": "CALL carto_workflows.workflow_procedure_8c2d41e07f3a9b15($2, $1, $3, $4)"}
    workflow = load(schemas, pg=reordered).get("pg")

    rendered = render(workflow, {"city": "Madrid", "radius_m": 750}, {})

    assert rendered.wire == ["Madrid", 750.0, 100, []]  # item k is $k's value, whatever the CALL's order
    assert rendered.parameters == {"city": "Madrid", "radius_m": 750.0, "max_parcels": 100, "zonings": []}


@pytest.mark.parametrize("name, payload, path", [
    ("store-revenue-snowflake", {"store_type": "x", "since": "2024-01-01", "top": 2.5}, "/top"),
    ("store-revenue-snowflake", {"store_type": "x", "since": "2024-02-30"}, "/since"),
    ("parcels-postgres", {"city": "Madrid", "radius_m": 750, "max": "20"}, "/max"),
])
def test_a_mistyped_value_for_a_positional_warehouse_is_refused_before_carto(name, payload, path):
    workflow = load_registry(ROOT / "examples", ENV).get(name)
    with pytest.raises(Unprocessable) as raised:
        render(workflow, payload, {})
    assert any(error.path == path for error in raised.value.errors)


# --- through the webhook, against the local CARTO job API ------------------------------------------

EXAMPLES = {
    "store-revenue-snowflake": ({"store_type": "Supermarket", "top": 5, "min_revenue": 100000.0, "since": "2024-01-01"},
                                ["Supermarket", 5, 100000.0, "2024-01-01"], {"top": 2.5}, "/top"),
    "parcels-postgres": ({"city": "Madrid", "radius_m": 750, "max": 20, "zonings": ["residential", "mixed"]},
                         ["Madrid", 750.0, 20, ["residential", "mixed"]], {"max": "20"}, "/max"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_submits_an_array_that_its_warehouse_binds(rig, name):
    payload, sent, _, _ = EXAMPLES[name]
    assert json.loads((ROOT / "examples" / f"{name}.json").read_text()) == payload

    response = rig.post(name, payload)
    rig.clock.advance(30)
    rig.poll_all()

    assert response.status_code == 202, response.get_data(as_text=True)
    [job] = rig.sandbox.jobs()
    assert job.query_parameters == sent and job.warehouse == name.rsplit("-", 1)[1].replace("postgres", "postgresql")
    [event] = rig.publisher.events()
    assert event["attributes"]["outcome"] == "SUCCEEDED", event["data"]["error"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_refuses_a_mistyped_value_with_a_422_before_carto(rig, name):
    payload, _, mistyped, path = EXAMPLES[name]

    response = rig.post(name, {**payload, **mistyped})

    assert response.status_code == 422
    assert any(error["path"] == path for error in response.get_json()["errors"])
    assert rig.sandbox.jobs() == []
