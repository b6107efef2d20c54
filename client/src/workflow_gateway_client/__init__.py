"""Trigger CARTO workflows through the webhook gateway, and read its completion events.

    trigger(url, workflow, payload)            POST /hooks/{workflow} with a Google ID token
    publish_request(project, workflow, payload) a message on the requests topic ([pubsub] extra)
    parse_event(cloud_event_or_message)         a completion event, typed and checked (with the
                                                workflow's rows in `.result` when its file asks for them)

Errors: `GatewayError` (status, code, errors, retryable) when the gateway did not take a request;
`MalformedEvent` (a ValueError) when a message is not a completion event.
"""

from workflow_gateway_client._events import FIELDS, OUTCOMES, Column, JobError, JobEvent, JobResult, parse_event
from workflow_gateway_client._http import DEFAULT_RETRY, NO_RETRY, GoogleIdTokens, RetryPolicy, Triggered, trigger
from workflow_gateway_client._pubsub import DEFAULT_REQUESTS_TOPIC, Published, publish_request
from workflow_gateway_client.errors import RETRYABLE_STATUSES, FieldError, GatewayError, MalformedEvent

__all__ = [
    "DEFAULT_REQUESTS_TOPIC", "DEFAULT_RETRY", "FIELDS", "NO_RETRY", "OUTCOMES", "RETRYABLE_STATUSES",
    "Column", "FieldError", "GatewayError", "GoogleIdTokens", "JobError", "JobEvent", "JobResult", "MalformedEvent",
    "Published",
    "RetryPolicy", "Triggered", "parse_event", "publish_request", "trigger",
]
