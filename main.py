"""Cloud Functions entry points: webhook, poll, submit, sweep, console. Thin: the logic lives in `gateway/`.

Each instance builds its clients once, on first use (`_app`), and reuses them for every request.
Only `webhook` loads the webhook secrets: the Pub/Sub-triggered functions, `sweep` and `console` never verify one.
"""

from __future__ import annotations

import functools

import functions_framework

from gateway import entrypoints
from gateway.app import App


@functools.cache
def _app(verify_senders: bool = True) -> App:
    return App.from_env(verify_senders=verify_senders)


@functions_framework.http
def webhook(request):
    """POST /hooks/{workflow} and the rest of the HTTP surface (README, "HTTP surface")."""
    return entrypoints.webhook(_app(), request)


@functions_framework.cloud_event
def poll(cloud_event):
    """Tracking topic (first check) and check tasks (each later one) → one completion event. Raises only
    when a dependency is down, so the subscription or the queue retries."""
    entrypoints.poll(_app(verify_senders=False), cloud_event)


@functions_framework.cloud_event
def submit(cloud_event):
    """Requests topic → the same path as a webhook, minus the signature (IAM protects the topic)."""
    entrypoints.submit(_app(verify_senders=False), cloud_event)


@functions_framework.http
def sweep(request):
    """Cloud Scheduler → re-drive deliveries stuck between states."""
    return entrypoints.sweep(_app(verify_senders=False), request)


@functions_framework.http
def console(request):
    """The operators' console: recent deliveries, one delivery's story, cancel and re-run (README, "Console")."""
    return entrypoints.console(_app(verify_senders=False), request)
