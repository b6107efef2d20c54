"""Typed query parameters: where each value comes from, checked when a workflow loads and mapped per request.

A workflow's `parameters` (README, "Workflow files") give, for each `@name` of the CALL, the SQL type the
procedure expects and where the value comes from: a JSON Pointer into the body (`from`), a
request header, or a constant (`value`). `map_parameters` binds every parameter of a request
(each value by `gateway.sqltypes.bind`, which also tells how each type is sent) and reports every
problem at once. Pure functions of their inputs: no I/O.
JSON null means "absent" for every type: the default applies, or the parameter is required.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway import pointer as json_pointer
from gateway.errors import ConfigError, FieldError, Unprocessable
from gateway.sqltypes import SQL_TYPES, BindError, Location, bind, describe, normalise_type

# The keys a `parameters.<name>` entry may have (schemas/workflow.schema.json says the same).
DEFINITION_KEYS: Final = frozenset({"type", "from", "header", "value", "default", "coerce", "description", "position"})


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final[Any] = _Missing.MISSING
"""Marks "no value": an absent `value`/`default`, or a pointer or header that found nothing."""


@dataclass(frozen=True)
class ParamSpec:
    """Where one `@name` of the CALL takes its value from, and the SQL type it is bound to."""

    name: str
    type: str
    pointer: str | None = None
    header: str | None = None
    value: Any = MISSING
    default: Any = MISSING
    coerce: bool = False
    declared: str | None = None  # the type as the warehouse names it ("NUMBER(38,0)"), when not BigQuery's own
    position: int | None = None  # the placeholder number (:1, $1) of a positional warehouse

    def __post_init__(self) -> None:
        # A spec that cannot bind is not representable: the type is normalised and the rest checked here.
        try:
            object.__setattr__(self, "type", normalise_type(self.type))
        except ConfigError as exc:
            raise ConfigError(f"parameter {self.name!r}: {exc}") from None
        check_spec(self)

    @classmethod
    def from_definition(cls, name: str, definition: Mapping[str, Any], *, binds_as: str | None = None) -> ParamSpec:
        """The spec of a workflow file's `parameters.<name>` entry; ConfigError naming the problem.
        `binds_as` is the binding type of a warehouse's own type name (`gateway.warehouses.binding_type`)."""
        if not isinstance(definition, Mapping):
            raise ConfigError(f"parameter {name!r}: expected an object, got {describe(definition)}")
        unknown = sorted(set(definition) - DEFINITION_KEYS)
        if unknown:
            raise ConfigError(f"parameter {name!r}: unknown key {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(sorted(DEFINITION_KEYS))}")
        if "type" not in definition:
            raise ConfigError(f"parameter {name!r}: 'type' is required")
        declared = definition["type"] if binds_as is not None and binds_as != definition["type"] else None
        return cls(name=name, type=binds_as or definition["type"], pointer=definition.get("from"),
                   header=definition.get("header"), value=definition.get("value", MISSING),
                   default=definition.get("default", MISSING), coerce=definition.get("coerce", False),
                   declared=declared, position=definition.get("position"))

    @property
    def label(self) -> str:
        """How messages name this parameter: `number_of_clusters (INT64)`, `n (NUMBER(38,0))`."""
        return f"{self.name} ({self.declared or self.type})"

    @property
    def sql_type(self) -> str:
        """The type in the warehouse's own words."""
        return self.declared or self.type

    @property
    def source(self) -> dict[str, Any]:
        """Its type and where its value comes from, as a delivery records them: {"type", and "from", "header"
        or "value"}."""
        where = (("from", self.pointer) if self.pointer is not None else ("header", self.header)
                 if self.header is not None else ("value", self.value))
        return {"type": self.sql_type, where[0]: where[1]}


# --- checking a spec (load time) -------------------------------------------------------------

_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
# A header value is a string: these types can only take one with "coerce": true.
_NEEDS_COERCE_FROM_TEXT = frozenset({"INT64", "FLOAT64", "BOOL", "GEOGRAPHY"})


def check_spec(spec: ParamSpec) -> None:
    """Raise ConfigError naming the parameter if the spec could never bind (source, constant, default)."""
    problem = _spec_problem(spec)
    if problem:
        raise ConfigError(f"parameter {spec.name!r}: {problem}")


