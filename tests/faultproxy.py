"""A TCP fault proxy on loopback for HTTP/1.1 upstreams: put it between the gateway and CARTO.

Each client connection gets a thread, and each request a fresh upstream connection. The proxy reads one HTTP
message at a time (Content-Length or chunked framing, nothing else), so faults apply per request
and can target a method and path: the gateway's job POST and `poll`'s status GETs share one
keep-alive connection pool, and a fault meant for one must not hit the other.

    pass       forward the request, relay the answer
    delay      forward, wait `delay_s`, relay (a latency spike)
    reset      RST the client connection (SO_LINGER 0); `forward` says whether the request reached
               the upstream first (the job was created but the client never heard)
    truncate   forward, relay the first `after_bytes` bytes of the answer, then close
    blackhole  never answer (the client times out); `forward` as for reset
    respond    answer `status` with `headers` without forwarding (a load balancer's 503 or 429)

`mode` applies to every request no queued fault matches; `inject(fault, count)` queues one-shot
faults consumed in order by matching requests. Both can be changed while traffic flows.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

KINDS = ("pass", "delay", "reset", "truncate", "blackhole", "respond")
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """What happens to one request; `method` and `path` (a regex searched in the target) select requests."""

    kind: str = "pass"
    forward: bool = True
    delay_s: float = 0.0
    after_bytes: int = 0
    status: int = 503
    headers: tuple[tuple[str, str], ...] = ()
    method: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")

    def matches(self, method: str, target: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or bool(re.search(self.path, target)))


PASS = Fault()


@dataclass
class _Request:
    method: str
    target: str
    raw: bytes


@dataclass
class ProxyStats:
    """What the proxy did, per fault kind, and every request it saw as (method, target, kind)."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def count(self, kind: str, method: str | None = None) -> int:
        return sum(1 for m, _, k in self.seen if k == kind and (method is None or m == method))


class FaultProxy:
    """Listens on 127.0.0.1:`port` (0: a free one) and forwards to `upstream` (host, port)."""

    def __init__(self, upstream: tuple[str, int], port: int = 0, *, connect_timeout_s: float = 5.0):
        self.upstream, self.connect_timeout_s = upstream, connect_timeout_s
        self.mode: Fault = PASS
        self.stats = ProxyStats()
        self._queue: list[list[Any]] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", port), backlog=128)
        self._listener.settimeout(0.1)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._listener.close()
        self.drop_connections()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, fault: Fault) -> None:
        """The fault every request suffers when no queued one matches it (PASS: none)."""
        self.mode = fault

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Queue `fault` for the next `count` requests it matches."""
        with self._lock:
            self._queue.append([fault, count])

    def clear(self) -> None:
        """Back to passing everything: no queued faults, mode PASS."""
        with self._lock:
            self._queue.clear()
        self.mode = PASS

    def pending(self) -> int:
        with self._lock:
            return sum(count for _, count in self._queue)

    def drop_connections(self) -> None:
        """Reset every open client connection now (a network blip)."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)

    def _take(self, method: str, target: str) -> Fault:
        with self._lock:
            for entry in self._queue:
                if entry[0].matches(method, target):
                    entry[1] -= 1
                    if entry[1] == 0:
                        self._queue.remove(entry)
                    return entry[0]
        mode = self.mode
        return mode if mode.matches(method, target) else PASS

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = _Reader(client)
        try:
            while not self._stopping.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                fault = self._take(request.method, request.target)
                with self._lock:
                    self.stats.seen.append((request.method, request.target, fault.kind))
                if not self._exchange(client, request, fault):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(client)
            try:
                client.close()
            except OSError:
                pass

    def _exchange(self, client: socket.socket, request: _Request, fault: Fault) -> bool:
        """Apply `fault` to one request; True when the client connection lives on."""
        if fault.kind == "respond":
            client.sendall(_canned(fault))
            return True
        answer = b""
        if fault.forward or fault.kind in ("pass", "delay", "truncate"):
            answer = self._forward(request)
            if answer is None:  # the upstream is down, or hung up without answering: so does the proxy
                _reset(client)
                return False
        if fault.kind == "reset":
            _reset(client)
            return False
        if fault.kind == "blackhole":
            _hold(client, self._stopping)
            return False
        if fault.kind == "delay":
            time.sleep(fault.delay_s)
        if fault.kind == "truncate":
            client.sendall(answer[:fault.after_bytes])
            client.shutdown(socket.SHUT_RDWR)
            return False
        client.sendall(answer)
        return True

    def _forward(self, request: _Request) -> bytes | None:
        """The upstream's whole answer to `request`, over a fresh connection (never re-sent: a POST may
        have been applied), or None when it could not be had."""
        try:
            with socket.create_connection(self.upstream, timeout=self.connect_timeout_s) as upstream:
                upstream.settimeout(None)
                upstream.sendall(request.raw)
                return _read_response(_Reader(upstream), request.method)
        except OSError:
            return None


class _Reader:
    """Buffered reads from a socket: lines, exact byte counts."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def until(self, marker: bytes, limit: int = _MAX_HEAD) -> bytes | None:
        while marker not in self.buffer:
            if len(self.buffer) > limit or not self._fill():
                return None
        index = self.buffer.index(marker) + len(marker)
        data, self.buffer = self.buffer[:index], self.buffer[index:]
        return data

    def exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


def _body(reader: _Reader, headers: dict[str, str], *, until_close: bool) -> bytes | None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _chunked(reader)
    if "content-length" in headers:
        return reader.exactly(int(headers["content-length"]))
    return reader.rest() if until_close else b""


def _chunked(reader: _Reader) -> bytes | None:
    raw = b""
    while True:
        line = reader.until(b"\r\n")
        if line is None:
            return None
        raw += line
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            trailer = reader.until(b"\r\n")
            while trailer not in (None, b"\r\n"):
                raw += trailer
                trailer = reader.until(b"\r\n")
            return None if trailer is None else raw + trailer
        chunk = reader.exactly(size + 2)
        if chunk is None:
            return None
        raw += chunk


def _read_request(reader: _Reader) -> _Request | None:
    head = reader.until(b"\r\n\r\n")
    if head is None:
        return None
    method, target = (head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + ["", ""])[:2]
    body = _body(reader, _headers(head), until_close=False)
    return None if body is None else _Request(method, target, head + body)


def _read_response(reader: _Reader, method: str) -> bytes | None:
    head = reader.until(b"\r\n\r\n")
    if head is None:
        return None
    status = int(head.split(b" ", 2)[1])
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return head
    body = _body(reader, _headers(head), until_close=True)
    return None if body is None else head + body


def _canned(fault: Fault) -> bytes:
    body = json.dumps({"error": f"injected by the fault proxy ({fault.status})", "status": fault.status}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *fault.headers]
    head = f"HTTP/1.1 {fault.status} Injected\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: what a crashed peer or a middlebox does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _hold(client: socket.socket, stopping: threading.Event) -> None:
    """Say nothing until the client gives up (or the proxy stops)."""
    client.settimeout(0.1)
    while not stopping.is_set():
        try:
            if not client.recv(65536):
                return
        except TimeoutError:
            continue
        except OSError:
            return
