"""Outbound HTTP for CARTO's API: urllib3's keep-alive pools, nothing in between.

requests spends 0.2 ms of CPU per call on machinery these calls do not use (cookie jars, hooks,
redirects, settings merged from the environment on every request; BENCHMARKS.md), a fifth of what
a webhook costs beyond the bare server, and 40 ms of import at every cold start. This keeps what
matters from it: the proxy (`HTTPS_PROXY`, `NO_PROXY`…, by requests' own rules when one is set) and
the CA bundle (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, else certifi's) the environment names, read
once per scheme and host, since an instance's environment does not change.

There are no retries here: `gateway.carto` decides what may be repeated, and needs to know whether
a request can have been read. `NeverConnected` says it cannot; `NoAnswer` says it may have been.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import certifi
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError


class NeverConnected(Exception):
    """No connection was made (refused, unresolvable, connect timeout): the request was not sent."""


class NoAnswer(Exception):
    """The request may have been sent, but no complete answer came (reset, read timeout, cut short)."""


@dataclass(frozen=True)
class Answer:
    """One complete HTTP answer."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    data: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.data)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class Http:
    """Keep-alive connection pools per scheme and host, sized for gunicorn's request threads."""

    def __init__(self, *, pool_size: int = 32):
        self._pool_size = pool_size
        self._pools: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def request(self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None,
                timeout: tuple[float, float] = (5.0, 30.0)) -> Answer:
        """Send one request and read the whole answer; NeverConnected or NoAnswer when that fails."""
        try:
            parts = urlsplit(url)
            pool = self._pool(parts.scheme, parts.netloc, url)
            if not isinstance(pool, urllib3.ProxyManager):  # a host's own pool takes the origin-form target
                url = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            answer = pool.urlopen(method, url, body=body, headers=dict(headers), retries=False, redirect=False,
                                  assert_same_host=False, timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
        except (ConnectTimeoutError, ValueError) as exc:
            # NewConnectionError and NameResolutionError are kinds of ConnectTimeoutError; a URL that
            # cannot be parsed is never sent either
            raise NeverConnected(type(exc).__name__) from None
        except (HTTPError, OSError) as exc:
            raise NoAnswer(type(exc).__name__) from None
        return Answer(answer.status, answer.headers, answer.data)

    def _pool(self, scheme: str, host: str, url: str) -> Any:
        """The connection pool for the URL's scheme and host (a ProxyManager when a proxy applies)."""
        pool = self._pools.get((scheme, host))
        if pool is None:
            with self._lock:
                pool = self._pools.get((scheme, host))
                if pool is None:
                    manager = self._build(url)
                    # Without a proxy, the host's own pool: PoolManager's per-call lookup is 60 µs we need not spend.
                    pool = manager if isinstance(manager, urllib3.ProxyManager) else manager.connection_from_url(url)
                    self._pools[(scheme, host)] = pool
        return pool

    def _build(self, url: str) -> urllib3.PoolManager:
        """A pool with the proxy and CA bundle requests would use for this URL."""
        options: dict[str, Any] = {"maxsize": self._pool_size, "block": False}
        if url.startswith("https:"):
            options["ca_certs"] = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                                   or certifi.where())
        proxy = _proxy_for(url)
        if not proxy:
            return urllib3.PoolManager(**options)
        parts = urlsplit(proxy)
        headers = None
        if parts.username:
            headers = urllib3.make_headers(proxy_basic_auth=f"{parts.username}:{parts.password or ''}")
        return urllib3.ProxyManager(proxy, proxy_headers=headers, **options)


def _proxy_for(url: str) -> str | None:
    """The proxy requests would use for `url` (its `*_proxy` and `no_proxy` rules), if any is set."""
    if not any(name.lower().endswith("_proxy") and name.lower() != "no_proxy" for name in os.environ):
        return None  # the usual case, without importing requests
    import requests.utils

    return requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))


class GoogleToken:
    """Authorization headers from the instance's default Google credentials for one OAuth scope: loaded on
    first use (google-auth, never on an import path), refreshed when due. `unavailable` is the error raised
    when there are no credentials or no token can be had, so each caller keeps its own answer (a 503)."""

    def __init__(self, scope: str, service: str, unavailable: type[Exception]):
        self.scope, self.service, self.unavailable = scope, service, unavailable
        self._credentials: Any = None
        self._request: Any = None
        self._lock = threading.Lock()

    def headers(self, url: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        with self._lock:
            if self._credentials is None:
                import google.auth
                import google.auth.transport.urllib3

                try:
                    self._credentials, _ = google.auth.default(scopes=[self.scope])
                except Exception as exc:
                    raise self.unavailable(f"no credentials for {self.service} ({type(exc).__name__})") from None
                self._request = google.auth.transport.urllib3.Request(urllib3.PoolManager(maxsize=2))
            try:
                self._credentials.before_request(self._request, "POST", url, headers)  # refreshes when due
            except Exception as exc:
                raise self.unavailable(f"could not get a {self.service} access token ({type(exc).__name__})") from None
        return headers
