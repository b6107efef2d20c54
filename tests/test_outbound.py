"""gateway.outbound: the environment's proxy rules still apply, and failures say whether a request
could have been read (the difference between retrying a CARTO job POST and reconciling it)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.outbound import Http, NeverConnected, NoAnswer
from tests.stackutil import answer_json


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with the request line it received (absolute-form when it is a proxy)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        answer_json(self, 200, {"line": self.requestline, "server": self.server.name})  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server_factory():
    servers = []

    def start(name: str) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def clear_proxies(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_without_proxy_settings_the_request_goes_straight_to_the_host(server_factory, monkeypatch):
    clear_proxies(monkeypatch)
    origin = server_factory("origin")

    answer = Http().request("GET", f"{origin}/v3/sql/jobs", headers={})

    assert answer.status == 200 and answer.json() == {"line": "GET /v3/sql/jobs HTTP/1.1", "server": "origin"}


def test_http_proxy_from_the_environment_is_used_and_no_proxy_is_honoured(server_factory, monkeypatch):
    clear_proxies(monkeypatch)
    origin, proxy = server_factory("origin"), server_factory("proxy")
    monkeypatch.setenv("HTTP_PROXY", proxy)
    # a host name that does not resolve: only the proxy can answer for it
    target = origin.replace("127.0.0.1", "carto.test")

    answer = Http().request("GET", f"{target}/v3/sql/jobs", headers={})
    assert answer.json() == {"line": f"GET {target}/v3/sql/jobs HTTP/1.1", "server": "proxy"}

    monkeypatch.setenv("NO_PROXY", "carto.test")
    with pytest.raises(NeverConnected):  # straight to carto.test, which does not resolve
        Http().request("GET", f"{target}/v3/sql/jobs", headers={}, timeout=(2.0, 2.0))


def test_a_refused_connection_was_never_sent():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(NeverConnected):
        Http().request("POST", f"http://127.0.0.1:{port}/job", headers={}, body=b"{}")


def test_a_connection_closed_without_an_answer_may_have_been_read():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def swallow() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.close()  # read the request, answer nothing

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    with pytest.raises(NoAnswer):
        Http().request("POST", f"http://127.0.0.1:{listener.getsockname()[1]}/job", headers={}, body=b"{}")
    thread.join(5)
    listener.close()
