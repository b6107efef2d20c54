"""Cloud Functions entry points: webhook, poll, submit, sweep, console. Thin: the logic lives in `gateway/`.

The function named by FUNCTION_TARGET builds its instance when the process starts (`entrypoints.start`): a bad
workflow file or a missing secret stops the worker before it answers anything. Only `webhook` loads the
webhook secrets: the Pub/Sub-triggered functions, `sweep` and `console` never verify one. Whatever escapes a
function is answered as problem+json (`entrypoints.install`), never as an HTML page.
"""

from __future__ import annotations

import functools
import os
import threading

import flask
import functions_framework

from gateway import entrypoints
from gateway.app import App

_building = threading.Lock()


@functools.cache
def _build(verify_senders: bool) -> App:
    return App.from_env(verify_senders=verify_senders)


def _app(verify_senders: bool = True) -> App:
    """This instance's App, built once: concurrent first requests wait for one build instead of racing
    (functools.cache alone lets each of them build one, and their ledgers open the same file at once)."""
    with _building:
        return _build(verify_senders)


if flask.has_app_context():  # loaded by functions-framework to serve FUNCTION_TARGET (not a plain import)
    entrypoints.install(flask.current_app)
    entrypoints.start(os.environ.get("FUNCTION_TARGET", ""), _app)


@functions_framework.http
def webhook(request):
    """POST /hooks/{workflow} and the rest of the HTTP surface (README, "HTTP surface")."""
    return entrypoints.webhook(_app(verify_senders=True), request)


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
