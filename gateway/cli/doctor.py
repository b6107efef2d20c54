"""`python -m gateway doctor [WORKFLOW …]`: first contact with a CARTO account, with the deployment's settings.

    1. the base URL answers (CARTO_API_BASE_URL, or a workflow's carto.api_base_url)
    2. the token or client credentials work — 401 (not a valid token) and 403 (valid, not allowed) told
       apart, each with what to do
    3. for each connection the workflows use: a harmless `SELECT 1` job, with the gateway's metadata and
       marker, is followed to its end and found again in the job list; the dialect CARTO answers in, whether
       `metadata` and the marker came back (so whether crash reconciliation will work), each call's latency
    4. whether the account's job answers name an output table (`jobMetadata.workflowOutputTableName`, what a
       workflow file's `result` block without `table` reads): on doctor's own job or on any job in the list

Exit status 0 only if all of it holds. `--save FILE` writes every answer with the token stripped.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.carto import delivery_marker, delivery_metadata, dialect_of, job_id_of, jobs_of, parse_status, strip_secrets
from gateway.carto.dialects import carries_marker, carries_metadata, output_table_of
from gateway.cli.live import tokens_from
from gateway.errors import ConfigError, GatewayError
from gateway.outbound import Http, NeverConnected, NoAnswer
from gateway.settings import Settings
from gateway.workflows import Registry

POLL_EVERY_S = 0.5
TOKEN_HELP = {
    401: "CARTO does not accept this token (wrong, revoked or expired): create an API access token in CARTO "
         "Workspace → Developers → Credentials and set CARTO_API_TOKEN (or set CARTO_CLIENT_ID and "
         "CARTO_CLIENT_SECRET of an M2M client)",
    403: "CARTO knows this token but it may not do this: give the token access to the connections the workflows "
         "use and to the SQL API (Developers → Credentials → the token's grants), or use another token",
}


@dataclass
class Call:
    """One request doctor made and what came back (token stripped)."""

    step: str
    method: str
    path: str
    status: int | None
    latency_ms: float
    body: Any = None
    error: str | None = None


@dataclass
class Session:
    """Every call to CARTO, timed and recorded; the token never leaves `_token`."""

    http: Http
    base_url: str
    token: str | None
    calls: list[Call] = field(default_factory=list)

    def call(self, step: str, method: str, path: str, *, body: Any = None, auth: bool = True) -> Call:
        headers = {"Accept": "application/json"}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        started = time.perf_counter()
        try:
            answer = self.http.request(method, self.base_url + path, headers=headers, body=data, timeout=(5.0, 30.0))
        except (NeverConnected, NoAnswer) as exc:
            recorded = Call(step, method, path, None, _ms(started), error=type(exc).__name__ + f" ({exc})")
        else:
            try:
                parsed = self.scrub(strip_secrets(answer.json()))
            except ValueError:
                parsed = self.scrub(answer.text[:2000])
            recorded = Call(step, method, path, answer.status, _ms(started), parsed)
        self.calls.append(recorded)
        return recorded

    def scrub(self, value: Any) -> Any:
        """The value without the token, wherever CARTO may have put it (strip_secrets drops the named fields)."""
        if not self.token:
            return value
        text = json.dumps(value)
        return json.loads(text.replace(self.token, "[token]")) if self.token in text else value


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


class Report:
    """What doctor prints: one line per finding, and whether all of it held."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ok = True

    def good(self, text: str) -> None:
        self.lines.append(f"ok    {text}")

    def bad(self, text: str) -> None:
        self.ok = False
        self.lines.append(f"FAIL  {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"      {text}")

    def timing(self, call: Call) -> None:
        status = call.status if call.status is not None else call.error
        self.note(f"{call.method} {call.path} → {status} in {call.latency_ms:.0f} ms")


def doctor(registry: Registry, env: Mapping[str, str], names: list[str] | None = None, *, save: Path | None = None,
           timeout_s: float = 120.0, out: Any = None) -> int:
    """Run every check, print the report, write `save`; exit status 0 only if all holds."""
    import sys

    out = out or sys.stdout
    report = Report()
    sessions: list[Session] = []
    try:
        targets = _targets(registry, env, names)
        settings = Settings.from_env(env)
        http = Http()
        token = tokens_from(settings, http).token() if any(not t.token_env for t in targets) else None
    except (ConfigError, GatewayError) as exc:
        report.bad(f"settings: {getattr(exc, 'detail', None) or exc}")
        targets = []
        http, token = Http(), None
    for (base_url, token_env), group in _by_account(targets).items():
        session = Session(http, base_url, env.get(token_env) if token_env else token)
        sessions.append(session)
        if _account(session, report):
            for target in group:
                _connection(session, target, report, timeout_s)
    for line in report.lines:
        print(line, file=out)
    print("all checks passed" if report.ok else "doctor found problems (see FAIL lines)", file=out)
    if save is not None:
        _save(save, sessions)
        print(f"answers saved to {save} (token stripped)", file=out)
    return 0 if report.ok else 1


@dataclass(frozen=True)
class Target:
    """One connection to try, with the account it belongs to and a workflow that uses it."""

    base_url: str
    token_env: str | None
    connection: str
    warehouse: str
    workflows: tuple[str, ...]
    readers: tuple[str, ...] = ()  # workflows whose result block reads the table CARTO names


def _targets(registry: Registry, env: Mapping[str, str], names: list[str] | None) -> list[Target]:
    unknown = [n for n in names or [] if n not in registry.workflows]
    if unknown:
        raise ConfigError(f"no workflow named {', '.join(unknown)} (have: {', '.join(sorted(registry.workflows))})")
    default = (env.get("CARTO_API_BASE_URL") or "").rstrip("/")
    grouped: dict[tuple[str, str | None, str, str], list[str]] = {}
    for name in names or sorted(registry.workflows):
        workflow = registry.workflows[name]
        base = workflow.api_base_url or default
        if not base:
            raise ConfigError(f"CARTO_API_BASE_URL is not set (workflow {name} needs it)")
        grouped.setdefault((base, workflow.token_env, workflow.connection, workflow.warehouse), []).append(name)
    def readers(found: list[str]) -> tuple[str, ...]:
        return tuple(n for n in found if registry.workflows[n].result and not registry.workflows[n].result.table)
    return [Target(*key, tuple(found), readers(found)) for key, found in grouped.items()]


def _by_account(targets: list[Target]) -> dict[tuple[str, str | None], list[Target]]:
    accounts: dict[tuple[str, str | None], list[Target]] = {}
    for target in targets:
        accounts.setdefault((target.base_url, target.token_env), []).append(target)
    return accounts


def _account(session: Session, report: Report) -> bool:
    """The base URL answers and the token works; False stops this account's connection checks."""
    bare = session.call("base URL", "GET", "/v3/sql/jobs", auth=False)
    if bare.status is None:
        report.bad(f"base URL {session.base_url} does not answer ({bare.error}): check CARTO_API_BASE_URL — your "
                   "account's API base URL is shown in CARTO Workspace → Developers (e.g. https://gcp-us-east1.api.carto.com)")
        return False
    if bare.status == 404:
        report.bad(f"base URL {session.base_url} answers, but has no /v3/sql/jobs (404): it is not CARTO's API base "
                   "URL; check CARTO_API_BASE_URL")
        return False
    report.good(f"base URL {session.base_url} answers (HTTP {bare.status} without a token)")
    report.timing(bare)
    if not session.token:
        report.bad("token: none is set; set CARTO_API_TOKEN, or CARTO_CLIENT_ID and CARTO_CLIENT_SECRET")
        return False
    listed = session.call("token", "GET", "/v3/sql/jobs")
    if listed.status in TOKEN_HELP:
        report.bad(f"token refused ({listed.status}): {TOKEN_HELP[listed.status]}")
        report.timing(listed)
        return False
    if listed.status is None or listed.status >= 300:
        report.bad(f"token: CARTO answered the job list with {listed.status or listed.error}: {_error_text(listed)}")
        return False
    report.good("token accepted (the job list answers 200)")
    report.timing(listed)
    return True


def _connection(session: Session, target: Target, report: Report, timeout_s: float) -> None:
    """A harmless job on the connection, followed to its end and looked for in the job list."""
    used_by = ", ".join(target.workflows)
    key = f"doctor:{uuid.uuid4().hex}"
    query = f"SELECT 1\n{delivery_marker(key)}"  # the same in BigQuery, Snowflake, PostgreSQL and Redshift
    metadata = delivery_metadata(key, "doctor", None)
    created = session.call("submit", "POST", f"/v3/sql/{target.connection}/job",
                           body={"query": query, "queryParameters": [] if target.warehouse != "bigquery" else {},
                                 "metadata": metadata})
    where = f"connection {target.connection} ({target.warehouse}, used by {used_by})"
    job_id = job_id_of(created.body) if created.status is not None and created.status < 300 else None
    if job_id is None:
        hint = (f"check that a connection named {target.connection} exists in CARTO Workspace → Connections and "
                "that the token may use it") if created.status in (400, 403, 404) else "see the answer above"
        report.bad(f"{where}: CARTO refused a SELECT 1 job ({created.status or created.error}: "
                   f"{_error_text(created)}); {hint}")
        report.timing(created)
        return
    report.good(f"{where}: job {job_id} created; CARTO answers in the {dialect_of(created.body) or 'unknown'} dialect")
    report.timing(created)
    listed = session.call("list", "GET", "/v3/sql/jobs")
    entry = next((job for job in jobs_of(listed.body) if job_id_of(job) == job_id), None)
    final = _follow(session, target.connection, job_id, timeout_s)
    _verdict(report, where, entry, final, key, listed)
    _output_tables(report, where, [final.body if final is not None else None, *jobs_of(listed.body)], target)


def _output_tables(report: Report, where: str, answers: list[Any], target: Target) -> None:
    """Whether job answers carry `jobMetadata.workflowOutputTableName`: only a run whose workflow ends in an
    MCP Tool Output (Async) names one, so its absence on a SELECT 1 is a note, not a failure."""
    named = next((name for body in answers if isinstance(body, dict) and (name := output_table_of(body))), None)
    if named is not None:
        report.good(f"{where}: job answers carry jobMetadata.workflowOutputTableName (e.g. {named}): a result block "
                    "without table reads it")
        return
    readers = ", ".join(target.readers) or "none of the checked workflows"
    report.note(f"{where}: no job answer seen carries jobMetadata.workflowOutputTableName (a workflow ending in an "
                f"MCP Tool Output in Async mode names its output there); result blocks without table: {readers}")


def _follow(session: Session, connection: str, job_id: str, timeout_s: float) -> Call | None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = session.call("status", "GET", f"/v3/sql/{connection}/job/{job_id}")
        if last.status == 200 and isinstance(last.body, dict) and parse_status(job_id, last.body).outcome:
            return last
        time.sleep(POLL_EVERY_S)
    return last


def _verdict(report: Report, where: str, entry: Mapping[str, Any] | None, final: Call | None, key: str,
             listed: Call) -> None:
    body = final.body if final is not None and isinstance(final.body, dict) else {}
    status = parse_status("doctor", body)
    if status.outcome == "SUCCEEDED":
        report.good(f"{where}: the job ran to its end: {status.state} (dialect {dialect_of(body) or 'unknown'})")
    else:
        message = (status.error or {}).get("message") or status.state or (final.error if final else "no answer")
        report.bad(f"{where}: the job did not succeed ({status.outcome or 'still running'}): {message}")
    if final is not None:
        report.timing(final)
    if entry is None:
        report.bad(f"{where}: the job is not in the job list (GET /v3/sql/jobs): crash reconciliation cannot find "
                   "a job whose answer was lost")
        report.timing(listed)
        return
    listed_metadata, on_job = carries_metadata(entry, key), carries_metadata(body, key)
    marker = carries_marker(entry, key) or carries_marker(body, key)
    report.good(f"{where}: the job is in the job list")
    report.timing(listed)
    if listed_metadata:
        report.good(f"{where}: metadata came back in the job list: crash reconciliation finds lost jobs by it")
    elif on_job:
        report.bad(f"{where}: the job list drops metadata (only the job itself keeps it): reconciliation has to ask "
                   f"for listed jobs one by one{', then falls back to the marker' if marker else ''}")
    else:
        report.bad(f"{where}: metadata did not come back (neither in the list nor on the job)"
                   f"{': crash reconciliation relies on the marker alone' if marker else ''}")
    if marker:
        report.good(f"{where}: the marker comment came back in the job's query")
    else:
        report.bad(f"{where}: the marker comment did not come back in the job's query")
    if not listed_metadata and not on_job and not marker:
        report.bad(f"{where}: crash reconciliation will not work: a job whose answer is lost cannot be found again")


def _error_text(call: Call) -> str:
    body = call.body
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body.get("detail") or body)[:300]
    return str(body or call.error or "")[:300]


def _save(path: Path, sessions: list[Session]) -> None:
    calls = [{"account": s.base_url, **call.__dict__} for s in sessions for call in s.calls]
    text = json.dumps({"tool": "python -m gateway doctor", "calls": calls}, indent=2, default=str)
    for session in sessions:
        if session.token:
            text = text.replace(session.token, "[token]")
    path.write_text(text + "\n", encoding="utf-8")
