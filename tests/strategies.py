"""Hypothesis strategies of inputs that must be accepted, built without the code under test, and a
counter that shows a property reached both its accepting and its refusing branch.

A property "accept or refuse cleanly" passes for an implementation that refuses everything; mixing
these valid inputs into its strategy and asserting on `Outcomes` afterwards makes it fail then.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import jsonschema
from hypothesis import strategies as st

from gateway.sqltypes import INT64_MAX, INT64_MIN

_TEXT = st.text(max_size=20)  # hypothesis leaves out lone surrogates by default: valid Unicode only
_JSON = st.recursive(st.booleans() | st.integers(INT64_MIN, INT64_MAX) | st.floats(allow_nan=False, allow_infinity=False)
                     | _TEXT, lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(_TEXT, children, max_size=3), max_leaves=6)


def _timestamp(moment: datetime, minutes: int) -> str:
    return moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat()


# One strategy per SQL type: JSON values of the type's native form, each of which binds without coercion.
_SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "STRING": _TEXT,
    "INT64": st.integers(INT64_MIN, INT64_MAX),
    "FLOAT64": st.floats(allow_nan=False, allow_infinity=False),
    "NUMERIC": st.integers(-(10**38) + 1, 10**38 - 1).map(lambda units: str(Decimal(f"{units}e-9"))),
    "BOOL": st.booleans(),
    "DATE": st.dates().map(lambda day: day.isoformat()),
    "TIMESTAMP": st.builds(_timestamp, st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
                           st.integers(-1439, 1439)),
    "GEOGRAPHY": st.builds(lambda lon, lat: {"type": "Point", "coordinates": [lon, lat]},
                           st.floats(-180, 180), st.floats(-90, 90)),
    "JSON": _JSON,
}
VALID: dict[str, st.SearchStrategy[Any]] = {
    **_SCALARS, **{f"ARRAY<{item}>": st.lists(_SCALARS[item], max_size=4) for item in ("STRING", "INT64", "FLOAT64", "BOOL")}}


def _tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")] if pointer else []


def place(body: Any, pointer: str, value: Any) -> Any:
    """`body` with `value` at JSON Pointer `pointer`, creating objects (or a list for index 0) on the way."""
    return _place(body, _tokens(pointer), value)


def _place(body: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    head, rest = tokens[0], tokens[1:]
    if head == "0" and not isinstance(body, dict):
        existing = body if isinstance(body, list) and body else [None]
        return [_place(existing[0], rest, value), *existing[1:]]
    container = body if isinstance(body, dict) else {}
    return {**container, head: _place(container.get(head), rest, value)}


@st.composite
def valid_bodies(draw: Any, workflow: Any, seed: Any) -> Any:
    """Bodies a workflow should mostly accept: `seed` (a body valid for its payload schema) with a value of
    each parameter's type at its pointer wherever the schema (checked by jsonschema) still holds with it."""
    schema = jsonschema.Draft202012Validator(workflow.payload_schema)
    assert schema.is_valid(seed), "the seed must be a valid body"
    body = seed
    for spec in workflow.parameters.values():
        if spec.pointer is not None:
            typed = place(body, spec.pointer, draw(VALID[spec.type]))
            body = typed if schema.is_valid(typed) else body
    return body


@st.composite
def valid_headers(draw: Any, workflow: Any) -> dict[str, str]:
    """A value for every header a workflow's parameters read (text binds as STRING)."""
    return {spec.header: draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8))
            for spec in workflow.parameters.values() if spec.header}


class Outcomes(Counter):
    """Counts the branches a property took; `assert_both` fails unless each was taken at least once."""

    def assert_both(self, accepted: str = "accepted", refused: str = "refused") -> None:
        assert self[accepted] and self[refused], f"a branch never ran: {dict(self)}"
