"""`python -m gateway sandbox`: run the local CARTO job API alone until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping

from gateway.errors import ConfigError
from gateway.local.demos import local_schemas_dir
from gateway.local.sandbox.jobs import DIALECTS, WORKFLOWS
from gateway.local.sandbox.procedures import load_procedures
from gateway.local.sandbox.server import SandboxServer

DEFAULT_PORT = 8090


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway sandbox",
                                     description="Local CARTO SQL job API for development and tests.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--schemas", help="workflow definitions to derive procedure signatures from "
                                          "(default: GATEWAY_SCHEMAS_DIR or ./schemas when it holds a workflow, "
                                          "else the demos of examples/workflows/)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds each job runs (default 1)")
    parser.add_argument("--db", default=":memory:", help="SQLite file for jobs (default: in memory)")
    parser.add_argument("--procedures", default=env.get("GATEWAY_SANDBOX_PROCEDURES"),
                        help="JSON overrides per procedure (default: GATEWAY_SANDBOX_PROCEDURES)")
    parser.add_argument("--dialect", choices=DIALECTS, default=env.get("GATEWAY_SANDBOX_DIALECT") or WORKFLOWS,
                        help="answer shape: the Workflows page's (externalId, status.state, errorResult) or the "
                             "CARTO 3 SQL API reference's (jobId, flat status, error {code, msg}); "
                             "default: GATEWAY_SANDBOX_DIALECT or workflows")
    return parser


def _schemas_dir(explicit: str | None, env: Mapping[str, str]) -> str:
    if explicit is not None:
        return explicit
    return str(local_schemas_dir(env.get("GATEWAY_SCHEMAS_DIR") or "schemas"))


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the sandbox; `argv` are the arguments after the `sandbox` verb. Returns the exit status."""
    env = os.environ if env is None else env
    args = _parser(env).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        procedures = load_procedures(_schemas_dir(args.schemas, env), args.procedures)
    except (ConfigError, ImportError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    if args.dialect not in DIALECTS:
        print(f"sandbox: GATEWAY_SANDBOX_DIALECT must be one of {', '.join(DIALECTS)}", file=sys.stderr)
        return 2
    server = SandboxServer(args.host, args.port, token=env.get("CARTO_API_TOKEN") or None,
                           procedures=procedures, db_path=args.db, default_duration_s=args.duration,
                           dialect=args.dialect)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    server.start()
    known = "any procedure (no signatures)" if procedures is None else f"{len(procedures)} procedure(s)"
    print(f"CARTO sandbox on {server.url} — {known}, {args.dialect} dialect; Ctrl-C to stop", flush=True)
    while not stopping.wait(0.5):
        pass
    server.stop()
    return 0