def _spec_problem(spec: ParamSpec) -> str | None:
    if not isinstance(spec.name, str) or not _PARAMETER_NAME.fullmatch(spec.name):
        return "the name must be a SQL identifier (letters, digits, underscore)"
    if spec.type not in SQL_TYPES:
        return f"unknown SQL type {spec.type!r}"
    if not isinstance(spec.coerce, bool):
        return "'coerce' must be true or false"
    sources = [key for key, given in (("from", spec.pointer is not None), ("header", spec.header is not None),
                                      ("value", spec.value is not MISSING)) if given]
    if len(sources) != 1:
        return "needs exactly one of 'from', 'header' or 'value'" + (f", got {' and '.join(sources)}" if sources else "")
    return _source_problem(spec) or _constant_problem(spec)


def _source_problem(spec: ParamSpec) -> str | None:
    if spec.pointer is not None:
        return _pointer_problem(spec.pointer)
    if spec.header is not None:
        return _header_problem(spec)
    if spec.default is not MISSING:
        return "'value' is a constant: it cannot have a 'default'"
    return None


def _pointer_problem(pointer: Any) -> str | None:
    if not isinstance(pointer, str):
        return f"'from' must be a JSON Pointer string, got {describe(pointer)}"
    try:
        json_pointer.tokens(pointer)
    except ValueError as exc:
        return f"'from': {exc}"
    return None


def _header_problem(spec: ParamSpec) -> str | None:
    if not isinstance(spec.header, str) or not _HEADER_NAME.fullmatch(spec.header):
        return f"'header' must be an HTTP header name, got {describe(spec.header)}"
    if spec.type.startswith("ARRAY<"):
        return f"a header carries one string; it cannot fill {spec.type}"
    if spec.type in _NEEDS_COERCE_FROM_TEXT and not spec.coerce:
        return f'a header carries a string; set "coerce": true to bind it to {spec.type}'
    return None


def _constant_problem(spec: ParamSpec) -> str | None:
    for key, constant in (("value", spec.value), ("default", spec.default)):
        if constant is None:
            hint = "" if key == "value" else "; leave it out to make the parameter required"
            return f"'{key}' must not be null (null means absent){hint}"
        if constant is not MISSING:
            try:
                bind(spec.type, constant, coerce=spec.coerce)
            except BindError as exc:
                return f"'{key}' cannot be bound to {spec.type}: {exc}"
    return None


# --- mapping a request (request time) --------------------------------------------------------

def map_parameters(specs: Mapping[str, ParamSpec], body: Any, headers: Mapping[str, str]) -> dict[str, Any]:
    """The bound `queryParameters`, in the specs' order; Unprocessable listing every problem."""
    bound: dict[str, Any] = {}
    errors: list[FieldError] = []
    failed: list[str] = []
    for name, spec in specs.items():
        raw = _raw_value(spec, body, headers)
        if raw is MISSING and spec.default is MISSING:
            errors.append(FieldError(_source(spec), f"{spec.label} is required"))
            failed.append(spec.name)
            continue
        try:
            bound[name] = bind(spec.type, spec.default if raw is MISSING else raw, coerce=spec.coerce)
        except BindError as exc:
            errors.extend(FieldError(_source(spec, at), f"{spec.label}: {message}") for at, message in exc.problems)
            failed.append(spec.name)
    if failed:
        noun = "parameter" if len(failed) == 1 else "parameters"
        raise Unprocessable(f"{len(failed)} {noun} cannot be bound: {', '.join(failed)}", errors=errors)
    return bound


def _raw_value(spec: ParamSpec, body: Any, headers: Mapping[str, str]) -> Any:
    if spec.value is not MISSING:
        return spec.value
    if spec.pointer is not None:
        found = resolve_pointer(body, spec.pointer)
    else:
        found = _header_value(headers, spec.header or "")
    return MISSING if found is None else found  # JSON null counts as absent


def _header_value(headers: Mapping[str, str], name: str) -> Any:
    # Flask's headers are case-insensitive; a plain dict (tests, the CLI) may not be.
    found = headers.get(name)
    if found is None:
        wanted = name.lower()
        found = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == wanted), None)
    return MISSING if found is None else found


def _source(spec: ParamSpec, at: Location = ()) -> str:
    """The FieldError path: the JSON Pointer of the value (and of the item inside it), or `header:<Name>`."""
    if spec.pointer is not None:
        return json_pointer.join(at, spec.pointer)
    if spec.header is not None:
        return f"header:{spec.header}"
    return f"value:{spec.name}"


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value `pointer` selects in `document`, or MISSING; ValueError if the pointer is malformed."""
    return json_pointer.resolve(document, pointer, MISSING)
