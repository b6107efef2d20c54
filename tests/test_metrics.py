"""Operating it: the log-based metrics read the lines the gateway really writes, and every monitoring
config is what the APIs accept.

The tie: real paths run through the real functions-framework apps of main.py against the local CARTO
job API (a delivery accepted, a duplicate, refusals, jobs SUCCEEDED and FAILED, a tracking message
Pub/Sub lost and the sweeper's re-drive, a request message through `submit`), every JSON line is
captured as Cloud Logging would store it (`jsonPayload`, the function's `resource`), and each metric
of deploy/metrics/ is evaluated on them with tests/logquery.py: each clause of its filter must select
a line, its label and value extractors must find their fields. Renaming a log field fails here.

The shapes: each config, rendered as deploy renders it, parses into the API's own protobuf message
(LogMetric, Dashboard, AlertPolicy, NotificationChannel) with unknown fields refused, and names only
the metrics deploy creates or platform metrics of tests/data/platform_metrics.json.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from gateway import logs
from gateway.events import Message
from gateway.local.sandbox import serve
from tests import logquery
from tests.apptools import RecordingPublisher, RecordingScheduler, build_app, function_client, settings_env, task_delivery
from tests.constants import CARTO_TOKEN, ROOT, SECRET
from tests.deploytools import monitoring
from tests.stackutil import signed_headers

DEPLOY = ROOT / "deploy"
METRICS = sorted((DEPLOY / "metrics").glob("*.yaml"))
ALERTS = sorted((DEPLOY / "alerts").glob("*.json"))
PLATFORM = json.loads((ROOT / "tests" / "data" / "platform_metrics.json").read_text())
PREFIX = "gateway"
CHANNEL = "projects/my-gcp-project/notificationChannels/42"
# What deploy.sh passes to deploy/monitoring.py (the defaults of deploy/env.example).
VALUES = {
    "NAME_PREFIX": PREFIX, "TRACKING_SUBSCRIPTION": "eventarc-europe-west1-gateway-poll-000000-sub-000",
    "REQUESTS_SUBSCRIPTION": "eventarc-europe-west1-gateway-submit-000000-sub-000",
    "JOBS_DEAD_LETTER_SUB": "workflow-jobs-dead-letter-kept", "REQUESTS_DEAD_LETTER_SUB": "workflow-requests-dead-letter-kept",
    "TASKS_QUEUE": "gateway-poll-checks", "NOTIFICATION_CHANNELS": f'"{CHANNEL}"',
    "ALERT_FAILED_RATIO": "0.2", "ALERT_FAILED_WINDOW_S": "3600", "ALERT_WEBHOOK_5XX_RATIO": "0.05",
    "ALERT_WEBHOOK_5XX_WINDOW_S": "300", "ALERT_TRACKING_AGE_S": "900", "ALERT_REDRIVES_PER_HOUR": "20",
    "ALERT_QUEUED_WAIT_S": "900",
}
BODY = {"clusters": 2, "radius_m": 500, "store": {"type": "Supermarket"}}
LIFTED = {"severity", "time", "logging.googleapis.com/trace"}  # Cloud Logging takes these out of jsonPayload


def rendered(path: Path) -> str:
    return monitoring.render(path.read_text(), VALUES)


def metric(path: Path) -> dict[str, Any]:
    return yaml.safe_load(rendered(path))


# --- the real lines: captured from the functions while real paths run -------------------------------------


class Capture(logging.Handler):
    """Every gateway line as Cloud Logging stores it: the JSON payload, severity, the function's resource."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logs.JsonFormatter("test-project"))
        self.function = "webhook"
        self.entries: list[dict[str, Any]] = []
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.raw.append(line)
        payload = json.loads(line)
        self.entries.append({
            "jsonPayload": {k: v for k, v in payload.items() if k not in LIFTED},
            "severity": payload["severity"],
            "resource": {"type": "cloud_run_revision", "labels": {"service_name": f"{PREFIX}-{self.function}"}},
        })


def push(message, message_id: str) -> dict[str, Any]:
    return {"message": {"data": base64.b64encode(message.data).decode(), "attributes": message.attributes,
                        "messageId": message_id}, "subscription": "projects/p/subscriptions/s"}


