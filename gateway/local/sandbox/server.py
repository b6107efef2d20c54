"""The sandbox over real HTTP on loopback: routing, auth, fault application, and the server object."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from gateway.local.sandbox.api import Response, SandboxApi, error, fault_response
from gateway.local.sandbox.faults import TRANSPORT_KINDS, Conditions, Fault, Faults
from gateway.local.sandbox.jobs import DIALECTS, WORKFLOWS, SandboxJob, peak_running
from gateway.local.sandbox.procedures import as_procedures
from gateway.local.sandbox.store import JobStore

log = logging.getLogger("gateway.local.sandbox")
MAX_BODY_BYTES = 10 * 1024 * 1024
_JOB = re.compile(r"/v3/sql/(?P<connection>[^/]+)/job")
_ONE_JOB = re.compile(r"/v3/sql/(?P<connection>[^/]+)/job/(?P<job>[^/]+)")
_QUERY = re.compile(r"/v3/sql/(?P<connection>[^/]+)/query")


def route_of(method: str, path: str, query: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
    """(route, path arguments) of a request; route None when the path is unknown, "" for a bad method."""
    if path == "/v3/sql/jobs":
        return ("list" if method == "GET" else ""), {}
    if match := _JOB.fullmatch(path):
        # CARTO documents a GET variant of job creation: /job?query=...&queryParameters=...
        submit = method == "POST" or (method == "GET" and "query" in query)
        return ("submit" if submit else ""), {"connection": unquote(match["connection"])}
    if match := _QUERY.fullmatch(path):
        return ("query" if method in ("GET", "POST") else ""), {"connection": unquote(match["connection"])}
    if match := _ONE_JOB.fullmatch(path):
        route = {"GET": "status", "DELETE": "cancel"}.get(method, "")
        return route, {"connection": unquote(match["connection"]), "job": unquote(match["job"])}
    return None, {}


def bearer(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The presented token: `Authorization: Bearer <token>` or CARTO's `access_token` query parameter."""
    scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return query.get("access_token") or None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "carto-sandbox"
    timeout = 60  # idle keep-alive connections give their thread back eventually
    # Headers and body go out in two send()s: with Nagle on, every answer waited ~44 ms for the
    # client's delayed ACK (found by bench/).
    disable_nagle_algorithm = True
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES))
        api = self.server.api
        if url.path.startswith("/_sandbox/"):
            payload, bad = _json(body)
            self._send(bad or api.admin(self.command, url.path, payload))
            if (refusal_s := api.take_refusal()) is not None:
                self.server.refuse(refusal_s)
            return None
        route, args = route_of(self.command, url.path, query)
        if not route:
            return self._send(error(404, "Not found") if route is None else error(405, "Method not allowed"))
        api.count(route)
        if route == "query":
            api.note_query(args["connection"], _queried(self.command, query, body)[0])
        if (outage := api.conditions.outage_fault()) is not None:
            self._suffer(outage, None)
            return None
        fault = api.faults.take(route)
        transport = fault if fault and fault.kind in TRANSPORT_KINDS else None
        if transport and not transport.after and self._suffer(transport, None):
            return
        response = self._dispatch(route, args, query, body, fault)
        if route == "submit" and response.status == 200 and (slow_s := api.conditions.creation_delay_s):
            time.sleep(slow_s)  # the job exists already: a client that gives up early finds it listed
        if transport and transport.after and self._suffer(transport, response):
            return
        self._send(response)

    def _suffer(self, fault: Fault, response: Response | None) -> bool:
        """Apply a transport fault; True when it already ended the exchange."""
        if fault.kind == "delay":
            time.sleep(fault.delay_s)
            return False
        if fault.kind == "hold":
            self.server.api.faults.wait_held(fault.route)
            return False
        if fault.kind == "drop":
            self._drop()
        else:
            self._send(fault_response(fault))
        return True

    def _dispatch(self, route: str, args: dict[str, str], query: dict[str, str], body: bytes,
                  fault: Fault | None) -> Response:
        api = self.server.api
        token = bearer(self.headers, query)
        if not api.authorized(token):
            return error(401, "Unauthorized")
        if route == "list":
            return api.list(query, fault)
        if route == "query":
            payload, bad = _queried(self.command, query, body)
            return bad or api.query(args["connection"], payload)
        if route == "status":
            return api.status(args["connection"], args["job"], token, fault)
        if route == "cancel":
            return api.cancel(args["connection"], args["job"], token)
        payload, bad = _submitted(self.command, query, body)
        return bad or api.submit(args["connection"], payload, token, fault)

    def _send(self, response: Response) -> None:
        data = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # The path only: a query string may carry `access_token`, and headers carry the bearer token.
        log.info("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("could not handle a request (%s)", getattr(self, "command", None) or "unparsed")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _json(body: bytes) -> tuple[Any, Response | None]:
    if not body.strip():
        return None, None
    try:
        return json.loads(body), None
    except ValueError:
        return None, error(400, "Body is not valid JSON")


def _submitted(method: str, query: Mapping[str, str], body: bytes) -> tuple[Any, Response | None]:
    if method == "POST":
        return _json(body)
    try:
        parameters = json.loads(query.get("queryParameters") or "{}")
    except ValueError:
        return None, error(400, "queryParameters is not valid JSON")
    return {"query": query["query"], "queryParameters": parameters}, None


def _queried(method: str, query: Mapping[str, str], body: bytes) -> tuple[Any, Response | None]:
    """The `/query` request: `{"q", "queryParameters"}` in a POST body, or `?q=` (and `queryParameters`) on a GET."""
    if method == "POST":
        return _json(body)
    try:
        parameters = json.loads(query["queryParameters"]) if "queryParameters" in query else None
    except ValueError:
        return None, error(400, "queryParameters is not valid JSON")
    return {"q": query.get("q", ""), "queryParameters": parameters}, None


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default backlog of 5 drops SYNs under concurrent clients (1 s retries)

    def __init__(self, address: tuple[str, int], api: SandboxApi):
        self.api = api
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._serving: threading.Thread | None = None
        self._refusing = threading.Lock()  # one closed window at a time
        self._stopped = threading.Event()
        super().__init__(address, _Handler)

    def begin(self) -> None:
        """Serve on a daemon thread."""
        self._serving = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                         name=f"carto-sandbox-{self.server_address[1]}", daemon=True)
        self._serving.start()

    def end(self) -> None:
        """Stop serving (and end any closed window at once)."""
        self._stopped.set()
        with self._refusing:
            if self._serving is not None:
                self.shutdown()
                self._serving.join()
                self._serving = None

    def refuse(self, seconds: float) -> None:
        """Refuse connections for `seconds` on a background thread: the listening socket is closed (a
        connect gets ECONNREFUSED, as from a host whose service is down) and open connections are cut;
        then the same port is bound again."""
        threading.Thread(target=self._closed_window, args=(seconds,), daemon=True,
                         name=f"carto-sandbox-refusing-{self.server_address[1]}").start()

    def _closed_window(self, seconds: float) -> None:
        with self._refusing:
            if self._serving is None or self._stopped.is_set():
                return
            self.shutdown()
            self._serving.join()
            self._serving = None
            self.socket.close()
            self.close_connections()
            log.info("CARTO sandbox refusing connections for %.1f s", seconds)
            if self._stopped.wait(seconds):
                return
            self._listen_again()
            self.begin()
            log.info("CARTO sandbox accepting connections again")

    def _listen_again(self, attempts: int = 100) -> None:
        """Bind the same address again; another socket may hold the port for a moment (retried)."""
        for attempt in range(attempts):
            self.socket = socket.socket(self.address_family, self.socket_type)
            try:
                self.server_bind()
                self.server_activate()
                return
            except OSError:
                self.socket.close()
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def track(self, connection: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeouts and drops are what the faults provoke) is routine, not a traceback.
        failure = sys.exc_info()  # socketserver calls this from inside its `except` block
        if failure[0] is not None and issubclass(failure[0], OSError):
            log.debug("client connection ended early (%s)", failure[0].__name__)
        else:
            log.warning("request handling failed", exc_info=failure)

    def close_connections(self) -> None:
        with self._open_lock:
            for connection in self._open:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class SandboxServer:
    """A local CARTO job API on a background thread; bound at construction so `.port` is known."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 procedures: Mapping[str, Any] | None = None, db_path: str | None = None,
                 default_duration_s: float = 1.0, clock: Callable[[], float] = time.time,
                 dialect: str = WORKFLOWS, connections: Iterable[str] | None = None):
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}")
        self.faults = Faults()
        self._store = JobStore(db_path or ":memory:")
        self.api = SandboxApi(self._store, self.faults, token=token, procedures=as_procedures(procedures),
                              default_duration_s=default_duration_s, clock=clock, dialect=dialect,
                              connections=None if connections is None else frozenset(connections))
        self._httpd = _HttpServer((host, port), self.api)
        self._started = False

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL to use as CARTO_API_BASE_URL, e.g. http://127.0.0.1:8090."""
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> SandboxServer:
        """Serve on a daemon thread (idempotent); returns self."""
        if not self._started:
            self._started = True
            self._httpd.begin()
            log.info("CARTO sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and the job store."""
        if self._started:
            self._httpd.end()
            self._started = False
        self._httpd.close_connections()
        self._httpd.server_close()
        self._store.close()

    def jobs(self) -> list[SandboxJob]:
        """Every job created so far, oldest first."""
        return self._store.all()

    @property
    def conditions(self) -> Conditions:
        """Standing conditions: slow creation and the creation rate limit (faults.py)."""
        return self.api.conditions

    def outage(self, seconds: float, kind: str = "error", status: int = 503) -> None:
        """For `seconds` every CARTO route answers `status` (`error`), or the port refuses connections
        (`refuse`); the admin routes stay reachable during an `error` outage only."""
        self.api.conditions.outage(seconds, kind, status)
        if kind == "refuse":
            self._httpd.refuse(seconds)

    def peak_running(self) -> dict[str, int]:
        """Per procedure, the most jobs running at CARTO at once so far (created and not yet DONE)."""
        return peak_running(self._store.all())

    def stats(self) -> dict[str, Any]:
        """Same as `GET /_sandbox/stats`."""
        return self.api.stats()

    def reset(self) -> None:
        """Forget jobs, faults and request counts."""
        self.api.reset()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(port: int = 0, host: str = "127.0.0.1", token: str | None = None,
          procedures: Mapping[str, Any] | None = None, db_path: str | None = None,
          default_duration_s: float = 1.0, *, clock: Callable[[], float] = time.time,
          dialect: str = WORKFLOWS, connections: Iterable[str] | None = None) -> SandboxServer:
    """Build and start a sandbox; `token` None accepts any caller, `procedures` None checks no signature,
    `connections` None knows every connection; `dialect` is `workflows` or `sql-api`."""
    return SandboxServer(host, port, token=token, procedures=procedures, db_path=db_path,
                         default_duration_s=default_duration_s, clock=clock, dialect=dialect,
                         connections=connections).start()
