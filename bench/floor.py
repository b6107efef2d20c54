"""The floors of the full path: functions-framework functions that make only the outbound calls every
accepted webhook needs, with the leanest clients at hand, and answer `{}`. No authentication,
validation, mapping or logging. Served exactly like `webhook`.

- `floor`: submit the CARTO job (http.client keep-alive per thread) and publish the tracking message
  (the same GAPIC publish the gateway uses). The embedded ledger's writes are local, so this is the
  floor of the SQLite configuration.
- `floor_firestore`: the same two calls plus the fewest Firestore RPCs a durable, exactly-once record
  needs, made with the client the gateway's Firestore ledger uses (google-cloud-firestore): a
  `create` (the claim, before the job) and one `update` guarded by the created document's update time
  (the job id, before the answer). The floor of the deployed configuration.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import uuid
from urllib.parse import urlsplit

import functions_framework

_local = threading.local()
_lock = threading.Lock()
_shared: dict[str, object] = {}
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


def _documents():
    """One Firestore client per process (as the gateway keeps one per instance)."""
    with _lock:
        if "documents" not in _shared:
            from gateway.ledger.firestore_rest import DocumentsRest

            _shared["documents"] = DocumentsRest(os.environ["GOOGLE_CLOUD_PROJECT"], None,
                                                 os.environ.get("BENCH_FLOOR_COLLECTION", "floor"))
        return _shared["documents"]


def _submit() -> str:
    connection = _carto()
    connection.request("POST", "/v3/sql/carto_dw/job", body=json.dumps({"query": _QUERY, "queryParameters": _PARAMETERS}),
                       headers={"Authorization": f"Bearer {os.environ['CARTO_API_TOKEN']}",
                                "Content-Type": "application/json"})
    return json.loads(connection.getresponse().read())["externalId"]


def _publish(job_id: str) -> None:
    publisher = _publisher()
    topic = publisher.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], os.environ["GATEWAY_JOBS_TOPIC"])
    publisher.publish(request={"topic": topic, "messages": [{"data": job_id.encode()}]}, timeout=10)


@functions_framework.http
def floor(request):
    """Submit one job, publish one message, answer `{}`."""
    _publish(_submit())
    return {}


@functions_framework.http
def floor_firestore(request):
    """Create the record, submit one job, record its id under the create's update time, publish, answer `{}`."""
    documents, doc_id = _documents(), uuid.uuid4().hex
    created = documents.create(doc_id, {"state": "claimed", "job_id": None})
    job_id = _submit()
    documents.update(doc_id, {"state": "submitted", "job_id": job_id}, (), created)
    _publish(job_id)
    return {}
