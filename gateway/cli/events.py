"""`python -m gateway events`: print completion events as they arrive.

Reads GATEWAY_EVENTS_TOPIC (project GOOGLE_CLOUD_PROJECT, default local-project; the client library
honours PUBSUB_EMULATOR_HOST) through a pull subscription: a temporary one it creates, filtered
server-side on the `workflow` / `outcome` attributes and deleted on exit, or an existing one
(`--subscription`), filtered here. Reading consumes: every message pulled is acked, whether it
was printed or filtered out, so point `--subscription` only at a subscription meant for watching.

Formatting is pure (`format_line`, `format_json`); `watch` does the I/O.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from gateway.errors import ConfigError
from gateway.events import EVENT_TYPES
from gateway.workflows import NAME_PATTERN

OUTCOMES = tuple(EVENT_TYPES)  # every outcome an event can carry, SUPERSEDED included

PULL_BATCH = 50
PULL_TIMEOUT_S = 30.0
# A temporary subscription left behind by a killed watcher deletes itself after a day (the minimum).
EXPIRES_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class Event:
    """One message as pulled from the events topic."""

    attributes: dict[str, str]
    data: bytes

    def body(self) -> Any:
        """The JSON data, or None when it is not JSON."""
        try:
            return json.loads(self.data)
        except (ValueError, UnicodeDecodeError):
            return None


@dataclass(frozen=True)
class Filters:
    """Which events to show: by workflow and outcome, both optional."""

    workflow: str | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        if self.workflow is not None and not NAME_PATTERN.fullmatch(self.workflow):
            raise ConfigError(f"--workflow must be a workflow name ({NAME_PATTERN.pattern})")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ConfigError(f"--outcome must be one of {', '.join(OUTCOMES)}")

    def expression(self) -> str:
        """The Pub/Sub subscription filter (https://cloud.google.com/pubsub/docs/subscription-message-filter)."""
        terms = [f'attributes.{name} = "{value}"' for name, value in self._wanted()]
        return " AND ".join(terms)

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """True if the event's attributes pass every filter."""
        return all(attributes.get(name) == value for name, value in self._wanted())

    def _wanted(self) -> list[tuple[str, str]]:
        # Values were checked above: names and outcomes hold no quote or backslash to escape.
        return [(name, value) for name, value in (("workflow", self.workflow), ("outcome", self.outcome)) if value]


def format_line(event: Event) -> str:
    """A human one-liner: time, outcome, workflow, job id, duration and the error message if any."""
    body = event.body()
    data = body if isinstance(body, dict) else {}
    attributes = event.attributes
    when = attributes.get("ce-time") or data.get("finished_at") or "-"
    outcome = attributes.get("outcome") or data.get("outcome") or "?"
    workflow = attributes.get("workflow") or data.get("workflow") or "?"
    job_id = attributes.get("job_id") or data.get("job_id") or "?"
    duration = data.get("duration_s")
    parts = [when, f"{outcome:<9}", workflow, job_id,
             f"{duration:.1f}s" if isinstance(duration, (int, float)) and not isinstance(duration, bool) else "-"]
    error = data.get("error")
    if isinstance(error, dict) and error.get("message"):
        reason = f"[{error['reason']}] " if error.get("reason") else ""
        parts.append(reason + " ".join(str(error["message"]).split()))
    elif body is None:
        parts.append("(data is not JSON)")
    return "  ".join(parts)


def format_json(event: Event) -> str:
    """The raw event as one JSON line: attributes and data (as JSON, or text when it is not JSON)."""
    body = event.body()
    data = body if body is not None or event.data.strip() == b"null" else event.data.decode("utf-8", "replace")
    return json.dumps({"attributes": dict(sorted(event.attributes.items())), "data": data}, ensure_ascii=False)


def watch(args: Any, *, env: Mapping[str, str] | None = None, subscriber: Any = None, out: TextIO | None = None,
          ready: Callable[[str], None] | None = None) -> int:
    """Print events until `--max` of them or Ctrl-C; exit status 0. `ready` is told the subscription path."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    filters = Filters(args.workflow, args.outcome)
    render = format_json if args.json else format_line
    project = env.get("GOOGLE_CLOUD_PROJECT") or "local-project"
    topic = env.get("GATEWAY_EVENTS_TOPIC") or "workflow-job-events"
    subscriber = subscriber or _subscriber()
    created = None
    try:
        with _refusals_in_one_line():
            path = _existing(subscriber, project, args.subscription) if args.subscription else None
            if path is None:
                path = created = _create(subscriber, project, topic, filters)
            (ready or _announce)(path)
            _pump(subscriber, path, filters, render, out, max(0, args.max or 0))
    except KeyboardInterrupt:
        pass
    finally:
        if created is not None:
            _delete(subscriber, created)
    return 0


NO_PUBSUB = ("no Pub/Sub to read: export PUBSUB_EMULATOR_HOST=127.0.0.1:8085 for the local stack's emulator "
             "(make dev), or run `gcloud auth application-default login` for a project's topic")


LOGIN = "run `gcloud auth application-default login`"
# How a gRPC call says its credentials could not be refreshed (an UNAVAILABLE the client library retries).
PLUGIN_FAILED = "Getting metadata from plugin failed"


def _subscriber() -> Any:
    from google.cloud import pubsub_v1

    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return pubsub_v1.SubscriberClient()
    return pubsub_v1.SubscriberClient(credentials=_credentials())


def _credentials() -> Any:
    """The application default credentials, refreshed once here: expired or revoked ones are one line now,
    not a minute of the client library retrying and then its traceback."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError
    from google.auth.transport.requests import Request

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError as exc:
        if not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):  # neither an emulator nor credentials
            raise ConfigError(NO_PUBSUB) from None
        raise ConfigError(f"the credentials in GOOGLE_APPLICATION_CREDENTIALS cannot be used ({_first_line(exc)}): "
                          f"point it at a valid key file, or unset it and {LOGIN}") from None
    try:
        credentials.refresh(Request())
    except RefreshError as exc:
        raise ConfigError(f"the Google credentials were refused ({_first_line(exc)}): {LOGIN}") from None
    except TransportError as exc:
        raise ConfigError(f"cannot refresh the Google credentials: {_first_line(exc)}") from None
    return credentials


