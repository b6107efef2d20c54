"""Reading what a user copied from CARTO's "API access" dialog: the POST curl, the GET URL, or a bare body.

The dialog (https://docs.carto.com/carto-user-manual/workflows/executing-workflows-via-api) shows

    curl --location 'https://gcp-us-east1.api.carto.com/v3/sql/CONNECTION/job' \\
    --header 'Content-Type: application/json' --header 'Authorization: Bearer eyJhbGc…' \\
    --data '{"query": "CALL `p.workflows_temp.workflow_procedure_…`(@a,@b)", "queryParameters": {"a": 2, "b": "x"}}'

and a GET form, `…/v3/sql/CONNECTION/job?query=CALL …&queryParameters={…}&access_token=eyJhbGc…`.
`read_paste` turns any of them (or the bare `{"query", "queryParameters"}` JSON) into a `Paste`.
Curl is split by `shlex` as a POSIX shell would (quotes, `\\` continuations), so the JSON inside
`--data` arrives exactly as typed. Pure: no I/O. The token is kept out of `repr` and of every
message, because error messages are printed.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from gateway.errors import ConfigError

# The job endpoint: {base}/v3/sql/{connection}/job; the base may carry a path (a proxy, an on-premise install).
_JOB_PATH = re.compile(r"(?P<prefix>.*?)/v3/sql/(?P<connection>[^/]+)/job/?")
_CONNECTION = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# curl options that take a value (the rest are flags such as --location, -s, --compressed).
_DATA_OPTIONS = {"-d", "--data", "--data-raw", "--data-binary", "--data-ascii"}
_HEADER_OPTIONS = {"-H", "--header"}
_URL_OPTIONS = {"--url"}
_URLENCODE_OPTIONS = {"--data-urlencode"}
_GET_OPTIONS = {"-G", "--get"}
_VALUE_OPTIONS = _DATA_OPTIONS | _HEADER_OPTIONS | _URL_OPTIONS | _URLENCODE_OPTIONS | {
    "-X", "--request", "-u", "--user", "-o", "--output", "-A", "--user-agent",
    "-e", "--referer", "-b", "--cookie", "-m", "--max-time", "--connect-timeout", "-x", "--proxy"}
_BEARER = re.compile(r"^\s*Authorization\s*:\s*Bearer\s+(?P<token>\S+)\s*$", re.IGNORECASE)


class PasteError(ConfigError):
    """What was pasted cannot be read; the message says what and never repeats a token."""


@dataclass(frozen=True)
class Paste:
    """What the dialog's command says: where the job goes, the CALL, its example parameters."""

    query: str
    parameters: dict[str, Any] | list[Any]
    connection: str | None = None
    base_url: str | None = None
    form: str = "json"  # "post" (curl with a body), "get" (the URL form) or "json" (a bare body)
    token: str | None = field(default=None, repr=False)
    token_in_url: bool = False


