"""Properties of parameter binding: whatever arrives, either the right wire form goes out or a BindError."""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Unprocessable
from gateway.params import ParamSpec, map_parameters
from gateway.sqltypes import GEOMETRY_TYPES, INT64_MAX, INT64_MIN, SQL_TYPES, BindError, bind
from tests.strategies import VALID, Outcomes

PROPERTY = settings(max_examples=200, deadline=None)

# Any JSON value Python's json module can produce, NaN, Infinity and lone surrogates included.
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(st.characters(exclude_categories=()), max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def _with_offset(moment: datetime, minutes: int) -> str:
    return moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat()


# Values near the accepted forms, so that the success paths are exercised as well as the refusals.
near_valid = st.one_of(
    st.integers(INT64_MIN - 2, INT64_MAX + 2).map(str),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.floats(allow_nan=False).map(repr),
    st.sampled_from(["true", "FALSE", "1", "0", " yes "]),
    st.dates().map(str),
    st.builds(_with_offset, st.datetimes(), st.integers(-1439, 1439)),
    st.datetimes().map(datetime.isoformat),
    st.builds(lambda lon, lat: {"type": "Point", "coordinates": [lon, lat]},
              st.floats(-200, 200), st.floats(-100, 100)),
    st.lists(st.integers(INT64_MIN, INT64_MAX) | st.floats() | st.booleans() | st.text(max_size=3), max_size=4),
)
any_value = json_values | near_valid

NUMERIC_WIRE = re.compile(r"-?[0-9]{1,29}(\.[0-9]{0,8}[1-9])?")
TIMESTAMP_WIRE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z")


def assert_wire_form(sql_type: str, sent: object) -> None:
    """`sent` survives JSON and has the one wire form of `sql_type`."""
    assert json.loads(json.dumps(sent, allow_nan=False)) == sent
    if sql_type.startswith("ARRAY<"):
        assert type(sent) is list
        for item in sent:
            assert_wire_form(sql_type[len("ARRAY<"):-1], item)
    elif sql_type == "INT64":
        assert type(sent) is int and INT64_MIN <= sent <= INT64_MAX
    elif sql_type == "FLOAT64":
        assert type(sent) is float and math.isfinite(sent)
    elif sql_type == "BOOL":
        assert type(sent) is bool
    else:
        assert type(sent) is str
        sent.encode("utf-8")
        _assert_text_form(sql_type, sent)


def _assert_text_form(sql_type: str, sent: str) -> None:
    if sql_type == "NUMERIC":
        assert NUMERIC_WIRE.fullmatch(sent) and sent != "-0"
    elif sql_type == "DATE":
        assert date.fromisoformat(sent).isoformat() == sent
    elif sql_type == "TIMESTAMP":
        assert TIMESTAMP_WIRE.fullmatch(sent)
    elif sql_type == "GEOGRAPHY":
        assert json.loads(sent)["type"] in GEOMETRY_TYPES
    elif sql_type == "JSON":
        json.loads(sent)


@pytest.mark.parametrize("sql_type", sorted(SQL_TYPES))
def test_bind_returns_the_wire_form_or_raises_bind_error(sql_type):
    outcomes = Outcomes()

    @settings(max_examples=100, deadline=None)
    @given(value=any_value | VALID[sql_type], coerce=st.booleans())
    def bind_any(value, coerce):
        try:
            sent = bind(sql_type, value, coerce=coerce)
        except BindError:
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        assert_wire_form(sql_type, sent)

    bind_any()
    outcomes.assert_both()  # a bind that refused every value would fail here


@PROPERTY
@given(st.integers(INT64_MIN, INT64_MAX))
def test_any_int64_binds_to_itself(number):
    sent = bind("INT64", number)
    assert sent == number and type(sent) is int


@PROPERTY
@given(st.integers(INT64_MIN, INT64_MAX))
def test_any_int64_text_binds_to_its_integer_with_coerce(number):
    assert bind("INT64", str(number), coerce=True) == number


@PROPERTY
@given(st.one_of(st.integers(max_value=INT64_MIN - 1), st.integers(min_value=INT64_MAX + 1)))
def test_no_integer_outside_int64_binds(number):
    try:
        bind("INT64", number)
    except BindError:
        return
    raise AssertionError(f"{number} was bound")


@PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_binds_to_itself_as_float64(number):
    sent = bind("FLOAT64", number)
    assert sent == number and type(sent) is float


# Built from text: st.decimals(places=9) rounds to the default 28-digit context near the NUMERIC limits.
numerics = st.integers(-(10**38) + 1, 10**38 - 1).map(lambda units: Decimal(f"{units}e-9"))


@PROPERTY
@given(numerics)
def test_any_numeric_in_range_binds_to_the_same_decimal(number):
    assert Decimal(bind("NUMERIC", str(number))) == number


@PROPERTY
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), st.integers(-1439, 1439))
def test_a_timestamp_with_any_offset_is_sent_as_the_same_instant_in_utc(moment, minutes):
    sent = bind("TIMESTAMP", _with_offset(moment, minutes))
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    assert datetime.fromisoformat(sent) == aware


EVERY_TYPE = {
    f"p{index}": ParamSpec(f"p{index}", sql_type, pointer=f"/p{index}", coerce=coerce)
    for index, (sql_type, coerce) in enumerate((t, c) for t in sorted(SQL_TYPES) for c in (False, True))
}
EVERY_TYPE["tenant"] = ParamSpec("tenant", "STRING", header="X-Tenant", default="public")


# Every parameter present with a value of its type: the body map_parameters must bind.
VALID_BODY = st.fixed_dictionaries({name: VALID[spec.type] for name, spec in EVERY_TYPE.items() if spec.pointer})


def test_map_parameters_binds_everything_or_raises_unprocessable():
    outcomes = Outcomes()

    @PROPERTY
    @given(body=json_values | st.fixed_dictionaries({}, optional={name: any_value for name in EVERY_TYPE}) | VALID_BODY,
           headers=st.dictionaries(st.sampled_from(["X-Tenant", "x-tenant", "Other"]), st.text(max_size=5)))
    def map_any(body, headers):
        try:
            bound = map_parameters(EVERY_TYPE, body, headers)
        except Unprocessable as exc:
            outcomes["refused"] += 1
            assert exc.errors
            assert all(e.path.startswith(("/p", "header:X-Tenant")) for e in exc.errors)
            return
        outcomes["accepted"] += 1
        assert list(bound) == list(EVERY_TYPE)
        for name, sent in bound.items():
            assert_wire_form(EVERY_TYPE[name].type, sent)

    map_any()
    outcomes.assert_both()  # a mapper that refused every body would fail here
