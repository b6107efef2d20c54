"""The composition root: builds every client of one instance from its settings, once.

`main.py` keeps one `App` per instance (built when the process starts); tests build their
own with injected fakes or real loopback servers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import logs
from gateway.admission import Admission
from gateway.auth.config import default_id_token_verifier
from gateway.auth.operators import Operators
from gateway.carto import CartoClient, ClientCredentials, StaticToken, TokenSource
from gateway.clock import Clock, SystemClock
from gateway.errors import ConfigError
from gateway.events import Publisher, event_source
from gateway.intake import Intake
from gateway.ledger import Ledger, open_ledger
from gateway.outbound import Http
from gateway.poller import Poller, Schedule, Scheduler
from gateway.pubsub import PubSubPublisher
from gateway.results import ResultReader, ResultSpec
from gateway.settings import Secret, Settings
from gateway.sweeper import Sweeper
from gateway.tasks import CloudTasksScheduler
from gateway.workflows import Registry, load_registry


@dataclass
class App:
    """Everything one instance needs, wired together."""

    settings: Settings
    registry: Registry
    carto: CartoClient
    ledger: Ledger
    publisher: Publisher
    intake: Intake
    poller: Poller
    sweeper: Sweeper
    clock: Clock
    scheduler: Scheduler
    operators: Operators
    admission: Admission

    @classmethod
    def build(cls, settings: Settings, *, registry: Registry | None = None, http: Http | None = None,
              ledger: Ledger | None = None, publisher: Publisher | None = None, clock: Clock | None = None,
              scheduler: Scheduler | None = None, id_token_verifier: Any = None) -> App:
        """Wire an instance; every client may be injected."""
        clock = clock or SystemClock()
        registry = registry or load_registry(settings.schemas_dir, settings.env, id_token_verifier=id_token_verifier)
        _check_carto_settings(settings, registry)
        http = http or Http()
        carto = CartoClient(http, _tokens(settings, http, clock.now), timeout_s=settings.carto_timeout_s,
                            sleep=clock.sleep, workflow_tokens=_workflow_tokens(settings, registry))
        ledger = ledger or open_ledger(settings.ledger, project=settings.project)
        publisher = publisher or PubSubPublisher(settings.project)
        source = event_source(settings.project)
        scheduler = scheduler or CloudTasksScheduler(
            queue=settings.tasks_queue, poll_url=settings.poll_url, service_account=settings.tasks_service_account,
            source=source, emulator_host=settings.cloud_tasks_emulator_host)
        poller = Poller(carto=carto, ledger=ledger, publisher=publisher, events_topic=settings.events_topic,
                        source=source, clock=clock, schedule=Schedule(settings.poll_first_s, settings.poll_factor),
                        inline_s=settings.poll_inline_s, scheduler=scheduler, sweep_grace_s=settings.sweep_grace_s,
                        results=ResultReader(carto, _result_specs(registry), budget_s=settings.result_budget_s,
                                             max_bytes=settings.result_max_bytes))
        intake = Intake(carto=carto, ledger=ledger, publisher=publisher, jobs_topic=settings.jobs_topic,
                        default_base_url=settings.carto_api_base_url, retention_s=settings.retention_s,
                        clock=clock, poller=poller, inline_s=settings.submit_inline_s,
                        reconcile_after_s=carto.longest_post_s)
        admission = Admission(ledger=ledger, intake=intake, poller=poller, registry=registry, clock=clock)
        sweeper = Sweeper(ledger=ledger, intake=intake, poller=poller, admission=admission, registry=registry,
                          clock=clock, sweep_grace_s=settings.sweep_grace_s)
        operators = Operators.from_settings(tuple(token.reveal() for token in settings.operator_tokens),
                                            settings.operators, _verifier(id_token_verifier))
        return cls(settings, registry, carto, ledger, publisher, intake, poller, sweeper, clock, scheduler, operators,
                   admission)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, verify_senders: bool = True) -> App:
        """An instance from the environment. Without `verify_senders` (poll, submit, sweep) the webhook
        secrets are not loaded, so those functions need no access to them; every signature then fails closed."""
        settings = Settings.from_env(env)
        logs.configure(settings.project)
        registry = load_registry(settings.schemas_dir, settings.env, require_secrets=verify_senders)
        return cls.build(settings, registry=registry)


def _result_specs(registry: Registry) -> Callable[[str], tuple[ResultSpec, str] | None]:
    """Each workflow's `result` block and warehouse, for the reader."""
    def spec(name: str) -> tuple[ResultSpec, str] | None:
        workflow = registry.get(name)
        return (workflow.result, workflow.warehouse) if workflow is not None and workflow.result else None
    return spec


def _verifier(injected: Any) -> Callable[[], Any]:
    """The ID-token verifier operators are checked with: the injected one, else Google's (built on first use)."""
    return (lambda: injected) if injected is not None else default_id_token_verifier


def _tokens(settings: Settings, http: Http, now: Callable[[], float]) -> TokenSource:
    if settings.carto_api_token is not None:
        return StaticToken(settings.carto_api_token)
    if settings.carto_client_id and settings.carto_client_secret:
        return ClientCredentials(http, settings.carto_auth_url, settings.carto_client_id,
                                 settings.carto_client_secret, clock=now)
    raise ConfigError("set CARTO_API_TOKEN, or CARTO_CLIENT_ID and CARTO_CLIENT_SECRET")


def _workflow_tokens(settings: Settings, registry: Registry) -> dict[str, TokenSource]:
    """Workflows whose `carto.token` names their own token variable (resolved once, kept as a Secret)."""
    tokens: dict[str, TokenSource] = {}
    for workflow in registry.workflows.values():
        if workflow.token_env:
            value = settings.env.get(workflow.token_env)
            if not value:
                raise ConfigError(f"workflow {workflow.name}: environment variable {workflow.token_env} is not set")
            tokens[workflow.name] = StaticToken(Secret(value))
    return tokens


def _check_carto_settings(settings: Settings, registry: Registry) -> None:
    missing = [w.name for w in registry.workflows.values() if not (w.api_base_url or settings.carto_api_base_url)]
    if missing:
        raise ConfigError(f"CARTO_API_BASE_URL is not set and workflows {', '.join(missing)} do not set carto.api_base_url")
