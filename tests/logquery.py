"""The subset of the Logging query language the log-based metrics use, evaluated on log entries.

https://cloud.google.com/logging/docs/view/logging-query-language

    filter     := expression
    expression := term { [AND | OR] term }      (juxtaposition is AND; AND binds tighter than OR)
    term       := [NOT | -] ( "(" expression ")" | comparison )
    comparison := path OP value                 OP: = != =~ !~ > >= < <=
    path       := name { "." name }             e.g. jsonPayload.event, resource.labels.service_name
    value      := "quoted string" | bare word or number

A comparison on a field the entry does not have is false (NOT of it true), as in Cloud Logging.
`=~` / `!~` search the field's text with a regular expression (anchor with ^ and $ to match whole).
Also the extractors of a metric: `EXTRACT(path)` and `REGEXP_EXTRACT(path, "regex with one group")`.
Anything outside this subset is refused with a ValueError, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r'''\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>=~|!~|!=|>=|<=|=|>|<)|(?P<paren>[()])
                        |(?P<word>[A-Za-z0-9_.@/\-]+))''', re.VERBOSE)
_OPERATORS = {"=", "!=", "=~", "!~", ">", ">=", "<", "<="}
_MISSING = object()


@dataclass(frozen=True)
class Comparison:
    """One `path OP value` clause."""

    path: tuple[str, ...]
    op: str
    value: str

    def matches(self, entry: dict[str, Any]) -> bool:
        found = field(entry, self.path)
        if found is _MISSING or isinstance(found, dict | list):
            return False
        text = _text(found)
        if self.op == "=":
            return text == self.value or _numbers_equal(found, self.value)
        if self.op == "!=":
            return not (text == self.value or _numbers_equal(found, self.value))
        if self.op == "=~":
            return re.search(self.value, text) is not None
        if self.op == "!~":
            return re.search(self.value, text) is None
        try:
            left, right = float(found), float(self.value)
        except (TypeError, ValueError):
            left, right = text, self.value
        return {">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right}[self.op]


@dataclass(frozen=True)
class Not:
    inner: Any

    def matches(self, entry: dict[str, Any]) -> bool:
        return not self.inner.matches(entry)


@dataclass(frozen=True)
class All:
    parts: tuple[Any, ...]

    def matches(self, entry: dict[str, Any]) -> bool:
        return all(part.matches(entry) for part in self.parts)


@dataclass(frozen=True)
class Any_:
    parts: tuple[Any, ...]

    def matches(self, entry: dict[str, Any]) -> bool:
        return any(part.matches(entry) for part in self.parts)


def parse(text: str) -> Any:
    """The filter as a tree of Comparison, Not, All and Any_ nodes; ValueError outside the subset."""
    tokens = _tokens(text)
    tree, rest = _expression(tokens)
    if rest:
        raise ValueError(f"unexpected {rest[0][1]!r} in filter")
    return tree


def comparisons(tree: Any) -> list[Comparison]:
    """Every comparison clause of a parsed filter, in order."""
    if isinstance(tree, Comparison):
        return [tree]
    if isinstance(tree, Not):
        return comparisons(tree.inner)
    return [found for part in tree.parts for found in comparisons(part)]


def matches(text: str, entry: dict[str, Any]) -> bool:
    return parse(text).matches(entry)


def field(entry: dict[str, Any], path: tuple[str, ...] | str) -> Any:
    """The value at a dotted path of an entry, or _MISSING."""
    value: Any = entry
    for name in path.split(".") if isinstance(path, str) else path:
        if not isinstance(value, dict) or name not in value:
            return _MISSING
        value = value[name]
    return value


def has_field(entry: dict[str, Any], path: str) -> bool:
    return field(entry, path) is not _MISSING


_EXTRACT = re.compile(r'^EXTRACT\(\s*([A-Za-z0-9_.]+)\s*\)$')
_REGEXP_EXTRACT = re.compile(r'^REGEXP_EXTRACT\(\s*([A-Za-z0-9_.]+)\s*,\s*"((?:[^"\\]|\\.)*)"\s*\)$')


def extractor(text: str) -> tuple[str, str | None]:
    """(path, regex or None) of an EXTRACT or REGEXP_EXTRACT; ValueError for anything else."""
    match = _EXTRACT.match(text.strip())
    if match:
        return match.group(1), None
    match = _REGEXP_EXTRACT.match(text.strip())
    if match:
        regex = _unquote(match.group(2))
        if re.compile(regex).groups != 1:
            raise ValueError(f"REGEXP_EXTRACT needs exactly one capture group: {text}")
        return match.group(1), regex
    raise ValueError(f"not an extractor this evaluator knows: {text}")


def extract(text: str, entry: dict[str, Any]) -> str | None:
    """What an extractor takes from an entry: the field's text, or the regex's group; None if absent."""
    path, regex = extractor(text)
    found = field(entry, path)
    if found is _MISSING or found is None:
        return None
    if regex is None:
        return _text(found)
    match = re.search(regex, _text(found))
    return match.group(1) if match else None


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read the filter at {text[position:position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _expression(tokens: list) -> tuple[Any, list]:
    alternatives, rest = [], tokens
    while True:
        conjunction, rest = _conjunction(rest)
        alternatives.append(conjunction)
        if rest and rest[0] == ("word", "OR"):
            rest = rest[1:]
            continue
        break
    return (alternatives[0] if len(alternatives) == 1 else Any_(tuple(alternatives))), rest


def _conjunction(tokens: list) -> tuple[Any, list]:
    parts, rest = [], tokens
    while rest and rest[0] != ("paren", ")") and rest[0] != ("word", "OR"):
        if rest[0] == ("word", "AND"):
            rest = rest[1:]
            continue
        term, rest = _term(rest)
        parts.append(term)
    if not parts:
        raise ValueError("an empty expression")
    return (parts[0] if len(parts) == 1 else All(tuple(parts))), rest


def _term(tokens: list) -> tuple[Any, list]:
    kind, text = tokens[0]
    if (kind, text) in (("word", "NOT"), ("word", "-")):
        inner, rest = _term(tokens[1:])
        return Not(inner), rest
    if (kind, text) == ("paren", "("):
        inner, rest = _expression(tokens[1:])
        if not rest or rest[0] != ("paren", ")"):
            raise ValueError("a parenthesis is not closed")
        return inner, rest[1:]
    if kind != "word" or len(tokens) < 3 or tokens[1][0] != "op":
        raise ValueError(f"expected a comparison at {text!r} (bare words are outside this subset)")
    value_kind, value = tokens[2]
    if value_kind not in ("string", "word"):
        raise ValueError(f"expected a value after {text} {tokens[1][1]}")
    literal = _unquote(value[1:-1]) if value_kind == "string" else value
    return Comparison(tuple(text.split(".")), tokens[1][1], literal), tokens[3:]


def _unquote(body: str) -> str:
    """A quoted string's text: `\\"` is a quote and `\\\\` a backslash; other escapes are kept as written."""
    return re.sub(r'\\([\\"])', r"\1", body)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _numbers_equal(found: Any, literal: str) -> bool:
    if isinstance(found, bool) or not isinstance(found, int | float):
        return False
    try:
        return float(found) == float(literal)
    except ValueError:
        return False
