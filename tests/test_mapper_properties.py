"""Properties of `gateway.validation.render` over every workflow: for any JSON body and headers, either
parameters that bind to their declared types come out, or Unprocessable naming where each problem is.
Nothing else escapes (README, "Workflow files": a value that cannot be bound is a 422 and never reaches CARTO).

Parameter binding alone is tests/test_params_properties.py's; this is the whole mapper: the payload
schema and the parameters together, over the product's workflows, the test workflows and one that
declares every SQL type with every kind of source.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Unprocessable
from gateway.local.demos import write_demo_schemas
from gateway.sqltypes import bind
from gateway.validation import render
from gateway.workflows import Workflow, load_registry
from tests.constants import DATA, ROOT
from tests.strategies import Outcomes, place, valid_bodies, valid_headers

EVERY_TYPE = {
    "description": "Test only: every SQL type, with pointers, coercion, defaults, a header and a constant.",
    "connection": "carto_dw",
    "query": "CALL `test-project.workflows_temp.every_type`(@s,@i,@f,@n,@b,@d,@t,@g,@j,@as,@ai,@af,@ab,@ci,@h,@k)",
    "parameters": {
        "s": {"type": "STRING", "from": "/text"},
        "i": {"type": "INT64", "from": "/nested/count", "default": 1},
        "f": {"type": "FLOAT64", "from": "/items/0"},
        "n": {"type": "NUMERIC", "from": "/amount", "default": "0"},
        "b": {"type": "BOOL", "from": "/flag", "coerce": True},
        "d": {"type": "DATE", "from": "/day"},
        "t": {"type": "TIMESTAMP", "from": "/at"},
        "g": {"type": "GEOGRAPHY", "from": "/area"},
        "j": {"type": "JSON", "from": "/doc"},
        "as": {"type": "ARRAY<STRING>", "from": "/tags", "default": []},
        "ai": {"type": "ARRAY<INT64>", "from": "/ids", "coerce": True},
        "af": {"type": "ARRAY<FLOAT64>", "from": "/a~1b"},
        "ab": {"type": "ARRAY<BOOL>", "from": "/bools", "default": [True]},
        "ci": {"type": "INT64", "from": "/clusters", "coerce": True},
        "h": {"type": "STRING", "header": "X-Region"},
        "k": {"type": "INT64", "value": 7},
    },
    "payload": {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "maxLength": 40},
                       "nested": {"type": "object", "properties": {"count": {"type": "integer", "minimum": 0}}},
                       "items": {"type": "array", "maxItems": 5},
                       "clusters": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]}},
    },
    "auth": "none",
}


def _workflows() -> list[Workflow]:
    """schemas/workflows, the test workflows of tests/data/workflows (not the auth variants), EVERY_TYPE."""
    with tempfile.TemporaryDirectory() as tmp:
        schemas = Path(tmp) / "schemas"
        write_demo_schemas(schemas)
        for path in (DATA / "workflows").glob("*.json"):
            shutil.copy(path, schemas / "workflows" / path.name)
        (schemas / "workflows" / "every-type.json").write_text(json.dumps(EVERY_TYPE))
        registry = load_registry(schemas, {}, require_secrets=False)
    return [registry.workflows[name] for name in sorted(registry.workflows)]


WORKFLOWS = _workflows()
# A body each workflow accepts; `valid_bodies` varies every parameter's value around it.
SEEDS = {"every-type": {"text": "seed"}, "idem-pointer": {"total": 12.5}, "slow-report": {"region": "emea"},
         "store-clusters-float": {"clusters": 2.0, "radius_m": 100.0, "store": {"type": "retail"}},
         **{path.stem: json.loads(path.read_text()) for path in (ROOT / "examples").glob("*.json")}}

# Any JSON value (NaN, infinities and lone surrogates included: Python's parser lets the first
# through as 1e400 and the last as "\ud800"), plus values near each type's accepted forms.
scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(st.characters(exclude_categories=()), max_size=12))
near_valid = st.sampled_from([
    "2", " 42 ", "2.5", "1e3", "-0", "true", "FALSE", "1", "0", "2024-02-29", "2023-02-29", "2024-01-01T00:00:00Z",
    "2024-01-01T00:00:00+14:00", "2024-01-01T00:00:00", "123456789012345678901234567890.123456789",
    2**63 - 1, 2**63, -(2**63), 2.0, 1e308, -0.0, [], [1, "2", 3.0], [True, None], [[1]],
    {"type": "Point", "coordinates": [1.5, 2.5]}, {"type": "Point", "coordinates": [200, 100]},
    {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, '{"type":"Point","coordinates":[0,0]}',
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}, {"a": [1, {"b": None}]},
])
values = st.recursive(scalars | near_valid,
                      lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=5), children, max_size=4),
                      max_leaves=10)


@st.composite
def bodies(draw: Any, workflow: Workflow) -> Any:
    """Random JSON, or an object with a drawn value at each parameter's pointer (most of them)."""
    if draw(st.integers(0, 4)) == 0:
        return draw(values)
    body: Any = draw(st.dictionaries(st.text(max_size=5), values, max_size=3))
    for spec in workflow.parameters.values():
        if spec.pointer is not None and draw(st.integers(0, 5)) > 0:
            body = place(body, spec.pointer, draw(values))
    return body


