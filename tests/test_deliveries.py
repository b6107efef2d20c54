"""`GET /deliveries/{key}`: one delivery's record for operators (the `status_url` of a delivery accepted
before it had a job), and `python -m gateway status` given a delivery key instead of a job id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest

from tests.apptools import operator_headers
from tests.constants import CARTO_TOKEN, OPERATOR_TOKEN, ROOT, SECRET
from tests.rigs import BODY, msg, served


def deliver(rig, msg_id: str | None = None):
    msg_id = msg_id or msg()
    answer = rig.post("store-clusters", BODY, msg_id=msg_id)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    return f"store-clusters:{msg_id}", answer.get_json()


def get(rig, key: str, headers: dict[str, str] | None = None):
    return rig.client("webhook").get(f"/deliveries/{quote(key, safe='')}",
                                     headers=operator_headers() if headers is None else headers)


def test_an_operator_reads_a_deliverys_record_by_its_key(rig):
    key, accepted = deliver(rig)

    answer = get(rig, key)

    assert answer.status_code == 200 and answer.content_type == "application/json"
    record = answer.get_json()
    assert record["key"] == key and record["workflow"] == "store-clusters"
    assert record["job_id"] == accepted["job_id"] and record["job_url"] == f"/jobs/{accepted['job_id']}"
    assert record["delivery_id"] == accepted["delivery_id"] and record["state"] in ("submitted", "tracked")
    assert record["parameters"] == {"number_of_clusters": 2, "buffer_radius": 500, "store_type": "Supermarket"}
    assert record["created_at"].endswith("Z") and record["submitted_at"].endswith("Z")


def test_the_record_is_what_the_openapi_document_says(rig):
    import jsonschema

    key, _ = deliver(rig)
    document = rig.client("webhook").get("/openapi.json", headers=operator_headers()).get_json()

    operation = document["paths"]["/deliveries/{key}"]["get"]
    assert operation["security"] and "401" in operation["responses"]
    jsonschema.validate(get(rig, key).get_json(), document["components"]["schemas"]["Delivery"])


def test_the_record_shows_no_secret_and_none_of_the_ledgers_bookkeeping(rig):
    key, _ = deliver(rig)

    text = get(rig, key).get_data(as_text=True)

    record = json.loads(text)
    assert "fingerprint" not in record and "claim_token" not in record
    for secret in (CARTO_TOKEN, SECRET, OPERATOR_TOKEN):
        assert secret not in text


def deliver_order(rig, order_id: str):
    """A delivery of the test workflow whose idempotency key is the body's /order/id: any string."""
    answer = rig.post("idem-pointer", {"total": 1.5, "order": {"id": order_id}})
    assert answer.status_code == 202, answer.get_data(as_text=True)
    return f"idem-pointer:{order_id}", answer.get_json()


def test_a_key_with_any_character_is_found_percent_encoded(rig):
    key, _ = deliver_order(rig, "order/42 ?#%:é")
    assert get(rig, key).get_json()["key"] == key


@pytest.mark.parametrize("headers", [{}, operator_headers("not-the-operator-token")], ids=["none", "wrong"])
def test_without_an_operator_credential_it_is_a_401_before_any_lookup(rig, headers):
    key, _ = deliver(rig)

    for path_key in (key, "store-clusters:no-such-delivery"):
        answer = get(rig, path_key, headers)
        assert answer.status_code == 401 and answer.get_json()["code"] == "not-an-operator"
        assert answer.content_type == "application/problem+json"


def test_a_senders_signature_is_no_operator_credential(rig):
    key, _ = deliver(rig)
    signed = rig.headers("store-clusters", b"")
    assert get(rig, key, signed).status_code == 401


def test_an_unknown_key_is_a_404_problem_that_does_not_echo_it(rig):
    answer = get(rig, "store-clusters:<script>no-such</script>")
    assert answer.status_code == 404 and answer.content_type == "application/problem+json"
    assert "<script>" not in answer.get_data(as_text=True)


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_other_methods_are_a_405(rig, method):
    key, _ = deliver(rig)
    answer = rig.client("webhook").open(f"/deliveries/{quote(key, safe='')}", method=method,
                                        headers=operator_headers())
    assert answer.status_code == 405 and answer.headers["Allow"] == "GET"


def test_an_empty_key_is_no_route(rig):
    assert rig.client("webhook").get("/deliveries/", headers=operator_headers()).status_code == 404


# --- python -m gateway status KEY -----------------------------------------------------------------------

def gateway_status(identifier: str, url: str):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_OPERATOR")}
    return subprocess.run([sys.executable, "-m", "gateway", "status", identifier, "--url", url], cwd=ROOT,
                          env={**clean, "GATEWAY_OPERATOR_TOKENS": OPERATOR_TOKEN}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_status_takes_a_delivery_key_as_well_as_a_job_id(rig):
    key, accepted = deliver_order(rig, "order/7:x")
    with served(rig.client("webhook").application) as url:
        by_key = gateway_status(key, url)
        by_job = gateway_status(accepted["job_id"], url)
        neither = gateway_status("store-clusters:no-such-delivery", url)

    assert by_key.returncode == 0, by_key.stderr
    assert json.loads(by_key.stdout)["key"] == key and json.loads(by_key.stdout)["job_id"] == accepted["job_id"]
    assert by_job.returncode == 0, by_job.stderr
    assert json.loads(by_job.stdout)["job_id"] == accepted["job_id"]
    assert neither.returncode == 1 and "HTTP 404" in neither.stderr
    assert OPERATOR_TOKEN not in by_key.stdout + by_key.stderr + neither.stderr