@contextmanager
def _refusals_in_one_line() -> Iterator[None]:
    """Pub/Sub refusing the credentials, or them failing to refresh, as one ConfigError line saying what to do."""
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    try:
        yield
    except (RefreshError, DefaultCredentialsError) as exc:
        raise ConfigError(f"the Google credentials were refused ({_first_line(exc)}): {LOGIN}") from None
    except exceptions.Unauthenticated as exc:
        raise ConfigError(f"Pub/Sub refused the credentials ({_first_line(exc)}): {LOGIN}") from None
    except exceptions.PermissionDenied as exc:
        raise ConfigError(f"Pub/Sub refused the request ({_first_line(exc)}): {LOGIN} as an account that may "
                          "create and read subscriptions of the topic (roles/pubsub.editor), or pass --subscription "
                          "with one you may read (roles/pubsub.subscriber)") from None
    except (exceptions.ServiceUnavailable, exceptions.RetryError) as exc:
        if PLUGIN_FAILED not in str(exc):
            raise
        raise ConfigError(f"the Google credentials could not be refreshed ({_first_line(exc)}): {LOGIN}") from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _announce(path: str) -> None:
    print(f"watching {path} (Ctrl-C to stop)", file=sys.stderr, flush=True)


def _existing(subscriber: Any, project: str, name: str) -> str:
    return name if name.startswith("projects/") else subscriber.subscription_path(project, name)


def _create(subscriber: Any, project: str, topic: str, filters: Filters) -> str:
    from google.api_core import exceptions

    path = subscriber.subscription_path(project, f"gateway-events-watch-{uuid.uuid4().hex[:12]}")
    request = {"name": path, "topic": f"projects/{project}/topics/{topic}", "ack_deadline_seconds": 60,
               "expiration_policy": {"ttl": {"seconds": EXPIRES_AFTER_S}}}
    if filters.expression():
        request["filter"] = filters.expression()
    try:
        subscriber.create_subscription(request=request)
    except exceptions.NotFound:
        raise ConfigError(f"no topic projects/{project}/topics/{topic} (set GATEWAY_EVENTS_TOPIC)") from None
    return path


def _delete(subscriber: Any, path: str) -> None:
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError

    try:
        subscriber.delete_subscription(request={"subscription": path})
    except (exceptions.GoogleAPICallError, exceptions.RetryError, GoogleAuthError):
        print(f"could not delete {path}; it expires by itself within a day", file=sys.stderr)


def _pump(subscriber: Any, path: str, filters: Filters, render: Callable[[Event], str], out: TextIO,
          limit: int) -> None:
    """Pull, print and ack until `limit` events were printed (0: forever)."""
    printed = 0
    while not limit or printed < limit:
        # Never pull more than may still be printed: what is pulled is acked, and so consumed.
        received = _pull(subscriber, path, min(PULL_BATCH, limit - printed) if limit else PULL_BATCH)
        for message in received:
            event = Event(dict(message.message.attributes), bytes(message.message.data))
            if filters.matches(event.attributes):
                print(render(event), file=out, flush=True)
                printed += 1
        if received:
            subscriber.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in received]})


def _pull(subscriber: Any, path: str, count: int) -> list[Any]:
    from google.api_core import exceptions

    try:
        answer = subscriber.pull(request={"subscription": path, "max_messages": count}, timeout=PULL_TIMEOUT_S)
    except exceptions.DeadlineExceeded:  # nothing arrived in time: pull again
        return []
    except exceptions.NotFound:
        raise ConfigError(f"subscription {path} does not exist") from None
    return list(answer.received_messages)
