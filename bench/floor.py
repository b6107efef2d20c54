"""The floor of the full path: a functions-framework function that makes only the two outbound calls
every accepted webhook needs (submit the CARTO job, publish the tracking message), with the leanest
clients at hand (http.client keep-alive per thread; the same GAPIC publish the gateway uses), and
answers `{}`. No authentication, validation, ledger or logging. Served exactly like `webhook`.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from urllib.parse import urlsplit

import functions_framework

_local = threading.local()
_QUERY = ("CALL `carto-dw-ac-jfjjof5m.workflows_temp_x.workflow_procedure_09cc2e19ad5bbc6f`"
          "(@number_of_clusters,@buffer_radius,@store_type)")
_PARAMETERS = {"number_of_clusters": 2, "buffer_radius": 500, "store_type": "Supermarket"}


def _carto() -> http.client.HTTPConnection:
    if getattr(_local, "carto", None) is None:
        base = urlsplit(os.environ["CARTO_API_BASE_URL"])
        _local.carto = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
    return _local.carto


def _publisher():
    if getattr(_local, "publisher", None) is None:
        from google.pubsub_v1 import PublisherClient

        _local.publisher = PublisherClient()
    return _local.publisher


@functions_framework.http
def floor(request):
    """Submit one job, publish one message, answer `{}`."""
    connection = _carto()
    connection.request("POST", "/v3/sql/carto_dw/job", body=json.dumps({"query": _QUERY, "queryParameters": _PARAMETERS}),
                       headers={"Authorization": f"Bearer {os.environ['CARTO_API_TOKEN']}",
                                "Content-Type": "application/json"})
    job = json.loads(connection.getresponse().read())
    publisher = _publisher()
    topic = publisher.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], os.environ["GATEWAY_JOBS_TOPIC"])
    publisher.publish(request={"topic": topic, "messages": [{"data": job["externalId"].encode()}]}, timeout=10)
    return {}
