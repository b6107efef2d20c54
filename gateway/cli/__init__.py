"""The command line: new, check, render, sign, send, status, cancel, openapi, events, doctor, sandbox, dev."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.errors import ConfigError, GatewayError
from gateway.events import EVENT_TYPES

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8080"
WORKFLOW_HELP = "the workflow's name: schemas/workflows/WORKFLOW.json, posted to at /hooks/WORKFLOW"
URL_HELP = ("the webhook function's base URL; the body goes to URL/hooks/WORKFLOW "
            "(GATEWAY_URL, default: %(default)s, make dev's webhook)")
OPERATOR_TOKEN_HELP = ("the bearer credential is GATEWAY_OPERATOR_TOKEN if set (an operator token, or "
                       "$(gcloud auth print-identity-token --audiences=URL)), else the first of GATEWAY_OPERATOR_TOKENS")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; exit status 0 on success, 1 on a problem it reports, 2 on bad usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sandbox":
        from gateway.local.sandbox import main as sandbox_main

        return sandbox_main(argv[1:])
    args = _parser().parse_args(argv)
    from gateway.cli import localenv

    demo_secrets = _demos_unless_yours(args)
    try:
        with localenv.loaded(localenv.env_file(args.schemas), demo_secrets):
            return int(args.run(args) or 0)
    except (ConfigError, GatewayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# The verbs that work on the local stack's workflows: with none of yours in schemas/workflows/, the demos.
_LOCAL_VERBS = ("check", "render", "sign", "send", "openapi")


def _demos_unless_yours(args: argparse.Namespace) -> dict[str, str]:
    """Point `args.schemas` at the demos when a local verb finds no workflow of yours; their dev secrets."""
    from gateway.local.demos import DEMO_SCHEMAS_DIR, DEMO_SECRETS, local_schemas_dir

    if args.verb not in _LOCAL_VERBS or getattr(args, "live", False):
        return {}  # doctor and check --live talk to a real account: only your workflows
    chosen = local_schemas_dir(args.schemas)
    if chosen != DEMO_SCHEMAS_DIR:
        return {}
    args.schemas = str(chosen)
    return dict(DEMO_SECRETS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--schemas", default=os.environ.get("GATEWAY_SCHEMAS_DIR", "schemas"),
                        help="schemas directory (GATEWAY_SCHEMAS_DIR, default: schemas)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    new = verbs.add_parser("new", help="a workflow file from the curl command of CARTO's API access dialog",
                           description="Write schemas/workflows/NAME.json and examples/NAME.json from what CARTO's "
                                       "API access dialog shows (the POST curl, the GET URL or the JSON body), "
                                       "read from --from FILE or stdin. The token in it is never written.")
    new.add_argument("name", help="the workflow's name: the URL segment of POST /hooks/NAME")
    new.add_argument("--from", dest="from_file", type=Path, help="read the paste from FILE (default: stdin)")
    new.add_argument("--sender", default="standard-webhooks", choices=_senders(),
                     help="who sends the webhook: its auth scheme and delivery id (default: standard-webhooks)")
    new.add_argument("--live", action="store_true", help="take the types from the procedure's real signature")
    new.add_argument("--force", action="store_true", help="replace an existing workflow of that name")
    new.add_argument("--rotate-secret", action="store_true",
                     help="only make a fresh secret for the existing workflow NAME and write it to .env "
                          "(the workflow file is not touched; no paste is read)")
    new.add_argument("--examples", default="examples", help="where the example body goes (default: examples)")
    new.add_argument("--connection", help="the connection, when the paste is a bare JSON body without a URL")
    new.set_defaults(run=_new)

    check = verbs.add_parser("check", help="lint every workflow file (--live: against the procedures' real signatures)")
    check.add_argument("--live", action="store_true",
                       help="also read each procedure's parameters from the warehouse through CARTO's /query "
                            "and report every difference from the file (CARTO_API_BASE_URL and a token needed)")
    check.set_defaults(run=_check)

    doctor = verbs.add_parser("doctor", help="first contact with a CARTO account: base URL, token, each connection")
    doctor.add_argument("workflows", nargs="*", metavar="WORKFLOW", help="workflows whose connections to try "
                                                                          "(default: every workflow)")
    doctor.add_argument("--save", type=Path, metavar="FILE",
                        help="write every CARTO answer (token stripped) to FILE, for a bug report or a test fixture")
    doctor.add_argument("--timeout", type=float, default=120.0, help="seconds to follow each test job (default 120)")
    doctor.set_defaults(run=_doctor)

    render = verbs.add_parser("render", help="print the CALL and typed parameters for a payload",
                              description="Validate FILE as WORKFLOW's webhook would and print the CALL and the typed "
                                          "queryParameters that would go to CARTO. Nothing is sent.")
    render.add_argument("workflow", help=WORKFLOW_HELP)
    render.add_argument("file", type=Path, help="a JSON payload, as a sender would POST it")
    render.set_defaults(run=_render)

    sign = verbs.add_parser("sign", help="print headers that authenticate FILE for WORKFLOW",
                            description="Print the headers that authenticate FILE's exact bytes for WORKFLOW (its first "
                                        "auth scheme, the secret from the environment or .env), one per line, or with "
                                        "--curl a ready curl command. A signature carries the time: use it within "
                                        "minutes.")
    sign.add_argument("workflow", help=WORKFLOW_HELP)
    sign.add_argument("file", type=Path, help="the JSON payload to sign; what is sent must be these bytes unchanged")
    sign.add_argument("--curl", action="store_true",
                      help="print a curl command (POSIX shell) that POSTs FILE with the headers to --url instead")
    sign.add_argument("--url", default=os.environ.get("GATEWAY_URL", DEFAULT_WEBHOOK_URL), help=URL_HELP)
    sign.add_argument("--delivery-id", help="the delivery id the headers carry (default: a new one)")
    sign.set_defaults(run=_sign)

    send = verbs.add_parser("send", help="sign FILE and POST it to the webhook",
                            description="Sign FILE for WORKFLOW (as sign does), POST it to the webhook and print the "
                                        "HTTP status and answer; exit 1 on a 4xx or 5xx.")
    send.add_argument("workflow", help=WORKFLOW_HELP)
    send.add_argument("file", type=Path, help="the JSON payload to sign and POST")
    send.add_argument("--url", default=os.environ.get("GATEWAY_URL", DEFAULT_WEBHOOK_URL), help=URL_HELP)
    send.add_argument("--delivery-id", help="idempotency / delivery id (default: a new one)")
    send.set_defaults(run=_send)

    for verb, method, summary, names in (
            ("status", "GET", "print a job's record and live status, or a delivery's record by its key",
             "a job id, or a delivery key (WORKFLOW:IDEMPOTENCY-KEY, as in a queued delivery's status_url)"),
            ("cancel", "DELETE", "cancel a job and print its record", "a job id")):
        job = verbs.add_parser(verb, help=f"{summary} (operators)",
                               description=f"{summary[0].upper()}{summary[1:]}. Operators only: {OPERATOR_TOKEN_HELP}.")
        job.add_argument("job_id", metavar="ID", help=names)
        job.add_argument("--url", default=os.environ.get("GATEWAY_URL", DEFAULT_WEBHOOK_URL),
                         help="the webhook function's URL (GATEWAY_URL, default: %(default)s)")
        job.set_defaults(run=_job, method=method)

    openapi = verbs.add_parser("openapi", help="print the OpenAPI 3.1 document",
                               description="Print the OpenAPI 3.1 document of the webhook as JSON: one POST "
                                           "/hooks/WORKFLOW per workflow in --schemas, with its payload schema, auth "
                                           "headers and answers (the webhook serves it to operators at /openapi.json).")
    openapi.set_defaults(run=_openapi)

    events = verbs.add_parser("events", help="print completion events as they arrive")
    events.add_argument("--json", action="store_true", help="print raw JSON")
    events.add_argument("--workflow", help="only the events of this workflow (by the events' workflow attribute)")
    events.add_argument("--outcome", choices=sorted(EVENT_TYPES), help="only the events with this outcome")
    events.add_argument("--subscription", help="existing subscription to read (default: a new one)")
    events.add_argument("--max", type=int, default=0, help="stop after N events (0: run until Ctrl-C)")
    events.set_defaults(run=_events)

    dev = verbs.add_parser("dev", help="run the whole stack locally",
                           description="Run the whole stack on 127.0.0.1: the Pub/Sub and Cloud Tasks emulators, the "
                                       "local CARTO job API and the functions, each on its port below.")
    for flag, port, what in (("webhook", 8080, "the `webhook` function, where senders POST /hooks/WORKFLOW"),
                             ("poll", 8081, "the `poll` function, pushed the tracking topic and the check tasks"),
                             ("submit", 8082, "the `submit` function, pushed the requests topic"),
                             ("console", 8083, "the operators' console (a web page)"),
                             ("sandbox", 8090, "the local CARTO job API (CARTO_API_BASE_URL of the stack)"),
                             ("pubsub", 8085, "the Pub/Sub emulator (PUBSUB_EMULATOR_HOST)"),
                             ("tasks", 8123, "the Cloud Tasks emulator (check tasks for `poll`)")):
        dev.add_argument(f"--{flag}-port", type=int, default=port, help=f"{what} (default: %(default)s)")
    dev.add_argument("--state-dir", type=Path, default=None,
                     help="where the ledger, the local CARTO job API's jobs and the logs go (default: .state)")
    dev.add_argument("--demos", action="store_true",
                     help="run the demo workflows of examples/workflows/ (the default when schemas/workflows/ "
                          "holds no workflow file)")
    dev.set_defaults(run=_dev)

    verbs.add_parser("sandbox", help="run the local CARTO job API alone (--port N)")
    return parser


def _senders() -> tuple[str, ...]:
    from gateway.cli.new import SENDERS

    return SENDERS


def _new(args: argparse.Namespace) -> int:
    from gateway.cli.new import run

    return run(args)


def _registry(args: argparse.Namespace, *, require_secrets: bool = True) -> Any:
    from gateway.workflows import load_registry

    return load_registry(args.schemas, os.environ, require_secrets=require_secrets)


def _workflow(args: argparse.Namespace, **kw: Any) -> Any:
    registry = _registry(args, **kw)
    workflow = registry.get(args.workflow)
    if workflow is None:
        raise ConfigError(f"no workflow named {args.workflow} in {args.schemas}/workflows "
                          f"(have: {', '.join(sorted(registry.workflows)) or 'none'})")
    return workflow


def _check(args: argparse.Namespace) -> int:
    from gateway.cli.check import lint, warnings

    registry = _registry(args, require_secrets=False)
    problems = lint(registry)
    for problem in problems + warnings(registry):
        print(problem, file=sys.stderr)
    drifted: set[str] = set()
    if args.live:
        from gateway.cli.live import check_live

        lines, clean = check_live(registry, os.environ)
        for line in lines:
            print(line)
        drifted = set(registry.workflows) - set(clean)
    for name in sorted(registry.workflows):
        bad = any(p.startswith(f"{name}:") for p in problems) or name in drifted
        print(f"bad {name}" if bad else f"ok  {name}")
    return 1 if problems or drifted else 0


def _render(args: argparse.Namespace) -> int:
    from gateway.bodies import parse_json
    from gateway.validation import render

    workflow = _workflow(args, require_secrets=False)
    payload = parse_json(_payload(args.file))
    try:
        rendered = render(workflow, payload, {})
    except GatewayError as exc:
        print(json.dumps(exc.problem(), indent=2), file=sys.stderr)
        return 1
    print(json.dumps({"query": rendered.query, "queryParameters": rendered.wire}, indent=2))
    return 0


# Schemes whose header is the shared secret itself, not a signature of one body at one time.
STATIC_SCHEMES = frozenset({"bearer"})


def _signed_headers(args: argparse.Namespace, body: bytes) -> dict[str, str]:
    return _sign_with_first_scheme(args, body)[1]


def _sign_with_first_scheme(args: argparse.Namespace, body: bytes) -> tuple[str, dict[str, str]]:
    """(the name of the workflow's first scheme, the headers it makes for `body`)."""
    import uuid

    from gateway.auth.config import build_schemes

    workflow = _workflow(args, require_secrets=False)  # only this workflow's secrets are needed
    schemes = build_schemes(workflow.auth, os.environ)
    if not schemes:
        raise ConfigError(f"workflow {workflow.name} has no auth scheme to sign with")
    delivery_id = getattr(args, "delivery_id", None) or f"msg_{uuid.uuid4().hex}"
    headers = schemes[0].sign(body, time.time(), delivery_id)
    return schemes[0].name, {"Content-Type": "application/json", **headers}


def _payload(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _hook_url(args: argparse.Namespace) -> str:
    return f"{args.url.rstrip('/')}/hooks/{args.workflow}"


def _sign(args: argparse.Namespace) -> int:
    scheme, headers = _sign_with_first_scheme(args, _payload(args.file))
    if args.curl:
        if scheme in STATIC_SCHEMES:
            print(f"warning: the {scheme} scheme's header is the shared secret itself; this command puts it in your "
                  "shell history and, while curl runs, the process list (`sign` > FILE, then curl -H @FILE, does not)",
                  file=sys.stderr)
        print(curl_command(_hook_url(args), headers, args.file.resolve()))
        return 0
    for name, value in headers.items():
        print(f"{name}: {value}")
    return 0


def curl_command(url: str, headers: Mapping[str, str], file: Path) -> str:
    """A POSIX shell command that POSTs `file`'s bytes unchanged (--data-binary) to `url` with `headers`."""
    words = ["curl", "-sS", url, *(w for name, value in headers.items() for w in ("-H", f"{name}: {value}")),
             "--data-binary", f"@{file}"]
    return " ".join(shlex.quote(word) for word in words)


def _send(args: argparse.Namespace) -> int:
    import requests

    body = _payload(args.file)
    headers = _signed_headers(args, body)
    answer = requests.post(_hook_url(args), data=body, headers=headers, timeout=60)
    print(f"HTTP {answer.status_code}")
    print(answer.text)
    return 0 if answer.status_code < 400 else 1


def operator_credential(env: Mapping[str, str]) -> str:
    """The bearer credential `status` and `cancel` send (see OPERATOR_TOKEN_HELP); ConfigError if there is none."""
    token = (env.get("GATEWAY_OPERATOR_TOKEN") or "").strip()
    tokens = [t.strip() for t in (env.get("GATEWAY_OPERATOR_TOKENS") or "").split(",") if t.strip()]
    if not (token or tokens):
        raise ConfigError("no operator credential: set GATEWAY_OPERATOR_TOKEN or GATEWAY_OPERATOR_TOKENS")
    return token or tokens[0]


def _job(args: argparse.Namespace) -> int:
    import requests

    headers = {"Authorization": f"Bearer {operator_credential(os.environ)}"}
    paths = ["jobs"] if args.method != "GET" else ["jobs", "deliveries"]  # status: a job id, else a delivery key
    for path in paths:
        url = f"{args.url.rstrip('/')}/{path}/{quote(args.job_id, safe='')}"
        try:
            answer = requests.request(args.method, url, headers=headers, timeout=60)
        except requests.RequestException as exc:
            raise ConfigError(f"cannot reach {args.url}: {type(exc).__name__}") from None
        if answer.status_code != 404:
            break
    try:
        shown = json.dumps(answer.json(), indent=2)
    except ValueError:
        shown = answer.text
    if answer.status_code == 200:
        print(shown)
        return 0
    print(f"HTTP {answer.status_code}", file=sys.stderr)
    print(shown, file=sys.stderr)
    return 1


def _openapi(args: argparse.Namespace) -> int:
    from gateway.openapi import document

    print(json.dumps(document(_registry(args, require_secrets=False)), indent=2))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from gateway.cli.doctor import doctor

    return doctor(_registry(args, require_secrets=False), os.environ, args.workflows, save=args.save,
                  timeout_s=args.timeout)


def _events(args: argparse.Namespace) -> int:
    from gateway.cli.events import watch

    return watch(args)


def _dev(args: argparse.Namespace) -> int:
    from gateway.local.devstack import run

    return run(args)
