"""Firestore's document calls over its REST API (https://cloud.google.com/firestore/docs/reference/rest):
create, get, a guarded update and a guarded delete of one document, over urllib3.

The Firestore ledger's transitions need nothing else, and google-cloud-firestore takes 0.35 s to
import (grpc, protobuf, api-core): longer than a bare function's whole cold start, on the first
request of every new instance. These calls need only urllib3 (already loaded for CARTO) and the
standard library. Against the emulator when FIRESTORE_EMULATOR_HOST is set (as the client library
does, with its `Bearer owner` token), else firestore.googleapis.com with the instance's default
credentials.

Values are encoded as the API's typed JSON (`stringValue`, `doubleValue`, …); the ledger's documents
hold only strings, numbers, booleans, nulls and one timestamp. Update times stay the API's RFC 3339
text, nanoseconds included, so a precondition names exactly the version that was read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from gateway.outbound import GoogleToken, Http, NeverConnected, NoAnswer

SCOPE = "https://www.googleapis.com/auth/datastore"
_RETRIED_STATUSES = {429, 500, 502, 503, 504}


class Unavailable(Exception):
    """Firestore did not answer, or answered "try later" until the time ran out."""


class AlreadyExists(Exception):
    """`create` of a document that exists."""


class Conflict(Exception):
    """The document changed since the update time a write was guarded by, or is gone."""


class DocumentsRest:
    """One collection's documents over the REST API: `create`, `get`, `update`, `delete`."""

    def __init__(self, project: str, database: str | None, collection: str, *, http: Http | None = None,
                 timeout_s: float = 10.0, sleep: Callable[[float], None] = time.sleep):
        emulator = os.environ.get("FIRESTORE_EMULATOR_HOST")
        self._base = f"http://{emulator}/v1/" if emulator else "https://firestore.googleapis.com/v1/"
        self._emulator = bool(emulator)
        self._parent = f"projects/{project}/databases/{database or '(default)'}/documents"
        self._collection = collection
        self._http, self._timeout_s, self._sleep = http or Http(pool_size=16), timeout_s, sleep
        self._token = GoogleToken(SCOPE, "Firestore", Unavailable)

    def create(self, doc_id: str, fields: Mapping[str, Any]) -> str:
        """Create the document; its update time. AlreadyExists when it exists."""
        query = urlencode({"documentId": doc_id})
        answer = self._call("POST", f"{self._parent}/{self._collection}?{query}", {"fields": encode_fields(fields)})
        return answer["updateTime"]

    def get(self, doc_id: str) -> tuple[dict[str, Any], str] | None:
        """(fields, update time) of the document, or None."""
        try:
            answer = self._call("GET", self._name(doc_id), None)
        except Conflict:  # NOT_FOUND
            return None
        return decode_fields(answer.get("fields", {})), answer["updateTime"]

    def update(self, doc_id: str, fields: Mapping[str, Any], removed: tuple[str, ...], update_time: str) -> str:
        """Set `fields` and remove `removed` if the document is still at `update_time`; the new update time.
        Conflict when it is not (or is gone)."""
        return self._commit({
            "update": {"name": self._name(doc_id), "fields": encode_fields(fields)},
            "updateMask": {"fieldPaths": [_field_path(name) for name in (*fields, *removed)]},
            "currentDocument": {"updateTime": update_time}})

    def delete(self, doc_id: str, update_time: str) -> None:
        """Delete the document if it is still at `update_time`; Conflict when it is not (or is gone)."""
        self._commit({"delete": self._name(doc_id), "currentDocument": {"updateTime": update_time}})

    def read(self, collection: str, doc_id: str) -> tuple[dict[str, Any], str] | None:
        """`get` in another collection of the same database (the admission lines beside the deliveries)."""
        try:
            answer = self._call("GET", f"{self._parent}/{collection}/{doc_id}", None)
        except Conflict:  # NOT_FOUND
            return None
        return decode_fields(answer.get("fields", {})), answer["updateTime"]

    def put(self, collection: str, doc_id: str, fields: Mapping[str, Any], update_time: str | None) -> dict[str, Any]:
        """A write (for `commit`) replacing the whole document if it is still at `update_time`, or creating it
        if `update_time` is None and it does not exist."""
        precondition = {"updateTime": update_time} if update_time else {"exists": False}
        return {"update": {"name": f"{self._parent}/{collection}/{doc_id}", "fields": encode_fields(fields)},
                "currentDocument": precondition}

    def drop(self, collection: str, doc_id: str, update_time: str) -> dict[str, Any]:
        """A write (for `commit`) deleting the document if it is still at `update_time`."""
        return {"delete": f"{self._parent}/{collection}/{doc_id}", "currentDocument": {"updateTime": update_time}}

    def commit(self, writes: list[dict[str, Any]]) -> None:
        """Several writes, all or none; Conflict when a precondition fails (another writer came first)."""
        try:
            self._call("POST", f"{self._parent}:commit", {"writes": writes})
        except AlreadyExists:
            raise Conflict("ALREADY_EXISTS") from None

    def _commit(self, write: dict[str, Any]) -> str:
        """One write through `documents:commit` (whose body carries the precondition as a message); its update time."""
        answer = self._call("POST", f"{self._parent}:commit", {"writes": [write]})
        return answer["writeResults"][0].get("updateTime") or answer["commitTime"]

    def _name(self, doc_id: str) -> str:
        return f"{self._parent}/{self._collection}/{doc_id}"

    def _call(self, method: str, path: str, body: Any) -> dict[str, Any]:
        url, data = self._base + path, None if body is None else json.dumps(body).encode()
        deadline, wait = time.monotonic() + self._timeout_s, 0.1
        while True:
            headers = {"Content-Type": "application/json", **self._authorization(url)}
            try:
                answer = self._http.request(method, url, headers=headers, body=data, timeout=(5.0, self._timeout_s))
            except NeverConnected as exc:
                failure = str(exc)
            except NoAnswer as exc:  # a write may have landed: the caller's next read decides
                raise Unavailable(f"Firestore did not answer ({exc})") from None
            else:
                if answer.status == 200:
                    return answer.json() if answer.data else {}
                status = _status(answer.data)
                if answer.status == 409 and status == "ALREADY_EXISTS":
                    raise AlreadyExists(path)
                if answer.status == 404 or status in ("FAILED_PRECONDITION", "NOT_FOUND"):
                    raise Conflict(status or str(answer.status))
                if answer.status not in _RETRIED_STATUSES and status != "ABORTED":
                    raise RuntimeError(f"Firestore refused {method} ({answer.status} {status})")
                failure = f"HTTP {answer.status} {status}"
            if time.monotonic() + wait >= deadline:
                raise Unavailable(f"Firestore is unavailable ({failure})")
            self._sleep(wait)
            wait = min(1.0, wait * 2)

    def _authorization(self, url: str) -> dict[str, str]:
        return {"Authorization": "Bearer owner"} if self._emulator else self._token.headers(url)


