"""Typed query parameters (README, "Workflow files"): what each type accepts, what it is sent as, and every refusal."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from gateway.errors import ConfigError, FieldError, Unprocessable
from gateway.params import MISSING, ParamSpec, check_spec, map_parameters, resolve_pointer
from gateway.sqltypes import MAX_ITEM_ERRORS, SQL_TYPES, BindError, bind, normalise_type

POLYGON = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
POLYGON_TEXT = '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}'

# (type, value, coerce, what is sent). The sent value's Python type is asserted too.
ACCEPTED = [
    ("STRING", "grocery", False, "grocery"),
    ("STRING", "", False, ""),
    ("STRING", "  kept as is  ", False, "  kept as is  "),
    ("STRING", 2, True, "2"),
    ("STRING", 2.5, True, "2.5"),
    ("STRING", True, True, "true"),
    ("INT64", 2, False, 2),
    ("INT64", 0, False, 0),
    ("INT64", -(2**63), False, -(2**63)),
    ("INT64", 2**63 - 1, False, 2**63 - 1),
    ("INT64", 2.0, True, 2),
    ("INT64", 2.0, False, 2),  # JSON has one number type: 2.0, 2e0 and 20E-1 are the integer 2, sent as 2
    ("INT64", -3.0, False, -3),
    ("INT64", -0.0, False, 0),
    ("INT64", 9.223372036854775e18, False, 9223372036854774784),
    ("INT64", -9.223372036854775808e18, False, -(2**63)),
    ("INT64", " -42 ", True, -42),
    ("INT64", "+7", True, 7),
    ("INT64", "0009223372036854775807", True, 2**63 - 1),
    ("FLOAT64", 2.5, False, 2.5),
    ("FLOAT64", 2, False, 2.0),
    ("FLOAT64", -0.0, False, -0.0),
    ("FLOAT64", 1.7976931348623157e308, False, 1.7976931348623157e308),
    ("FLOAT64", "1e3", True, 1000.0),
    ("FLOAT64", " -.5 ", True, -0.5),
    ("NUMERIC", "12.3400", False, "12.34"),
    ("NUMERIC", 0.1, False, "0.1"),
    ("NUMERIC", 7, False, "7"),
    ("NUMERIC", "1E+5", False, "100000"),
    ("NUMERIC", "1e-9", False, "0.000000001"),
    ("NUMERIC", "-0.000", False, "0"),
    ("NUMERIC", " 3.5 ", False, "3.5"),
    ("NUMERIC", "0.10000000000", False, "0.1"),
    ("NUMERIC", "-99999999999999999999999999999.999999999", False, "-99999999999999999999999999999.999999999"),
    ("BOOL", True, False, True),
    ("BOOL", False, False, False),
    ("BOOL", "TRUE", True, True),
    ("BOOL", " false ", True, False),
    ("BOOL", "1", True, True),
    ("BOOL", "0", True, False),
    ("DATE", "2024-02-29", False, "2024-02-29"),
    ("DATE", "0001-01-01", False, "0001-01-01"),
    ("DATE", " 2024-05-01\n", False, "2024-05-01"),
    ("TIMESTAMP", "2024-05-01T12:00:00Z", False, "2024-05-01T12:00:00Z"),
    ("TIMESTAMP", "2024-05-01t12:00:00z", False, "2024-05-01T12:00:00Z"),
    ("TIMESTAMP", "2024-05-01T12:00:00.123+02:00", False, "2024-05-01T10:00:00.123000Z"),
    ("TIMESTAMP", "2024-05-01 00:30:00-01:00", False, "2024-05-01T01:30:00Z"),
    ("TIMESTAMP", "2024-12-31T23:30:00-01:00", False, "2025-01-01T00:30:00Z"),
    ("TIMESTAMP", "2024-05-01T12:00:00.100000000Z", False, "2024-05-01T12:00:00.100000Z"),
    ("TIMESTAMP", "9999-12-31T23:59:59.999999Z", False, "9999-12-31T23:59:59.999999Z"),
    ("GEOGRAPHY", {"type": "Point", "coordinates": [-3.7, 40.4]}, False, '{"type":"Point","coordinates":[-3.7,40.4]}'),
    ("GEOGRAPHY", {"type": "Point", "coordinates": [180, -90, 12.5]}, False,
     '{"type":"Point","coordinates":[180,-90,12.5]}'),
    ("GEOGRAPHY", POLYGON, False, POLYGON_TEXT),
    ("GEOGRAPHY", {**POLYGON, "bbox": [0, 0, 1, 1], "crs": "x"}, False, POLYGON_TEXT),
    ("GEOGRAPHY", POLYGON_TEXT, True, POLYGON_TEXT),
    ("GEOGRAPHY", {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]}, False,
     '{"type":"MultiPoint","coordinates":[[0,0],[1,1]]}'),
    ("GEOGRAPHY", {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, False,
     '{"type":"LineString","coordinates":[[0,0],[1,1]]}'),
    ("GEOGRAPHY", {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]]}, False,
     '{"type":"MultiLineString","coordinates":[[[0,0],[1,1]]]}'),
    ("GEOGRAPHY", {"type": "MultiPolygon", "coordinates": [POLYGON["coordinates"]]}, False,
     '{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]]]}'),
    ("GEOGRAPHY", {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]}]}, False,
     '{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]}]}'),
    ("JSON", {"a": [1, None, "é"]}, False, '{"a":[1,null,"é"]}'),
    ("JSON", "text", False, '"text"'),
    ("JSON", False, False, "false"),
    ("JSON", 0, False, "0"),
    ("JSON", [], False, "[]"),
    ("ARRAY<INT64>", [1, 2], False, [1, 2]),
    ("ARRAY<INT64>", ["1", 2.0], True, [1, 2]),
    ("ARRAY<INT64>", [1.0, 2], False, [1, 2]),
    ("ARRAY<FLOAT64>", [1, 2.5], False, [1.0, 2.5]),
    ("ARRAY<STRING>", ["a", "b"], False, ["a", "b"]),
    ("ARRAY<STRING>", [], False, []),
    ("ARRAY<BOOL>", [True, "false"], True, [True, False]),
]


@pytest.mark.parametrize(("sql_type", "value", "coerce", "sent"), ACCEPTED)
def test_bind_sends_the_wire_form_of_an_accepted_value(sql_type, value, coerce, sent):
    result = bind(sql_type, value, coerce=coerce)
    assert result == sent
    assert type(result) is type(sent)
    if isinstance(sent, list):
        assert [type(item) for item in result] == [type(item) for item in sent]


# (type, value, coerce, message)
REFUSED = [
    ("STRING", 2, False, "expected a string, got 2"),
    ("STRING", True, False, "expected a string, got true"),
    ("STRING", None, False, "expected a string, got null"),
    ("STRING", {"a": 1}, True, "expected a string, got an object"),
    ("STRING", ["a"], True, "expected a string, got an array of 1 item"),
    ("STRING", float("nan"), True, "NaN is not representable as JSON"),
    ("STRING", "\ud800", False, "the text contains an unpaired surrogate, which is not valid Unicode"),
    ("INT64", 2.5, False, "expected an integer, got 2.5"),
    ("INT64", 2.5, True, "expected an integer, got 2.5"),
    ("INT64", 0.5, False, "expected an integer, got 0.5"),
    ("INT64", 9.223372036854775808e18, False, "9.223372036854776e+18 is outside the INT64 range [-2^63, 2^63-1]"),
    ("INT64", True, False, "expected an integer, got true"),
    ("INT64", False, True, "expected an integer, got false"),
    ("INT64", "2", False, 'expected an integer, got "2"'),
    ("INT64", "2.0", True, 'expected an integer, got "2.0"'),
    ("INT64", "\u0663", True, 'expected an integer, got "\u0663"'),
    ("INT64", "", True, 'expected an integer, got ""'),
    ("INT64", None, False, "expected an integer, got null"),
    ("INT64", 2**63, False, "9223372036854775808 is outside the INT64 range [-2^63, 2^63-1]"),
    ("INT64", -(2**63) - 1, False, "-9223372036854775809 is outside the INT64 range [-2^63, 2^63-1]"),
    ("INT64", 1e19, True, "1e+19 is outside the INT64 range [-2^63, 2^63-1]"),
    ("INT64", "9" * 5000, True, '"9999999999999999999999999999999999999999…" is outside the INT64 range [-2^63, 2^63-1]'),
    ("INT64", float("inf"), True, "the number is outside the INT64 range [-2^63, 2^63-1]"),
    ("INT64", float("-inf"), False, "the number is outside the INT64 range [-2^63, 2^63-1]"),
    ("INT64", float("nan"), False, "expected an integer, got NaN"),
    ("FLOAT64", float("nan"), False, "expected a finite number, got NaN"),
    ("FLOAT64", float("-inf"), True, "expected a finite number, got -Infinity"),
    ("FLOAT64", True, False, "expected a number, got true"),
    ("FLOAT64", "2.5", False, 'expected a number, got "2.5"'),
    ("FLOAT64", "nan", True, 'expected a number, got "nan"'),
    ("FLOAT64", "1_000", True, 'expected a number, got "1_000"'),
    ("FLOAT64", "1e999", True, '"1e999" is outside the FLOAT64 range'),
    ("FLOAT64", 10**400, False, "a very large integer is outside the FLOAT64 range"),
    ("NUMERIC", "abc", False, 'expected a decimal number, got "abc"'),
    ("NUMERIC", "NaN", False, 'expected a decimal number, got "NaN"'),
    ("NUMERIC", float("inf"), False, "expected a decimal number, got Infinity"),
    ("NUMERIC", True, False, "expected a decimal number, got true"),
    ("NUMERIC", "1e29", False, '"1e29" is outside the NUMERIC range (at most 29 digits before the point)'),
    ("NUMERIC", 10**29, False,
     "100000000000000000000000000000 is outside the NUMERIC range (at most 29 digits before the point)"),
    ("NUMERIC", "0.0000000001", False, '"0.0000000001" has more than 9 digits after the point, the NUMERIC scale'),
    ("NUMERIC", 1.5e-10, False, "1.5e-10 has more than 9 digits after the point, the NUMERIC scale"),
    ("NUMERIC", "1e99999999999999999999", False, '"1e99999999999999999999" is outside the NUMERIC range'),
    ("BOOL", "true", False, 'expected true or false, got "true"'),
    ("BOOL", 1, True, "expected true or false, got 1"),
    ("BOOL", "yes", True, 'expected true or false, got "yes"'),
    ("DATE", "2023-02-29", False, '"2023-02-29" is not a calendar date'),
    ("DATE", "0000-01-01", False, '"0000-01-01" is not a calendar date'),
    ("DATE", "2024-5-1", False, 'expected a date as YYYY-MM-DD, got "2024-5-1"'),
    ("DATE", "2024-05-01T00:00:00Z", False, 'expected a date as YYYY-MM-DD, got "2024-05-01T00:00:00Z"'),
    ("DATE", 20240501, True, "expected a date as YYYY-MM-DD, got 20240501"),
    ("TIMESTAMP", "2024-05-01T12:00:00", False,
     '"2024-05-01T12:00:00" has no UTC offset; add Z or +HH:MM so the instant is unambiguous'),
    ("TIMESTAMP", "2024-05-01", False,
     'expected an RFC 3339 timestamp such as 2024-05-01T12:00:00Z, got "2024-05-01"'),
    ("TIMESTAMP", 1714564800, True,
     "expected an RFC 3339 timestamp such as 2024-05-01T12:00:00Z, got 1714564800"),
    ("TIMESTAMP", "2024-05-01T25:00:00Z", False, '"2024-05-01T25:00:00Z" is not a valid date and time'),
    ("TIMESTAMP", "2024-05-01T12:00:00+24:00", False, '"2024-05-01T12:00:00+24:00" is not a valid date and time'),
    ("TIMESTAMP", "2024-05-01T12:00:00.1234567Z", False,
     '"2024-05-01T12:00:00.1234567Z" is more precise than a microsecond, the TIMESTAMP precision'),
    ("TIMESTAMP", "0001-01-01T00:00:00+01:00", False, '"0001-01-01T00:00:00+01:00" is outside the TIMESTAMP range'),
    ("GEOGRAPHY", {"type": "Feature", "geometry": POLYGON}, False, "expected a geometry, got a Feature"),
    ("GEOGRAPHY", {"type": "FeatureCollection", "features": []}, False, "expected a geometry, got a FeatureCollection"),
    ("GEOGRAPHY", '{"type":"Point","coordinates":[1,2]}', False,
     'expected a GeoJSON geometry object, got "{\\"type\\":\\"Point\\",\\"coordinates\\":[1,2]}"'),
    ("GEOGRAPHY", "POINT(1 2)", True, 'expected GeoJSON geometry text, got "POINT(1 2)"'),
    ("GEOGRAPHY", {"type": "Circle", "coordinates": [0, 0]}, False,
     ('expected a geometry type (GeometryCollection, LineString, MultiLineString, MultiPoint, MultiPolygon, Point, '
      'Polygon), got "Circle"')),
    ("GEOGRAPHY", {"type": "Point", "coordinates": [181, 0]}, False, "coordinates: longitude 181 is outside [-180, 180]"),
    ("GEOGRAPHY", {"type": "Point", "coordinates": [0, -90.5]}, False, "coordinates: latitude -90.5 is outside [-90, 90]"),
    ("GEOGRAPHY", {"type": "Point", "coordinates": [0]}, False,
     "coordinates: expected a position [longitude, latitude(, altitude)] of finite numbers, got an array of 1 item"),
    ("GEOGRAPHY", {"type": "Point", "coordinates": [0, True]}, False,
     "coordinates: expected a position [longitude, latitude(, altitude)] of finite numbers, got an array of 2 items"),
    ("GEOGRAPHY", {"type": "Point", "coordinates": [0, float("nan")]}, False,
     "coordinates: expected a position [longitude, latitude(, altitude)] of finite numbers, got an array of 2 items"),
    ("GEOGRAPHY", {"type": "LineString", "coordinates": [[0, 0]]}, False,
     "coordinates: expected an array of at least 2 positions, got an array of 1 item"),
    ("GEOGRAPHY", {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, False,
     "coordinates/0: a linear ring must be closed (its first and last positions differ)"),
    ("GEOGRAPHY", {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, False,
     "coordinates/0: expected an array of at least 4 positions, got an array of 3 items"),
    ("GEOGRAPHY", {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[0, 0], [200, 0]]]]},
     False, "coordinates/1/0: expected an array of at least 4 positions, got an array of 2 items"),
    ("GEOGRAPHY", {"type": "Polygon", "coordinates": []}, False,
     "coordinates: expected an array of at least 1 linear rings, got an array of 0 items"),
    ("GEOGRAPHY", {"type": "GeometryCollection", "geometries": []}, False,
     "geometries: expected an array of at least 1 geometry, got an array of 0 items"),
    ("GEOGRAPHY", {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 99]}]}, False,
     "geometries/0: coordinates: latitude 99 is outside [-90, 90]"),
    ("GEOGRAPHY", {"type": "GeometryCollection", "geometries": [{"type": "GeometryCollection", "geometries": []}]},
     False, "geometries/0: a GeometryCollection inside a GeometryCollection is not supported"),
    ("JSON", None, False, "expected a JSON value, got null"),
    ("JSON", float("nan"), False, "NaN is not representable as JSON"),
    ("JSON", {"a": float("inf")}, False, "an object is not representable as JSON"),
    ("JSON", {"a": "\udfff"}, False, "the text contains an unpaired surrogate, which is not valid Unicode"),
    ("ARRAY<INT64>", "1,2", True, 'expected an array, got "1,2"'),
    ("ARRAY<INT64>", [None], False, "item 0: null is not allowed in an array"),
    ("ARRAY<INT64>", [1.0, 2.5], False, "item 1: expected an integer, got 2.5"),
    ("ARRAY<INT64>", [[1]], False, "item 0: expected an integer, got an array of 1 item"),
    ("ARRAY<STRING>", ["a", 1, "b", 2], False, "2 items cannot be bound; item 1: expected a string, got 1"),
]


@pytest.mark.parametrize(("sql_type", "value", "coerce", "message"), REFUSED)
def test_bind_refuses_a_value_that_would_not_bind_and_says_why(sql_type, value, coerce, message):
    with pytest.raises(BindError) as caught:
        bind(sql_type, value, coerce=coerce)
    assert str(caught.value) == message


def test_an_array_names_every_bad_item_by_index():
    with pytest.raises(BindError) as caught:
        bind("ARRAY<INT64>", [1, "x", None, 2.5])
    assert caught.value.problems == (
        (("1",), 'item 1: expected an integer, got "x"'),
        (("2",), "item 2: null is not allowed in an array"),
        (("3",), "item 3: expected an integer, got 2.5"),
    )


def test_an_array_reports_at_most_ten_items_and_counts_the_rest():
    with pytest.raises(BindError) as caught:
        bind("ARRAY<BOOL>", ["x"] * 25)
    problems = caught.value.problems
    assert len(problems) == MAX_ITEM_ERRORS + 1
    assert problems[-1] == ((), "15 more items cannot be bound")


def test_a_long_string_is_shortened_in_messages():
    with pytest.raises(BindError) as caught:
        bind("INT64", "x" * 1000, coerce=True)
    assert str(caught.value) == 'expected an integer, got "' + "x" * 40 + '…"'


# --- types ------------------------------------------------------------------------------------

def test_sql_types_are_the_thirteen_of_the_design():
    assert SQL_TYPES == {"STRING", "INT64", "FLOAT64", "NUMERIC", "BOOL", "DATE", "TIMESTAMP", "GEOGRAPHY", "JSON",
                         "ARRAY<STRING>", "ARRAY<INT64>", "ARRAY<FLOAT64>", "ARRAY<BOOL>"}


@pytest.mark.parametrize(("written", "canonical"), [
    ("int64", "INT64"), (" Float64 ", "FLOAT64"), ("array<int64>", "ARRAY<INT64>"), ("ARRAY < bool >", "ARRAY<BOOL>"),
])
def test_normalise_type_accepts_any_case_and_whitespace(written, canonical):
    assert normalise_type(written) == canonical


@pytest.mark.parametrize("written", ["INT", "INTEGER", "ARRAY<DATE>", "ARRAY<ARRAY<INT64>>", "", 64])
def test_normalise_type_refuses_a_type_the_gateway_cannot_bind(written):
    with pytest.raises(ConfigError):
        normalise_type(written)


def test_bind_takes_the_type_in_any_case():
    assert bind("array<int64>", [1]) == [1]


# --- JSON Pointer -----------------------------------------------------------------------------

RFC6901_DOCUMENT = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4, "i\\j": 5,
                    'k"l': 6, " ": 7, "m~n": 8, "~1": 9, "nothing": None}


@pytest.mark.parametrize(("pointer", "found"), [
    ("", RFC6901_DOCUMENT),
    ("/foo", ["bar", "baz"]),
    ("/foo/0", "bar"),
    ("/", 0),
    ("/a~1b", 1),
    ("/c%d", 2),
    ("/e^f", 3),
    ("/g|h", 4),
    ("/i\\j", 5),
    ('/k"l', 6),
    ("/ ", 7),
    ("/m~0n", 8),
    ("/~01", 9),
    ("/nothing", None),
])
def test_resolve_pointer_follows_rfc_6901(pointer, found):
    assert resolve_pointer(RFC6901_DOCUMENT, pointer) == found


@pytest.mark.parametrize("pointer", ["/missing", "/foo/2", "/foo/-", "/foo/01", "/foo/bar", "/foo/0/x", "/a~1b/c",
                                     "/foo/99999999999999999999999"])
def test_resolve_pointer_gives_missing_when_nothing_is_there(pointer):
    assert resolve_pointer(RFC6901_DOCUMENT, pointer) is MISSING


@pytest.mark.parametrize("pointer", ["foo", "/a~2b", "/a~"])
def test_resolve_pointer_refuses_a_malformed_pointer(pointer):
    with pytest.raises(ValueError):
        resolve_pointer(RFC6901_DOCUMENT, pointer)


# --- specs from workflow definitions -----------------------------------------------------------

def test_from_definition_reads_every_key():
    spec = ParamSpec.from_definition("n", {"type": "int64", "from": "/clusters", "default": 2, "coerce": True,
                                           "description": "how many clusters"})
    assert spec == ParamSpec("n", "INT64", pointer="/clusters", default=2, coerce=True)


def test_from_definition_reads_a_header_parameter():
    spec = ParamSpec.from_definition("tenant", {"type": "STRING", "header": "X-Tenant"})
    assert (spec.header, spec.pointer, spec.value, spec.default) == ("X-Tenant", None, MISSING, MISSING)


def test_from_definition_reads_a_constant():
    assert ParamSpec.from_definition("mode", {"type": "STRING", "value": "fast"}).value == "fast"


BAD_DEFINITIONS = [
    ({"type": "INT", "from": "/n"}, "unknown SQL type 'INT'"),
    ({"from": "/n"}, "'type' is required"),
    ({"type": "INT64", "from": "/n", "defualt": 2}, "unknown key 'defualt'"),
    ({"type": "INT64"}, "needs exactly one of 'from', 'header' or 'value'"),
    ({"type": "INT64", "from": "/n", "header": "X-N", "coerce": True}, "got from and header"),
    ({"type": "INT64", "from": "n"}, "must be empty or start with '/'"),
    ({"type": "INT64", "from": "/a~2"}, "'~' not followed by 0 or 1"),
    ({"type": "INT64", "from": 3}, "'from' must be a JSON Pointer string, got 3"),
    ({"type": "INT64", "header": "X-N"}, 'set "coerce": true to bind it to INT64'),
    ({"type": "ARRAY<STRING>", "header": "X-N", "coerce": True}, "cannot fill ARRAY<STRING>"),
    ({"type": "STRING", "header": "X N"}, "'header' must be an HTTP header name"),
    ({"type": "INT64", "from": "/n", "default": 2.5}, "'default' cannot be bound to INT64: expected an integer, got 2.5"),
    ({"type": "INT64", "from": "/n", "default": None}, "'default' must not be null"),
    ({"type": "INT64", "value": None}, "'value' must not be null"),
    ({"type": "INT64", "value": 1, "default": 2}, "'value' is a constant: it cannot have a 'default'"),
    ({"type": "DATE", "value": "2023-02-29"}, "'value' cannot be bound to DATE"),
    ({"type": "INT64", "from": "/n", "coerce": "yes"}, "'coerce' must be true or false"),
]


@pytest.mark.parametrize(("definition", "problem"), BAD_DEFINITIONS)
def test_from_definition_refuses_a_bad_definition_naming_the_parameter(definition, problem):
    with pytest.raises(ConfigError) as caught:
        ParamSpec.from_definition("number_of_clusters", definition)
    assert str(caught.value).startswith("parameter 'number_of_clusters': ")
    assert problem in str(caught.value)


def test_from_definition_refuses_a_definition_that_is_not_an_object():
    with pytest.raises(ConfigError, match="parameter 'n': expected an object, got"):
        ParamSpec.from_definition("n", ["INT64"])


def test_a_parameter_name_must_be_a_sql_identifier():
    with pytest.raises(ConfigError, match="SQL identifier"):
        ParamSpec("2nd-value", "INT64", pointer="/n")


def test_a_default_is_bound_with_the_coerce_of_its_parameter():
    ParamSpec("n", "INT64", pointer="/n", default="2", coerce=True)
    with pytest.raises(ConfigError):
        ParamSpec("n", "INT64", pointer="/n", default="2")


def test_check_spec_accepts_a_spec_that_can_bind():
    assert check_spec(ParamSpec("when", "TIMESTAMP", pointer="/at", default="2024-01-01T00:00:00Z")) is None


# --- mapping a request -------------------------------------------------------------------------

STORE_CLUSTERS = {
    "number_of_clusters": ParamSpec("number_of_clusters", "INT64", pointer="/clusters", default=2),
    "buffer_radius": ParamSpec("buffer_radius", "FLOAT64", pointer="/radius_m"),
    "store_type": ParamSpec("store_type", "STRING", pointer="/store/type"),
}


def test_map_parameters_binds_the_design_example_in_the_order_of_the_specs():
    bound = map_parameters(STORE_CLUSTERS, {"store": {"type": "grocery"}, "radius_m": 250, "clusters": 3}, {})
    assert list(bound.items()) == [("number_of_clusters", 3), ("buffer_radius", 250.0), ("store_type", "grocery")]


def test_map_parameters_uses_the_default_when_the_value_is_absent():
    bound = map_parameters(STORE_CLUSTERS, {"radius_m": 1.5, "store": {"type": "x"}}, {})
    assert bound["number_of_clusters"] == 2


def test_map_parameters_treats_null_as_absent():
    bound = map_parameters(STORE_CLUSTERS, {"clusters": None, "radius_m": 1.5, "store": {"type": "x"}}, {})
    assert bound["number_of_clusters"] == 2


def test_map_parameters_reports_a_required_parameter_at_its_pointer():
    with pytest.raises(Unprocessable) as caught:
        map_parameters(STORE_CLUSTERS, {"radius_m": None, "store": {"type": "x"}}, {})
    assert caught.value.errors == [FieldError("/radius_m", "buffer_radius (FLOAT64) is required")]
    assert caught.value.detail == "1 parameter cannot be bound: buffer_radius"


def test_map_parameters_collects_every_problem():
    with pytest.raises(Unprocessable) as caught:
        map_parameters(STORE_CLUSTERS, {"clusters": 2.5, "radius_m": 10, "store": {"type": 7}}, {})
    assert caught.value.errors == [
        FieldError("/clusters", "number_of_clusters (INT64): expected an integer, got 2.5"),
        FieldError("/store/type", "store_type (STRING): expected a string, got 7"),
    ]
    assert caught.value.detail == "2 parameters cannot be bound: number_of_clusters, store_type"


def test_map_parameters_answers_422_problem_details():
    with pytest.raises(Unprocessable) as caught:
        map_parameters(STORE_CLUSTERS, {}, {})
    problem = caught.value.problem()
    assert problem["status"] == 422
    assert [e["path"] for e in problem["errors"]] == ["/radius_m", "/store/type"]


def test_map_parameters_reports_a_body_that_is_not_an_object_as_missing_values():
    with pytest.raises(Unprocessable) as caught:
        map_parameters(STORE_CLUSTERS, ["radius_m", 3], {})
    assert [e.path for e in caught.value.errors] == ["/radius_m", "/store/type"]


def test_map_parameters_names_the_bad_item_of_an_array_in_the_path():
    specs = {"ids": ParamSpec("ids", "ARRAY<INT64>", pointer="/ids")}
    with pytest.raises(Unprocessable) as caught:
        map_parameters(specs, {"ids": [1, 2, 3, 2.5]}, {})
    assert caught.value.errors == [FieldError("/ids/3", "ids (ARRAY<INT64>): item 3: expected an integer, got 2.5")]


def test_map_parameters_escapes_the_pointer_it_reports():
    specs = {"ids": ParamSpec("ids", "ARRAY<INT64>", pointer="/a~1b")}
    with pytest.raises(Unprocessable) as caught:
        map_parameters(specs, {"a/b": ["x"]}, {})
    assert caught.value.errors[0].path == "/a~1b/0"


def test_map_parameters_takes_a_header_parameter_from_the_request_headers():
    specs = {"tenant": ParamSpec("tenant", "STRING", header="X-Tenant")}
    assert map_parameters(specs, {}, Headers([("X-Tenant", "acme")])) == {"tenant": "acme"}


def test_map_parameters_finds_a_header_in_any_case_in_a_plain_mapping():
    specs = {"tenant": ParamSpec("tenant", "STRING", header="X-Tenant")}
    assert map_parameters(specs, {}, {"x-tenant": "acme"}) == {"tenant": "acme"}


def test_map_parameters_coerces_a_header_when_told_to():
    specs = {"attempt": ParamSpec("attempt", "INT64", header="X-Attempt", coerce=True)}
    assert map_parameters(specs, {}, {"X-Attempt": " 3 "}) == {"attempt": 3}


def test_map_parameters_reports_a_header_parameter_by_header_name():
    specs = {"attempt": ParamSpec("attempt", "INT64", header="X-Attempt", coerce=True),
             "tenant": ParamSpec("tenant", "STRING", header="X-Tenant")}
    with pytest.raises(Unprocessable) as caught:
        map_parameters(specs, {}, {"X-Attempt": "third"})
    assert caught.value.errors == [
        FieldError("header:X-Attempt", 'attempt (INT64): expected an integer, got "third"'),
        FieldError("header:X-Tenant", "tenant (STRING) is required"),
    ]


def test_map_parameters_uses_the_default_of_a_missing_header():
    specs = {"tenant": ParamSpec("tenant", "STRING", header="X-Tenant", default="public")}
    assert map_parameters(specs, {}, {}) == {"tenant": "public"}


def test_map_parameters_sends_a_constant_whatever_the_body_says():
    specs = {"mode": ParamSpec("mode", "STRING", value="fast"),
             "area": ParamSpec("area", "GEOGRAPHY", value=POLYGON)}
    assert map_parameters(specs, {"mode": "slow"}, {}) == {"mode": "fast", "area": POLYGON_TEXT}


def test_map_parameters_can_bind_the_whole_body_as_json():
    specs = {"payload": ParamSpec("payload", "JSON", pointer="")}
    assert map_parameters(specs, {"b": 1, "a": [True]}, {}) == {"payload": '{"b":1,"a":[true]}'}


def test_map_parameters_with_no_specs_binds_nothing():
    assert map_parameters({}, {"anything": 1}, {}) == {}
