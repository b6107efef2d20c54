"""Reading a request's body within a size limit, and decoding strict JSON (RFC 8259): what the webhook,
the request messages and the CLI read a payload with. No HTTP routing here; pure but for the stream read."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.errors import MalformedRequest, PayloadTooLarge

if TYPE_CHECKING:
    import flask

_BODY_READ = "gateway.body_read"  # set in the WSGI environ once the body has been read to its end


def body_was_read(request: flask.Request) -> bool:
    """Whether `read_body` read this request's body to its end."""
    return bool(request.environ.get(_BODY_READ))


def read_body(request: flask.Request, limit: int) -> bytes:
    """The raw body, refused with 413 before buffering when it is (or turns out) over `limit` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit} bytes")
    stream = request.stream
    chunks, size = [], 0
    if length:  # the common case: one read of what was announced (the stream ends there)
        chunks.append(_read(stream, length))
        size = len(chunks[0])
        if size == length:  # the server ends the stream at Content-Length: nothing can follow
            request.environ[_BODY_READ] = True
            return chunks[0]
    while True:
        chunk = _read(stream, min(65536, limit + 1 - size))
        if not chunk:
            request.environ[_BODY_READ] = True
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    return b"".join(chunks)


def _read(stream: Any, size: int) -> bytes:
    try:
        return stream.read(size)
    except Exception as exc:  # the server could not frame the body (bad chunk size, early end): bad input
        raise MalformedRequest(f"the body could not be read ({type(exc).__name__})") from None


def parse_json(body: bytes) -> Any:
    """Strict JSON (RFC 8259): UTF-8, no BOM, no NaN/Infinity, no duplicate keys, bounded depth."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise MalformedRequest("body starts with a byte order mark; send plain UTF-8 JSON")
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                          parse_float=_number)
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"body is not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise MalformedRequest("body is nested too deeply") from None
    except ValueError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {duplicate!r}")
    return result


# From 2^53 on, not every integer is a float: 9007199254740993.0 would read as ...992.0. An integer
# written with a fraction or an exponent in that range is read exactly instead (it is an integer
# either way, for JSON Schema and for the binder); from 2^64 on no INT64 can hold it, a float is fine.
_EXACT_FLOATS_BELOW = 2.0**53
_NO_INT64_FROM = 2.0**64


def _number(text: str) -> float | int:
    """A JSON number with a fraction or an exponent: a float, or the exact integer (see above)."""
    value = float(text)
    if _EXACT_FLOATS_BELOW <= abs(value) < _NO_INT64_FROM and value.is_integer():
        exact = Decimal(text)
        if exact == exact.to_integral_value():
            return int(exact)
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