def _status(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"]["status"])
    except (ValueError, KeyError, TypeError):
        return ""


def _field_path(name: str) -> str:
    """A top-level field's path in an update mask (simple names go bare, others in backquotes)."""
    if name.replace("_", "a").isalnum() and not name[0].isdigit():
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def encode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: encode(value) for name, value in fields.items()}


def encode(value: Any) -> dict[str, Any]:
    """One value as the API's typed JSON."""
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, datetime):
        return {"timestampValue": value.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [encode(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"mapValue": {"fields": encode_fields(value)}}
    raise TypeError(f"cannot store a {type(value).__name__} in Firestore")


def decode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: decode(value) for name, value in fields.items()}


def decode(value: Mapping[str, Any]) -> Any:
    """One typed JSON value as Python (a timestamp as an aware datetime, to the microsecond)."""
    kind, inner = next(iter(value.items()))
    if kind == "integerValue":
        return int(inner)
    if kind == "doubleValue":
        return float(inner)
    if kind == "timestampValue":
        return parse_time(inner)
    if kind == "arrayValue":
        return [decode(v) for v in inner.get("values", [])]
    if kind == "mapValue":
        return decode_fields(inner.get("fields", {}))
    return inner  # stringValue, booleanValue, nullValue (None)


def parse_time(text: str) -> datetime:
    """RFC 3339 text (up to nanoseconds, `Z`) as an aware datetime to the microsecond."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(microsecond=micros, tzinfo=UTC)