@st.composite
def header_maps(draw: Any, workflow: Workflow) -> dict[str, str]:
    names = [spec.header for spec in workflow.parameters.values() if spec.header] + ["X-Other"]
    return draw(st.dictionaries(st.sampled_from(names), st.text(max_size=8), max_size=len(names)))


def _rebinds(sql_type: str, sent: Any) -> bool:
    """What was sent binds again to the same wire form: it is a value of its declared type."""
    if sql_type == "GEOGRAPHY":  # sent as GeoJSON text, which binds (as text) only with coerce
        return bind(sql_type, sent, coerce=True) == sent
    if sql_type == "JSON":  # sent as JSON text: its parsed value binds to the same text
        return bind(sql_type, json.loads(sent)) == sent
    again = bind(sql_type, sent)
    return again == sent and type(again) is type(sent)


def _assert_named_at_its_source(workflow: Workflow, error: Any) -> None:
    """A problem with a parameter names the parameter and points at where its value came from."""
    spec = next((s for s in workflow.parameters.values() if error.message.startswith(s.label)), None)
    if spec is not None:  # else a schema violation, at its own path
        source = spec.pointer if spec.pointer is not None else f"header:{spec.header}"
        assert error.path.startswith(source), (error, source)


def _is_path(path: str) -> bool:
    return path.startswith("/") or path.startswith("header:") or path.startswith("value:")


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_render_yields_parameters_that_bind_or_names_every_problem(workflow):
    outcomes = Outcomes()

    @settings(max_examples=200, deadline=None)
    @given(data=st.data())
    def render_any(data):
        body = data.draw(bodies(workflow) | valid_bodies(workflow, SEEDS[workflow.name]), label="body")
        headers = data.draw(header_maps(workflow) | valid_headers(workflow), label="headers")
        try:
            rendered = render(workflow, body, headers)
        except Unprocessable as refused:
            outcomes["refused"] += 1
            assert refused.errors, "a 422 without a single problem"
            for error in refused.errors:
                assert _is_path(error.path) and error.message, error
                _assert_named_at_its_source(workflow, error)
            return
        outcomes["accepted"] += 1
        assert workflow.validator.is_valid(body)
        assert rendered.query == workflow.query
        assert list(rendered.parameters) == list(workflow.parameters)
        json.dumps(rendered.parameters, allow_nan=False).encode("utf-8")  # what CARTO gets is strict JSON
        for name, spec in workflow.parameters.items():
            assert _rebinds(spec.type, rendered.parameters[name]), (name, rendered.parameters[name])

    render_any()
    outcomes.assert_both()  # an implementation that refused every body would fail here
