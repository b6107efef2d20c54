"""Hostile and broken requests against the real `webhook` server: each gets its documented 4xx as
problem+json (README "HTTP surface"), the server process stays up, and its memory stays bounded.

The server is functions-framework serving main.py's `webhook` (gunicorn, one worker, its threads) in
its own process on loopback, as `make dev` and Cloud Functions run it; the local CARTO job API runs in
this process. Most cases are signed correctly, so that what is refused is the body itself and not the
signature; requests that `requests` would refuse to send (duplicate headers, lying Content-Length,
bodies that trickle in) go over raw sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.local import emulators
from gateway.local.sandbox import serve
from tests.constants import CARTO_TOKEN, DEMO_SECRETS, ROOT, SECRET
from tests.stackutil import signed_headers

pytestmark = pytest.mark.stack  # starts the local stack, an emulator or other processes

LIMIT = 1024 * 1024  # GATEWAY_MAX_BODY_BYTES's default, which the server runs with
VALID = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
# A test-only workflow whose payload schema has a rule per array item and whose parameters take any JSON.
ADVERSARIAL_WORKFLOW = {
    "description": "Test only: per-item array rules, a JSON parameter and a geometry, for hostile bodies.",
    "connection": "carto_dw",
    "query": "CALL `test-project.workflows_temp.adversarial`(@tags,@doc,@area)",
    "parameters": {
        "tags": {"type": "ARRAY<STRING>", "from": "/tags", "default": []},
        "doc": {"type": "JSON", "from": "/doc", "default": {}},
        "area": {"type": "GEOGRAPHY", "from": "/area", "default": {"type": "Point", "coordinates": [0, 0]}},
    },
    "payload": {"type": "object",
                "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 10}}}},
    "auth": [{"scheme": "standard-webhooks", "secrets": "env:STORE_CLUSTERS_SECRET"}],
}


@dataclass
class Server:
    """The running `webhook` server: where it listens and which process does the work."""

    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pid(self) -> int:
        """gunicorn's worker (the process that parses bodies), or the server itself if it has none."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0]) if children else self.process.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(test_schemas, tmp_path_factory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("adversarial")
    schemas = state / "schemas"
    shutil.copytree(test_schemas, schemas)
    (schemas / "workflows" / "adversarial.json").write_text(json.dumps(ADVERSARIAL_WORKFLOW))
    sandbox = serve(token=CARTO_TOKEN)
    port = emulators.free_port()
    env = {**os.environ, "GATEWAY_SCHEMAS_DIR": str(schemas), "CARTO_API_BASE_URL": sandbox.url,
           "CARTO_API_TOKEN": CARTO_TOKEN, **DEMO_SECRETS, "GOOGLE_CLOUD_PROJECT": "test-project",
           "GATEWAY_LEDGER": f"sqlite:///{state / 'ledger.sqlite3'}",
           # Nothing here is accepted, so nothing is published: a dead emulator address makes sure of it.
           "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{emulators.free_port()}"}
    env.pop("GATEWAY_MAX_BODY_BYTES", None)
    log = open(state / "webhook.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "webhook", "--source", str(ROOT / "main.py"),
         "--signature-type", "http", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        emulators.wait_for_port(port, 60, process)
        running = Server(port, process)
        _warm_up(running)
        yield running
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        sandbox.stop()


def _warm_up(server: Server) -> None:
    """Build the instance's App and take every code path once, so the baseline memory is the steady one."""
    assert validate(server, VALID).status_code == 200
    assert post(server, {"radius_m": "x"}).status_code == 422


@pytest.fixture(scope="module")
def baseline(server) -> tuple[int, int]:
    """(worker pid, resident memory) once warm: the Pub/Sub client loads on a background thread when the
    App is built (gateway/events.py), so wait until the resident memory stops growing."""
    previous, deadline = server.rss_bytes(), time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = server.rss_bytes()
        if current - previous < 1 << 20:
            break
        previous = current
    return server.worker_pid(), server.rss_bytes()


@pytest.fixture(autouse=True)
def still_up(server, baseline) -> Iterator[None]:
    """After every case: the same worker process answers /healthz (nothing crashed or was restarted)."""
    yield
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert server.worker_pid() == baseline[0], "the worker process was replaced"


def post(server: Server, payload: Any = None, *, body: bytes | None = None, workflow: str = "store-clusters",
         suffix: str = "", headers: dict[str, str] | None = None) -> requests.Response:
    data = body if body is not None else json.dumps(payload).encode()
    signed = {**signed_headers(SECRET, data), **(headers or {})}
    return requests.post(f"{server.url}/hooks/{workflow}{suffix}", data=data, headers=signed, timeout=30)


def validate(server: Server, payload: Any = None, **kwargs: Any) -> requests.Response:
    return post(server, payload, suffix="/validate", **kwargs)


def assert_problem(answer: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """A problem+json answer (RFC 9457) with this status; returns its body."""
    assert answer.status_code == status, answer.text[:500]
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status and problem["title"] and problem["type"]
    if code is not None:
        assert problem["code"] == code
    return problem


# --- bodies that are not the JSON they claim to be ---------------------------------------------

def _with(extra: str) -> bytes:
    return ('{"radius_m": 500, "store": {"type": "x"}, "extra": ' + extra + "}").encode()


MALFORMED = {
    "arrays-nested-10000-deep": _with("[" * 10_000 + "]" * 10_000),
    "objects-nested-10000-deep": _with('{"a":' * 10_000 + "1" + "}" * 10_000),
    "duplicate-keys": b'{"radius_m": 500, "radius_m": 1, "store": {"type": "x"}}',
    "duplicate-keys-nested": b'{"radius_m": 500, "store": {"type": "x", "type": "y"}}',
    "nan": _with("NaN"),
    "infinity": _with("Infinity"),
    "minus-infinity": _with("-Infinity"),
    "invalid-utf8": b'{"radius_m": 500, "store": {"type": "\xff\xfe"}}',
    "utf8-bom": b"\xef\xbb\xbf" + json.dumps(VALID).encode(),
    "utf16": json.dumps(VALID).encode("utf-16"),
    "integer-of-5000-digits": _with("9" * 5000),
    "empty": b"",
    "truncated": json.dumps(VALID).encode()[:-1],
    "trailing-garbage": json.dumps(VALID).encode() + b" x",
    "single-quotes": b"{'radius_m': 500}",
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_body_that_is_not_strict_json_is_a_400(server, case):
    body = MALFORMED[case]

    answer = post(server, body=body)

    assert_problem(answer, 400, "malformed-json")


def test_the_invalid_utf8_case_really_is_invalid_utf8():
    with pytest.raises(UnicodeDecodeError):
        MALFORMED["invalid-utf8"].decode("utf-8")


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_a_number_too_large_for_a_double_is_refused_not_sent_as_infinity(server, literal):
    answers = [post(server, body=_with(literal).replace(b'"radius_m": 500', b'"radius_m": ' + literal.encode())),
               validate(server, body=b'{"doc": ' + literal.encode() + b"}", workflow="adversarial")]

    for answer in answers:
        assert answer.status_code in (400, 422), answer.text[:300]
        assert answer.headers["Content-Type"] == "application/problem+json"


def test_nesting_just_under_the_parser_limit_is_never_a_500(server):
    for depth in (200, 500, 800, 900, 950, 980, 990, 995, 999):
        doc = "[" * depth + "]" * depth
        answer = validate(server, body=('{"doc": ' + doc + "}").encode(), workflow="adversarial")

        assert answer.status_code in (200, 400, 422), (depth, answer.status_code, answer.text[:300])


def test_a_lone_surrogate_is_a_422_naming_the_field(server):
    answer = validate(server, body=b'{"radius_m": 500, "store": {"type": "\\ud800"}}')

    problem = assert_problem(answer, 422)
    assert any(e["path"] == "/store/type" for e in problem["errors"])


@pytest.mark.parametrize("payload", [None, [], "text", 42, True])
def test_a_body_that_is_json_but_not_an_object_is_a_422(server, payload):
    assert_problem(post(server, body=json.dumps(payload).encode()), 422)


# --- huge arrays within and over the limit ----------------------------------------------------

def _array_body(count: int, item: str = "0", key: str = "extra", base: str = '"radius_m": 500, "store": {"type": "x"}') -> bytes:
    return ("{" + base + f', "{key}": [' + ",".join([item] * count) + "]}").encode()


def test_a_huge_array_just_within_the_limit_is_accepted(server):
    body = _array_body(LIMIT // 2 - 100)
    assert len(body) <= LIMIT

    answer = validate(server, body=body)

    assert answer.status_code == 200, answer.text[:300]


def test_a_huge_array_where_a_number_belongs_is_one_small_422(server):
    body = _array_body(LIMIT // 2 - 100, key="clusters")

    answer = validate(server, body=body)

    problem = assert_problem(answer, 422)
    assert {e["path"] for e in problem["errors"]} - {"/"} == {"/clusters"}
    assert len(answer.content) < 10_000


def test_a_huge_array_of_bad_items_is_a_bounded_422(server):
    body = _array_body(LIMIT // 2 - 100, key="tags", base='"doc": 1')

    answer = validate(server, body=body, workflow="adversarial")

    problem = assert_problem(answer, 422)
    assert {e["path"].split("/")[1] for e in problem["errors"] if e["path"] != "/"} == {"tags"}
    assert len(answer.content) < 64 * 1024, f"{len(problem['errors'])} errors, {len(answer.content)} bytes"


def test_a_huge_array_over_the_limit_is_a_413(server):
    body = _array_body(LIMIT // 2 + 100)
    assert len(body) > LIMIT

    assert_problem(post(server, body=body), 413, "payload-too-large")


def test_the_huge_cases_leave_memory_bounded(server, baseline):
    # Each body is at most 1 MiB; parsed, the worst of them (a quarter million objects) takes some 30 MB
    # while it is handled. Three times the warm baseline (~50 MB) leaves room for that and for the
    # allocator keeping freed arenas per thread, and still catches a leak, a buffered over-limit body
    # (functions-framework's `read_request` hook buffered all 64 MiB of one) or a validator building
    # an error per item (jsonschema-rs's `evaluate` took 270 MB for the bad-items body).
    for _ in range(3):
        validate(server, body=_array_body(LIMIT // 4 - 100, item="{}"))
        validate(server, body=_array_body(LIMIT // 2 - 100))
        validate(server, body=_array_body(LIMIT // 2 - 100, key="tags", base='"doc": 1'), workflow="adversarial")
        validate(server, body=_with("[" * (LIMIT // 2 - 100) + "]" * (LIMIT // 2 - 100)))
        _stream_over_limit(server, declared=64 * LIMIT)
        _stream_chunked(server, total=16 * LIMIT)

    rss = server.rss_bytes()

    assert rss < 3 * baseline[1], f"VmRSS {rss >> 20} MiB, baseline {baseline[1] >> 20} MiB"


# --- bodies over the limit, announced or not -----------------------------------------------------

@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the server let us send before it answered


def _read_answer(sock: socket.socket, sent: int) -> RawAnswer:
    data = b""
    sock.settimeout(15)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed without an answer after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    chunked = "chunked" in headers.get("transfer-encoding", "")
    length = int(headers.get("content-length", "0"))
    while (b"\r\n0\r\n\r\n" not in b"\r\n" + body) if chunked else len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawAnswer(int(lines[0].split()[1]), headers, _dechunk(body) if chunked else body, sent)


def _dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2:]


def _read_head(sock: socket.socket) -> bytes:
    """One interim or final status line and its headers, up to the blank line."""
    data = b""
    sock.settimeout(15)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # byte by byte: whatever follows the head belongs to the next read
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


def _request_head(server: Server, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> int:
    """Send chunks until the server answers (or stops reading); the number of bytes it took."""
    sent = 0
    sock.setblocking(False)
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    return sent
            except BlockingIOError:
                pass
            try:
                n = sock.send(view)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except (BrokenPipeError, ConnectionResetError):
                return sent
            view, sent = view[n:], sent + n
    return sent


def _stream_over_limit(server: Server, declared: int) -> RawAnswer:
    """Announce `declared` bytes and send them 64 KiB at a time until the server answers."""
    body = b'{"pad": "' + b"x" * 65536
    head = _request_head(server, "/hooks/store-clusters", {**signed_headers(SECRET, b"{}"),
                                                            "Content-Length": str(declared)})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        sent = _send_until_answered(sock, (body for _ in range(declared // len(body))))
        return _read_answer(sock, sent)


def _stream_chunked(server: Server, total: int) -> RawAnswer:
    """A chunked body of `total` bytes, without Content-Length, sent until the server answers."""
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    head = _request_head(server, "/hooks/store-clusters", {**signed_headers(SECRET, b"{}"),
                                                            "Transfer-Encoding": "chunked"})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b'9\r\n{"pad": "\r\n')
        sent = _send_until_answered(sock, (chunk for _ in range(total // len(piece))))
        return _read_answer(sock, sent)


def test_a_content_length_over_the_limit_is_a_413_before_the_body_is_read(server):
    answer = _stream_over_limit(server, declared=256 * LIMIT)

    assert answer.status == 413 and answer.headers["content-type"] == "application/problem+json"
    assert json.loads(answer.body)["code"] == "payload-too-large"
    assert answer.sent < 16 * LIMIT, f"the server read {answer.sent} bytes of a refused body"


def test_a_chunked_body_over_the_limit_is_a_413_once_past_it(server):
    answer = _stream_chunked(server, total=256 * LIMIT)

    assert answer.status == 413 and answer.headers["content-type"] == "application/problem+json"
    assert answer.sent < 16 * LIMIT, f"the server read {answer.sent} bytes of a refused body"


def test_a_chunked_body_within_the_limit_is_read_whole(server):
    body = json.dumps(VALID).encode()
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = _request_head(server, "/hooks/store-clusters/validate",
                         {**signed_headers(SECRET, body), "Transfer-Encoding": "chunked"})

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + chunks)
        answer = _read_answer(sock, len(body))

    assert answer.status == 200, answer.body[:300]


# --- content types, methods, signature headers -------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml", "application/jsonx", ""])
def test_a_body_that_is_not_declared_json_is_a_415(server, content_type):
    answer = post(server, VALID, headers={"Content-Type": content_type})

    assert_problem(answer, 415, "unsupported-media-type")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_a_webhook_route_answers_other_methods_with_a_405(server, method):
    answer = requests.request(method, f"{server.url}/hooks/store-clusters", timeout=10)

    assert_problem(answer, 405, "method-not-allowed")
    assert answer.headers["Allow"] == "POST"


def test_posting_to_healthz_is_a_405(server):
    assert_problem(requests.post(f"{server.url}/healthz", data=b"{}", timeout=10), 405)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_signature_header_is_a_401(server, missing):
    body = json.dumps(VALID).encode()
    headers = {k: v for k, v in signed_headers(SECRET, body).items() if k != missing}

    answer = requests.post(f"{server.url}/hooks/store-clusters", data=body, headers=headers, timeout=10)

    assert_problem(answer, 401)


@pytest.mark.parametrize("duplicated", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_duplicated_signature_header_is_a_401(server, duplicated):
    body = json.dumps(VALID).encode()
    signed = signed_headers(SECRET, body, f"msg_{uuid.uuid4().hex}")
    other = signed_headers(SECRET, body, f"msg_{uuid.uuid4().hex}")  # a second, equally valid signing
    lines = [f"{k}: {v}" for k, v in signed.items()] + [f"{duplicated}: {other[duplicated]}",
                                                        f"Content-Length: {len(body)}", "Connection: close"]
    head = "POST /hooks/store-clusters HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "\r\n".join(lines) + "\r\n\r\n"

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode() + body)
        answer = _read_answer(sock, len(body))

    assert answer.status == 401 and answer.headers["content-type"] == "application/problem+json"


def test_no_signature_at_all_is_a_401_before_the_body_is_parsed(server):
    answer = requests.post(f"{server.url}/hooks/store-clusters", data=MALFORMED["arrays-nested-10000-deep"],
                           headers={"Content-Type": "application/json"}, timeout=10)

    assert_problem(answer, 401)


# --- slow bodies ---------------------------------------------------------------------------------------

def test_a_trickling_body_does_not_wedge_other_requests(server):
    body = json.dumps(VALID).encode()
    head = _request_head(server, "/hooks/store-clusters/validate",
                         {**signed_headers(SECRET, body), "Content-Length": str(len(body)), "Expect": "100-continue"})
    reading = [threading.Event() for _ in range(2)]  # the server has taken the request and waits for its body
    finish = threading.Event()  # the slow bodies end only once the other requests were answered
    trickled: list[RawAnswer] = []

    def trickle(reading: threading.Event) -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head)
            assert _read_head(sock).startswith(b"HTTP/1.1 100 ")  # sent by the thread now reading this body
            sock.sendall(body[:4])
            reading.set()
            finish.wait(30)
            for start in range(4, len(body), 4):
                sock.sendall(body[start:start + 4])
            trickled.append(_read_answer(sock, len(body)))

    slow = [threading.Thread(target=trickle, args=(event,)) for event in reading]
    for thread in slow:
        thread.start()
    assert all(event.wait(30) for event in reading), "the server never started reading the slow bodies"
    meanwhile = [validate(server, VALID) for _ in range(5)]
    finish.set()
    for thread in slow:
        thread.join()

    assert [a.status_code for a in meanwhile] == [200] * 5
    assert [a.status for a in trickled] == [200, 200]
