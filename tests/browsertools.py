"""Headless Chromium for the console's browser tests: dump a page's DOM, take a screenshot, or measure its
layout through the DevTools protocol.

The console's pages run no script (their CSP has no script-src), so where the browser laid a box out is
read the way DevTools reads it: Chromium started with `--remote-debugging-port`, one page driven over
its WebSocket (a minimal RFC 6455 client below: text frames only, which is all the protocol sends), and
`Runtime.evaluate` asked for the boxes. The expression runs in DevTools' context, not as the page's
script, so the page's CSP stays as it is.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run does it in CI)")


def browse(browser: str, profile: Path, url: str, *args: str) -> str:
    """Run headless Chromium on `url` with a fresh profile; its stdout (the DOM with --dump-dom)."""
    done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Browser:
    """One headless Chromium with a viewport of `width`×`height`, driven over the DevTools protocol."""

    def __init__(self, browser: str, profile: Path, width: int, height: int):
        self.process = subprocess.Popen(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._next_id = 0
        try:
            port = self._port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                targets = json.load(answer)
            page = next(t for t in targets if t.get("type") == "page")
            self.socket = _connect(page["webSocketDebuggerUrl"])
        except BaseException:
            self.close()
            raise

    def _port(self, active: Path, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            if self.process.poll() is not None:
                raise AssertionError(f"Chromium exited with {self.process.returncode} before it listened")
            time.sleep(0.1)
        raise AssertionError("Chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are skipped)."""
        self._next_id += 1
        _send(self.socket, json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(_receive(self.socket))
            if message.get("id") == self._next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def open(self, url: str, timeout_s: float = 60.0) -> None:
        """Load `url` and wait until it has loaded (its stylesheet too)."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.evaluate("document.readyState === 'complete' && location.href") == url:
                return
            time.sleep(0.1)
        raise AssertionError(f"{url} did not load")

    def close(self) -> None:
        if hasattr(self, "socket"):
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(url: str) -> socket.socket:
    """A WebSocket client connection (no Origin header: Chromium accepts those from any local client)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the DevTools socket closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _send(sock: socket.socket, text: str) -> None:
    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    header = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
                              if size < 1 << 16 else bytes([0x80 | 127]) + struct.pack(">Q", size))
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the DevTools socket closed"
        data += chunk
    return data


def _receive(sock: socket.socket) -> str:
    """One text message (its fragments joined); control frames are skipped."""
    message = b""
    while True:
        first, second = _exactly(sock, 2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack(">H", _exactly(sock, 2))[0]
        elif size == 127:
            size = struct.unpack(">Q", _exactly(sock, 8))[0]
        mask = _exactly(sock, 4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(_exactly(sock, size)))
        opcode = first & 0x0F
        assert opcode != 0x8, "Chromium closed the DevTools socket"
        if opcode in (0x0, 0x1):
            message += payload
            if first & 0x80:
                return message.decode()