def read_paste(text: str) -> Paste:
    """The paste's job request; PasteError naming what is wrong."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").strip()
    text = re.sub(r"^\$\s+", "", text)  # a shell prompt copied along
    if not text:
        raise PasteError("nothing was pasted: expected the curl command from CARTO's API access dialog")
    if text.startswith("{"):
        return _body(_json(text, "the pasted JSON"), form="json")
    if text.startswith(("http://", "https://")):
        return _get(text.replace("\n", ""))
    if text.split(None, 1)[0] in ("curl", "curl.exe"):
        return _curl(text)
    raise PasteError("expected the curl command from CARTO's API access dialog (it starts with curl), "
                     "the GET URL (https://…/v3/sql/CONNECTION/job?query=…), or the JSON body {\"query\", \"queryParameters\"}")


def _curl(text: str) -> Paste:
    # A shell drops `\` + newline (a line continuation); shlex would keep the newline in the next word.
    text = text.replace("\\\n", " ")
    try:
        words = shlex.split(text)
    except ValueError as exc:  # an unclosed quote: usually a paste cut short
        raise PasteError(f"the curl command cannot be split as a shell would: {exc} (was the paste cut short?)") from None
    urls, headers, data, get = _curl_arguments(words[1:])
    if not urls:
        raise PasteError("the curl command has no URL: expected https://…/v3/sql/CONNECTION/job")
    if len(urls) > 1:
        raise PasteError(f"the curl command has {len(urls)} URLs; expected one, CARTO's …/v3/sql/CONNECTION/job")
    token = next((m["token"] for m in map(_BEARER.match, headers) if m), None)
    if not data or get:
        paste = _get(urls[0] + ("&" if "?" in urls[0] else "?") + "&".join(data) if data else urls[0])
        return paste if paste.token or not token else _with(paste, token=token)
    if any(d.startswith("@") for d in data):
        raise PasteError("--data @FILE reads a file curl would send: paste the JSON body itself")
    base_url, connection, _ = _job_url(urls[0])
    body = _body(_json("&".join(data), "the JSON in --data"), form="post")
    url_token = _url_token(urls[0])
    return _with(body, base_url=base_url, connection=connection, token=url_token or token,
                 token_in_url=url_token is not None)


def _curl_arguments(words: list[str]) -> tuple[list[str], list[str], list[str], bool]:
    urls: list[str] = []
    headers: list[str] = []
    data: list[str] = []
    get = False
    i = 0
    while i < len(words):
        word = words[i]
        option, value = _option(word)
        if option is None:
            urls.append(word)
        elif option in _VALUE_OPTIONS:
            if value is None:
                i += 1
                if i == len(words):
                    raise PasteError(f"the curl option {option} has no value")
                value = words[i]
            if option in _DATA_OPTIONS:
                data.append(value)
            elif option in _HEADER_OPTIONS:
                headers.append(value)
            elif option in _URL_OPTIONS:
                urls.append(value)
            elif option in _URLENCODE_OPTIONS:  # `curl -G --data-urlencode 'query=CALL …'`: fields of the URL
                key, equals, content = value.partition("=")
                data.append(f"{key}={quote(content, safe='')}" if equals else quote(key, safe=""))
                get = True
        elif option in _GET_OPTIONS:
            get = True
        i += 1
    return urls, headers, data, get


def _option(word: str) -> tuple[str | None, str | None]:
    """(option, attached value) of one curl word; (None, None) for a URL."""
    if not word.startswith("-") or word == "-":
        return None, None
    if word.startswith("--"):
        return word, None
    if len(word) > 2 and word[:2] in _VALUE_OPTIONS:  # -H'Name: value', -d'{…}'
        return word[:2], word[2:]
    return word, None


def _get(url: str) -> Paste:
    """The GET form: the CALL, its parameters and perhaps the token, all in the URL's query string."""
    base_url, connection, fields = _job_url(url)
    if "query" not in fields:
        raise PasteError("the URL carries no query: expected …/job?query=CALL …&queryParameters={…}, "
                         "or the curl command with --data")
    parameters: Any = {}
    if fields.get("queryParameters", "").strip():
        parameters = _json(fields["queryParameters"], "queryParameters in the URL")
    body = _body({"query": fields["query"], "queryParameters": parameters}, form="get")
    token = fields.get("access_token") or None
    return _with(body, base_url=base_url, connection=connection, token=token, token_in_url=token is not None)


def _job_url(url: str) -> tuple[str, str, dict[str, str]]:
    """(base URL, connection, query-string fields) of CARTO's job endpoint."""
    parts = urlsplit(url.strip())
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the query string: it may hold the token
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PasteError(f"{shown!r} is not an http(s) URL")
    match = _JOB_PATH.fullmatch(parts.path)
    if not match:
        raise PasteError(f"{shown} is not CARTO's job endpoint: expected https://…/v3/sql/CONNECTION/job")
    connection = unquote(match["connection"])
    if not _CONNECTION.fullmatch(connection):
        raise PasteError(f"the connection {connection!r} in the URL is not a CARTO connection name "
                         "(letters, digits, _ . -)")
    return f"{parts.scheme}://{parts.netloc}{match['prefix']}", connection, _query_fields(parts.query)


def _query_fields(query: str) -> dict[str, str]:
    """The fields of a query string, copied encoded (`%20`) or as the dialog shows it (raw spaces, quotes, braces)."""
    if re.search(r"[\s\"{}`]", query):
        # Raw: split only before the dialog's own keys, since the JSON or the CALL may contain '&'.
        pieces = re.split(r"&(?=(?:query|queryParameters|access_token|client_id)=)", query)
        pairs = [piece.partition("=")[::2] for piece in pieces]
        return {key: unquote(value) for key, value in pairs}
    return dict(parse_qsl(query, keep_blank_values=True))


def _url_token(url: str) -> str | None:
    return _query_fields(urlsplit(url).query).get("access_token") or None


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise PasteError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise PasteError(f"{what} is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the key {repeated[0]!r} appears twice")
    return dict(pairs)


def _body(body: Any, *, form: str) -> Paste:
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise PasteError('the body must be a JSON object with "query" (the CALL) and "queryParameters"')
    unknown = sorted(set(body) - {"query", "queryParameters"})
    if unknown:
        raise PasteError(f"the body has {', '.join(map(repr, unknown))} besides query and queryParameters")
    parameters = body.get("queryParameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, (dict, list)):
        raise PasteError("queryParameters must be an object (named @parameters) or an array (positional ones)")
    _finite(parameters)
    return Paste(query=body["query"], parameters=parameters, form=form)


def _finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PasteError("queryParameters holds a number too large for a float")
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        _finite(item)


def _with(paste: Paste, **changes: Any) -> Paste:
    from dataclasses import replace

    return replace(paste, **changes)