def deliver(client, msg_id: str, body: dict = BODY, secret: str = SECRET):
    raw = json.dumps(body).encode()
    return client.post("/hooks/store-clusters", data=raw, headers=signed_headers(secret, raw, msg_id))


@pytest.fixture(scope="module")
def lines(test_schemas, tmp_path_factory) -> Capture:
    """The lines of: accepted, duplicate, bad signature, CARTO down (accepted and queued, then submitted by
    its hand-off task), SUCCEEDED, FAILED, a lost tracking message re-driven by the sweeper, a request
    message through submit."""
    capture = Capture()
    logger = logging.getLogger("gateway")
    previous = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    sandbox = serve(token=CARTO_TOKEN, default_duration_s=0.05)
    publisher = RecordingPublisher()
    env = settings_env(test_schemas, sandbox.url, tmp_path_factory.mktemp("metrics"), GATEWAY_SWEEP_GRACE_S="1",
                       CARTO_TIMEOUT_S="5")
    scheduler = RecordingScheduler()
    app = build_app(env, publisher=publisher, scheduler=scheduler)
    try:
        webhook, poll = function_client(app, "webhook"), function_client(app, "poll")
        sweep, submit = function_client(app, "sweep"), function_client(app, "submit")

        def tracked(index: int) -> None:
            capture.function = "poll"
            answer = poll.post("/", json=push(publisher.on("workflow-jobs")[index], f"t{index}"))
            assert answer.status_code == 200, answer.get_data(as_text=True)
            capture.function = "webhook"

        assert deliver(webhook, "msg_ok").status_code == 202
        assert deliver(webhook, "msg_ok").status_code == 200  # the sender's retry: a duplicate
        assert deliver(webhook, "msg_forged", secret="whsec_" + base64.b64encode(b"x" * 32).decode()).status_code == 401
        sandbox.faults.error("submit", 503, count=20)
        queued = deliver(webhook, "msg_carto_down")
        assert queued.status_code == 202 and queued.get_json()["queued"] is True
        sandbox.faults.clear()
        hand_off = scheduler.take_next()  # the queued delivery's submit task, run by poll
        assert hand_off is not None and "-s" in hand_off["task"]["name"]
        capture.function = "poll"
        body, headers = task_delivery(hand_off)
        assert poll.post("/", data=body, headers=headers).status_code in (200, 204)
        capture.function = "webhook"
        time.sleep(0.3)
        tracked(0)  # msg_ok: SUCCEEDED
        tracked(1)  # msg_carto_down, submitted by its hand-off: SUCCEEDED
        sandbox.faults.fail_jobs("Query error: boom")
        assert deliver(webhook, "msg_fails").status_code == 202
        time.sleep(0.3)
        tracked(2)  # FAILED
        publisher.fail_next = 1  # the tracking message is lost: the sweeper re-drives it
        assert deliver(webhook, "msg_untracked").status_code == 202
        time.sleep(1.2)  # past the sweeper's grace
        capture.function = "sweep"
        assert sweep.post("/").status_code == 200
        capture.function = "submit"
        request = Message(json.dumps(BODY).encode(), {"workflow": "store-clusters", "idempotency_key": "req-1"})
        assert submit.post("/", json=push(request, "r1")).status_code == 200
    finally:
        sandbox.stop()
        logger.removeHandler(capture)
        logger.setLevel(previous)
    return capture


def events_named(tree) -> set[str]:
    return {c.value for c in logquery.comparisons(tree) if c.path == ("jsonPayload", "event") and c.op == "="}


def written_by_the_gateway(event: str) -> bool:
    """Whether any gateway module (other than the list in logs.py) writes a line naming `event`."""
    return any(f'"{event}"' in path.read_text() for path in (ROOT / "gateway").rglob("*.py")
               if path.name != "logs.py")


