"""Settings of one instance, read once from the environment (README, "Settings").

Every missing or invalid variable is reported together, so a deployment is fixed in one round.
Secrets are wrapped in `Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.errors import ConfigError

DEFAULT_LEDGER = "sqlite:///.state/ledger.sqlite3"
_QUEUE = re.compile(r"projects/[^/\s]+/locations/[^/\s]+/queues/[A-Za-z0-9-]{1,100}")
_VISIBLE = re.compile(r"[\x21-\x7e]+")
_EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+")
_HOST = re.compile(r"(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?", re.ASCII)
_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+(?:/[\x21-\x7e]*)?", re.ASCII)


@dataclass(frozen=True)
class Secret:
    """A secret value that never shows itself in repr, str or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def reveal(self) -> str:
        return self.value


@dataclass(frozen=True)
class Settings:
    """Everything an instance needs, validated at load time."""

    schemas_dir: Path
    carto_api_base_url: str | None
    carto_api_token: Secret | None
    carto_client_id: str | None
    carto_client_secret: Secret | None
    carto_auth_url: str
    project: str
    jobs_topic: str
    events_topic: str
    requests_topic: str
    ledger: str
    max_body_bytes: int
    poll_inline_s: float
    submit_inline_s: float
    poll_first_s: float
    poll_factor: float
    sweep_grace_s: float
    tasks_queue: str | None
    poll_url: str | None
    tasks_service_account: str | None
    cloud_tasks_emulator_host: str | None
    retention_s: int
    carto_timeout_s: float
    operator_tokens: tuple[Secret, ...]
    operators: frozenset[str]
    console_hosts: tuple[str, ...]
    operator_audiences: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False, compare=False)
    result_budget_s: float = 20.0
    result_max_bytes: int = 256 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `env` (default: os.environ); raise one ConfigError naming all problems."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        token = env.get("CARTO_API_TOKEN") or None
        client_id = env.get("CARTO_CLIENT_ID") or None
        client_secret = env.get("CARTO_CLIENT_SECRET") or None
        if bool(client_id) != bool(client_secret):
            reader.problems.append("CARTO_CLIENT_ID and CARTO_CLIENT_SECRET must be set together")
        settings = cls(
            schemas_dir=Path(env.get("GATEWAY_SCHEMAS_DIR") or "schemas"),
            carto_api_base_url=(env.get("CARTO_API_BASE_URL") or "").rstrip("/") or None,
            carto_api_token=Secret(token) if token else None,
            carto_client_id=client_id,
            carto_client_secret=Secret(client_secret) if client_secret else None,
            carto_auth_url=env.get("CARTO_AUTH_URL") or "https://auth.carto.com/oauth/token",
            project=env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT") or "local-project",
            jobs_topic=env.get("GATEWAY_JOBS_TOPIC") or "workflow-jobs",
            events_topic=env.get("GATEWAY_EVENTS_TOPIC") or "workflow-job-events",
            requests_topic=env.get("GATEWAY_REQUESTS_TOPIC") or "workflow-requests",
            ledger=reader.ledger("GATEWAY_LEDGER", DEFAULT_LEDGER),
            max_body_bytes=reader.integer("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
            poll_inline_s=reader.number("GATEWAY_POLL_INLINE_S", 5.0, minimum=0),
            submit_inline_s=reader.number("GATEWAY_SUBMIT_INLINE_S", 2.0, minimum=0.1),
            poll_first_s=reader.number("GATEWAY_POLL_FIRST_S", 1.0, minimum=0.05),
            poll_factor=reader.number("GATEWAY_POLL_FACTOR", 1.25, minimum=1.01),
            sweep_grace_s=reader.number("GATEWAY_SWEEP_GRACE_S", 120.0, minimum=1),
            tasks_queue=reader.queue("GATEWAY_TASKS_QUEUE"),
            poll_url=env.get("GATEWAY_POLL_URL") or None,
            tasks_service_account=env.get("GATEWAY_TASKS_SERVICE_ACCOUNT") or None,
            cloud_tasks_emulator_host=env.get("CLOUD_TASKS_EMULATOR_HOST") or None,
            retention_s=reader.integer("GATEWAY_RETENTION_S", 7 * 24 * 3600, minimum=72 * 3600),
            carto_timeout_s=reader.number("CARTO_TIMEOUT_S", 30.0, minimum=0.1),
            operator_tokens=reader.tokens("GATEWAY_OPERATOR_TOKENS"),
            operators=reader.emails("GATEWAY_OPERATORS"),
            console_hosts=reader.hosts("GATEWAY_CONSOLE_HOSTS"),
            operator_audiences=reader.urls("GATEWAY_OPERATOR_AUDIENCES"),
            env=env,
            result_budget_s=reader.number("GATEWAY_RESULT_BUDGET_S", 20.0, minimum=0.1),
            # Pub/Sub takes 10 MB a message; the event's other fields stay far below the rest.
            result_max_bytes=reader.integer("GATEWAY_RESULT_MAX_BYTES", 256 * 1024, minimum=1024),
        )
        if settings.tasks_queue and not (settings.tasks_service_account or settings.cloud_tasks_emulator_host):
            reader.problems.append("GATEWAY_TASKS_SERVICE_ACCOUNT must be set with GATEWAY_TASKS_QUEUE: the tasks "
                                   "call poll with an OIDC token of that account (outside the emulator)")
        if reader.problems:
            raise ConfigError("invalid settings:\n- " + "\n- ".join(reader.problems))
        return settings


class _Reader:
    """Parses typed variables, collecting problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.env.get(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name} must be an integer, got {raw!r}")
            return default
        if value < minimum:
            self.problems.append(f"{name} must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float) -> float:
        raw = self.env.get(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name} must be a number, got {raw!r}")
            return default
        if not value >= minimum:
            self.problems.append(f"{name} must be at least {minimum}, got {raw}")
        return value

    def queue(self, name: str) -> str | None:
        raw = self.env.get(name) or None
        if raw is not None and not _QUEUE.fullmatch(raw):
            self.problems.append(f"{name} must be a full queue path projects/P/locations/L/queues/Q, got {raw!r}")
        return raw

    def tokens(self, name: str) -> tuple[Secret, ...]:
        """Comma-separated bearer tokens (spaces and a trailing newline around each are dropped)."""
        tokens = tuple(token.strip() for token in (self.env.get(name) or "").split(","))
        tokens = tuple(token for token in tokens if token)
        if not all(_VISIBLE.fullmatch(token) for token in tokens):  # never echo a token
            self.problems.append(f"{name}: each token must be visible ASCII without spaces (it is sent in a header)")
        return tuple(Secret(token) for token in tokens)

    def emails(self, name: str) -> frozenset[str]:
        emails = [email.strip() for email in (self.env.get(name) or "").split(",")]
        emails = [email for email in emails if email]
        bad = [email for email in emails if not _EMAIL.fullmatch(email)]
        if bad:
            self.problems.append(f"{name} must list email addresses, got {', '.join(map(repr, bad))}")
        return frozenset(emails)

    def hosts(self, name: str) -> tuple[str, ...]:
        """Comma-separated `host[:port]` values, or URLs whose host is taken; lower case."""
        hosts = []
        for entry in (self.env.get(name) or "").split(","):
            entry = entry.strip().lower()
            if "://" in entry:
                entry = urlsplit(entry).netloc
            if entry and not _HOST.fullmatch(entry):
                self.problems.append(f"{name} must list host[:port] values or URLs, got {entry[:100]!r}")
            elif entry:
                hosts.append(entry)
        return tuple(hosts)

    def urls(self, name: str) -> tuple[str, ...]:
        """Comma-separated http(s) URLs, without a trailing slash."""
        urls = tuple(url.strip().rstrip("/") for url in (self.env.get(name) or "").split(",") if url.strip())
        bad = [url for url in urls if not _URL.fullmatch(url)]
        if bad:
            self.problems.append(f"{name} must list http(s) URLs, got {', '.join(repr(u[:100]) for u in bad)}")
        return urls

    def ledger(self, name: str, default: str) -> str:
        raw = self.env.get(name) or default
        if not (raw.startswith("sqlite:///") or raw.startswith("firestore://")):
            self.problems.append(f"{name} must be sqlite:///PATH or firestore://COLLECTION, got {raw!r}")
        return raw