def unmet(config: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """Why a metric is not tied to the lines: a clause no selected line meets, an extractor with no field."""
    tree = logquery.parse(config["filter"])
    selected = [entry for entry in entries if tree.matches(entry)]
    if not selected:
        return ["its filter selects no line"]
    problems = [f"no selected line meets {'.'.join(c.path)} {c.op} {c.value!r}"
                for c in logquery.comparisons(tree) if not any(c.matches(entry) for entry in selected)]
    for label, text in config.get("labelExtractors", {}).items():
        if not any(logquery.extract(text, entry) for entry in selected):
            problems.append(f"label {label}: {text} finds nothing in the selected lines")
    if "valueExtractor" in config:
        values = [logquery.extract(config["valueExtractor"], entry) for entry in selected]
        if not all(value is not None and re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", value) for value in values):
            problems.append(f"value {config['valueExtractor']} is not a number on every selected line: {values}")
    return problems


@pytest.mark.parametrize("path", METRICS, ids=lambda p: p.stem)
def test_each_metric_reads_lines_the_gateway_writes(lines, path):
    config = metric(path)
    missing = [event for event in sorted(events_named(logquery.parse(config["filter"])))
               if not written_by_the_gateway(event)]
    assert missing == []
    assert unmet(config, lines.entries) == []


@pytest.mark.parametrize("path", METRICS, ids=lambda p: p.stem)
def test_each_metric_declares_the_labels_it_extracts(path):
    config = metric(path)
    declared = {label["key"] for label in config["metricDescriptor"].get("labels", [])}
    assert declared == set(config.get("labelExtractors", {}))
    distribution = config["metricDescriptor"]["valueType"] == "DISTRIBUTION"
    assert distribution == ("valueExtractor" in config) == ("bucketOptions" in config)


def test_each_answer_class_and_outcome_of_the_scenario_is_counted_with_its_labels(lines):
    deliveries, completions = metric(DEPLOY / "metrics" / "deliveries.yaml"), metric(DEPLOY / "metrics" / "job_completions.yaml")

    def labels(config):
        tree = logquery.parse(config["filter"])
        return sorted({tuple(logquery.extract(text, entry) or "" for text in config["labelExtractors"].values())
                       for entry in lines.entries if tree.matches(entry)})

    assert set(labels(deliveries)) == {
        ("store-clusters", "accepted", ""), ("store-clusters", "duplicate", ""),
        ("store-clusters", "refused", "bad-signature")}
    queued = metric(DEPLOY / "metrics" / "deliveries_queued.yaml")
    assert labels(queued) == [("store-clusters", "carto_unavailable")]
    assert set(labels(completions)) == {("store-clusters", "SUCCEEDED"), ("store-clusters", "FAILED")}
    redrives = metric(DEPLOY / "metrics" / "sweep_redrives.yaml")
    assert ("tracked", "store-clusters") in labels(redrives)
    failures = metric(DEPLOY / "metrics" / "failures.yaml")
    assert {("carto", "submit", "store-clusters"), ("publish", "tracking", "store-clusters")} <= set(labels(failures))


def test_renaming_a_log_field_unties_the_metrics(lines):
    def renamed(old: str, new: str) -> list[dict[str, Any]]:
        return [{**entry, "jsonPayload": {(new if k == old else k): v for k, v in entry["jsonPayload"].items()}}
                for entry in lines.entries]

    for old, new, stem in (("event", "kind_of_line", "deliveries"), ("workflow", "workflow_name", "job_completions"),
                           ("duration_s", "seconds", "job_duration"), ("kind", "what", "sweep_redrives")):
        config = metric(DEPLOY / "metrics" / f"{stem}.yaml")
        assert unmet(config, lines.entries) == []
        assert unmet(config, renamed(old, new)) != [], f"renaming {old} left {stem} tied"


def test_a_line_from_another_deployment_is_not_counted(lines):
    config = metric(DEPLOY / "metrics" / "deliveries.yaml")
    other = [{**entry, "resource": {"type": "cloud_run_revision", "labels": {"service_name": "other-webhook"}}}
             for entry in lines.entries]
    assert unmet(config, other) == ["its filter selects no line"]


def test_the_sentinel_token_and_secret_appear_in_no_line_a_metric_reads(lines):
    read = [entry for path in METRICS for entry in lines.entries
            if logquery.parse(metric(path)["filter"]).matches(entry)]
    assert read  # the metrics do read lines
    text = "\n".join(lines.raw)
    for sentinel in (CARTO_TOKEN, SECRET, SECRET.removeprefix("whsec_")):
        assert sentinel not in text
        assert not any(sentinel in json.dumps(entry) for entry in read)


# --- the evaluator of the query subset ---------------------------------------------------------------------

ENTRY = {"jsonPayload": {"event": "delivery.refused", "code": "bad-signature", "status": 401, "workflow": "w"},
         "resource": {"type": "cloud_run_revision", "labels": {"service_name": "gateway-webhook"}}}


@pytest.mark.parametrize(("text", "expected"), [
    ('jsonPayload.event="delivery.refused"', True),
    ('jsonPayload.event="delivery.accepted"', False),
    ('jsonPayload.event!="delivery.accepted"', True),
    ('jsonPayload.status=401', True),
    ('jsonPayload.status>=400 AND jsonPayload.status<500', True),
    ('jsonPayload.status>401', False),
    ('resource.labels.service_name=~"^gateway-(webhook|poll)$"', True),
    ('resource.labels.service_name=~"^gateway-poll$"', False),
    ('resource.labels.service_name!~"poll"', True),
    ('jsonPayload.event="delivery.accepted" OR jsonPayload.code="bad-signature"', True),
    ('jsonPayload.event="delivery.accepted" OR jsonPayload.code="other"', False),
    ('jsonPayload.workflow="w" jsonPayload.code="bad-signature"', True),  # juxtaposition is AND
    ('jsonPayload.workflow="w" AND (jsonPayload.code="x" OR jsonPayload.status=401)', True),
    ('jsonPayload.workflow="x" AND jsonPayload.code="x" OR jsonPayload.status=401', True),  # AND binds tighter
    ('NOT jsonPayload.event="delivery.refused"', False),
    ('jsonPayload.missing="x"', False),
    ('NOT jsonPayload.missing="x"', True),
    ('jsonPayload.missing!="x"', False),  # a comparison on an absent field is false
    ('jsonPayload="x"', False),  # an object is never equal to a string
    ('jsonPayload.code="bad\\"signature"', False),
])
def test_the_evaluator_reads_the_subset_as_cloud_logging_does(text, expected):
    assert logquery.matches(text, ENTRY) is expected


@pytest.mark.parametrize("text", ['jsonPayload.event=', 'delivery', '(jsonPayload.a="b"', 'jsonPayload.a="b")',
                                  'jsonPayload.a:"b"', 'SEARCH("x")'])
def test_the_evaluator_refuses_what_is_outside_its_subset(text):
    with pytest.raises(ValueError):
        logquery.parse(text)


def test_the_evaluator_lists_every_clause():
    tree = logquery.parse('a.b="1" AND (c="2" OR NOT d=~"3")')
    assert [(c.path, c.op, c.value) for c in logquery.comparisons(tree)] == [
        (("a", "b"), "=", "1"), (("c",), "=", "2"), (("d",), "=~", "3")]


def test_the_extractors_take_a_field_or_a_regex_group():
    assert logquery.extract("EXTRACT(jsonPayload.code)", ENTRY) == "bad-signature"
    assert logquery.extract("EXTRACT(jsonPayload.status)", ENTRY) == "401"
    assert logquery.extract('REGEXP_EXTRACT(jsonPayload.event, "^delivery[.](accepted|refused)$")', ENTRY) == "refused"
    assert logquery.extract("EXTRACT(jsonPayload.nope)", ENTRY) is None
    with pytest.raises(ValueError):
        logquery.extract('REGEXP_EXTRACT(jsonPayload.event, "(a)(b)")', ENTRY)
    with pytest.raises(ValueError):
        logquery.extract("jsonPayload.event", ENTRY)


# --- the configs parse into the APIs' own messages ------------------------------------------------------


def parsed(text: str, message_class) -> Any:
    """text parsed into the protobuf message behind a proto-plus class, unknown fields refused."""
    message = message_class.pb(message_class())
    return json_format.Parse(text, message, ignore_unknown_fields=False)


@pytest.mark.parametrize("path", METRICS, ids=lambda p: p.stem)
def test_each_log_metric_is_a_LogMetric(path):
    from google.cloud.logging_v2.types import LogMetric

    message = parsed(json.dumps(metric(path)), LogMetric)
    assert message.filter and message.description
    assert message.metric_descriptor.metric_kind == message.metric_descriptor.MetricKind.DELTA


def test_a_misspelt_field_is_refused_by_the_message_parser():
    from google.cloud.logging_v2.types import LogMetric

    config = metric(METRICS[0])
    config["labelExtractor"] = config.pop("labelExtractors")
    with pytest.raises(json_format.ParseError, match="labelExtractor"):
        parsed(json.dumps(config), LogMetric)


def test_the_dashboard_is_a_Dashboard():
    from google.cloud.monitoring_dashboard_v1.types import Dashboard

    message = parsed(rendered(DEPLOY / "dashboard.json"), Dashboard)
    assert message.display_name == f"{PREFIX}: workflow gateway"
    tiles = message.mosaic_layout.tiles
    assert all(tile.x_pos + tile.width <= message.mosaic_layout.columns for tile in tiles)


@pytest.mark.parametrize("path", ALERTS, ids=lambda p: p.stem)
def test_each_alert_policy_is_an_AlertPolicy_sent_to_the_channel_with_a_runbook(path):
    from google.cloud.monitoring_v3.types import AlertPolicy

    message = parsed(rendered(path), AlertPolicy)
    assert list(message.notification_channels) == [CHANNEL]
    content = message.documentation.content
    assert message.documentation.mime_type == "text/markdown"
    checks = content.split("First three things to check:", 1)[1]
    assert re.findall(r"^([0-9])\. ", checks, re.MULTILINE) == ["1", "2", "3"]
    assert message.conditions and all(c.condition_threshold.filter for c in message.conditions)


def test_an_alert_policy_without_a_channel_still_parses():
    from google.cloud.monitoring_v3.types import AlertPolicy

    text = monitoring.render((DEPLOY / "alerts" / "dead_letters.json").read_text(), {**VALUES, "NOTIFICATION_CHANNELS": ""})
    assert list(parsed(text, AlertPolicy).notification_channels) == []


def test_the_channel_deploy_creates_is_a_NotificationChannel():
    from google.cloud.monitoring_v3.types import NotificationChannel

    # What deploy.sh's `channels create` flags describe (--display-name, --type, --channel-labels, --user-labels).
    deploy = (DEPLOY / "deploy.sh").read_text()
    assert '--type=email --channel-labels="email_address=$ALERT_EMAIL"' in deploy
    assert '--user-labels="gateway_deploy=$NAME_PREFIX"' in deploy
    channel = {"displayName": f"{PREFIX} gateway alerts", "type": "email",
               "labels": {"email_address": "oncall@example.com"}, "userLabels": {"gateway_deploy": PREFIX}}
    assert parsed(json.dumps(channel), NotificationChannel).labels["email_address"] == "oncall@example.com"


def test_alert_thresholds_come_from_the_settings():
    policies = {path.stem: json.loads(monitoring.render(path.read_text(), {**VALUES, "ALERT_REDRIVES_PER_HOUR": "7"}))
                for path in ALERTS}
    threshold = policies["sweep_redrives"]["conditions"][0]["conditionThreshold"]
    assert threshold["thresholdValue"] == 7
    assert policies["tracking_backlog"]["conditions"][0]["conditionThreshold"]["thresholdValue"] == 900


def test_a_placeholder_without_a_value_is_an_error():
    with pytest.raises(KeyError, match="TASKS_QUEUE"):
        monitoring.render((DEPLOY / "dashboard.json").read_text(), {k: v for k, v in VALUES.items() if k != "TASKS_QUEUE"})


def test_every_placeholder_of_the_configs_is_one_deploy_fills():
    used = set().union(*(monitoring.placeholders((DEPLOY / path).read_text()) for path in monitoring.sources()))
    assert used == set(VALUES)
    deploy = (DEPLOY / "deploy.sh").read_text()
    assert all(f'"{name}=' in deploy for name in VALUES), "deploy.sh passes each value to deploy/monitoring.py"


# --- the metrics they name exist --------------------------------------------------------------------------


def filters() -> list[tuple[str, str]]:
    """(config, filter) of every time-series filter of the dashboard and the alert policies."""
    found = []

    def walk(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("filter", "denominatorFilter") and isinstance(item, str):
                    found.append((name, item))
                else:
                    walk(name, item)
        elif isinstance(value, list):
            for item in value:
                walk(name, item)

    for path in [DEPLOY / "dashboard.json", *ALERTS]:
        walk(path.name, json.loads(rendered(path)))
    return found


USER_METRIC = re.compile(rf"^logging\.googleapis\.com/user/{PREFIX}/([a-z_]+)$")


def test_the_dashboard_and_alerts_name_only_metrics_deploy_creates_or_the_platform_has():
    created = {path.stem: metric(path) for path in METRICS}
    for config, text in filters():
        (metric_type,) = re.findall(r'metric\.type="([^"]+)"', text)
        (resource,) = re.findall(r'resource\.type="([^"]+)"', text)
        labels = set(re.findall(r"metric\.labels?\.([a-z_]+)", text))
        resource_labels = set(re.findall(r"resource\.labels?\.([a-z_]+)", text))
        user = USER_METRIC.match(metric_type)
        if user:
            assert user.group(1) in created, f"{config}: {metric_type} is not a metric deploy creates"
            known = {label["key"] for label in created[user.group(1)]["metricDescriptor"]["labels"]}
            assert resource == "cloud_run_revision"  # the functions' log lines
        else:
            assert metric_type in PLATFORM["metrics"], f"{config}: {metric_type} is not in the platform list"
            known = set(PLATFORM["metrics"][metric_type]["labels"])
            assert resource == PLATFORM["metrics"][metric_type]["resource"], config
        assert labels <= known, f"{config}: {metric_type} has no label {labels - known}"
        assert resource_labels <= set(PLATFORM["resources"][resource]), f"{config}: {resource_labels}"


def test_the_group_by_fields_are_labels_of_their_metric():
    created = {path.stem: metric(path) for path in METRICS}
    dashboard = json.loads(rendered(DEPLOY / "dashboard.json"))
    for tile in dashboard["mosaicLayout"]["tiles"]:
        for data_set in tile["widget"].get("xyChart", {}).get("dataSets", []):
            query = data_set["timeSeriesQuery"]["timeSeriesFilter"]
            (metric_type,) = re.findall(r'metric\.type="([^"]+)"', query["filter"])
            user = USER_METRIC.match(metric_type)
            labels = ({label["key"] for label in created[user.group(1)]["metricDescriptor"]["labels"]} if user
                      else set(PLATFORM["metrics"][metric_type]["labels"]))
            resource = "cloud_run_revision" if user else PLATFORM["metrics"][metric_type]["resource"]
            for name in query["aggregation"].get("groupByFields", []):
                kind, _, label = name.partition(".label.")
                assert label in (labels if kind == "metric" else PLATFORM["resources"][resource]), name


def test_every_metric_deploy_creates_is_on_the_dashboard():
    shown = {USER_METRIC.match(t).group(1) for _, text in filters() for t in re.findall(r'metric\.type="([^"]+)"', text)
             if USER_METRIC.match(t)}
    assert shown == {path.stem for path in METRICS}


def test_the_platform_list_cites_the_official_metric_list():
    assert "https://cloud.google.com/monitoring/api/metrics_gcp" in PLATFORM["source"]
    used = {t for _, text in filters() for t in re.findall(r'metric\.type="([^"]+)"', text) if not USER_METRIC.match(t)}
    assert used == set(PLATFORM["metrics"])  # no stale entry, none missing


def test_the_platform_metrics_shown_are_those_an_operator_needs():
    used = {t for _, text in filters() for t in re.findall(r'metric\.type="([^"]+)"', text)}
    assert {"run.googleapis.com/request_count", "run.googleapis.com/request_latencies",
            "run.googleapis.com/container/instance_count", "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
            "pubsub.googleapis.com/subscription/num_undelivered_messages", "cloudtasks.googleapis.com/queue/depth"} <= used


def test_the_event_list_names_every_event_a_metric_reads():
    read = set().union(*(events_named(logquery.parse(metric(path)["filter"])) for path in METRICS))
    assert read <= logs.EVENTS
    stream = io.StringIO()  # and a line naming one of them carries it
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    record = logging.LogRecord("gateway.x", logging.INFO, "", 0, "m", None, None)
    record.__dict__.update(logs.event("sweep.redrive", kind="tracked"))
    handler.emit(record)
    assert json.loads(stream.getvalue())["event"] == "sweep.redrive"
