"""`python -m gateway new NAME`: a workflow file and an example body from what CARTO's API access dialog shows.

The paste (gateway.cli.paste) gives the connection, the CALL and one example value per parameter.
From them: a type per parameter (guessed from its example, each guess said with the fact that
decides it), a `from` pointer to the body field of the same name (so a body equal to the pasted
`queryParameters` renders exactly them), a payload schema requiring each field with its JSON type,
and the `--sender`'s auth block and delivery id. The token in the paste goes nowhere: not in a
file, not in the output. A fresh secret for the sender is printed once, never written.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cli.localenv import env_file, remember
from gateway.cli.paste import Paste, PasteError, read_paste
from gateway.errors import ConfigError

SENDERS = ("standard-webhooks", "github", "stripe", "shopify", "slack", "hmac", "bearer", "google-id-token")
_GEOMETRIES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}
_POSITIONAL = re.compile(r"(?<![\w:$])[$:](\d+)\b")
_NOT_CODE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|--[^\n]*|/\*.*?\*/", re.DOTALL)
_NUMBER_NOTE = ('a Workflows "Number" variable is FLOAT64 in BigQuery: if this is one, make it FLOAT64 '
                '(an INT64 file refuses 2.5; check --live tells)')


@dataclass(frozen=True)
class Guess:
    """One parameter's SQL type and why: the fact about its example that decides it."""

    name: str
    type: str
    reason: str
    guessed: bool = True  # False: read from the procedure's signature (--live)


@dataclass(frozen=True)
class Sender:
    """What `--sender` puts in the file, and the secret the local stack signs with (never written)."""

    auth: list[dict[str, Any]]
    idempotency: dict[str, str] | None
    delivery_id: str
    secret_env: str | None
    secret: str | None


# --- types ----------------------------------------------------------------------------------

def guess_type(name: str, example: Any) -> Guess:
    """The SQL type an example value suggests; ConfigError for an example nothing can be told from (null)."""
    if example is None:
        raise ConfigError(f"queryParameters.{name} is null: no type can be told from it; "
                          "give it an example value in CARTO (the variable's default) and paste again")
    if isinstance(example, bool):
        return Guess(name, "BOOL", f"the example {_short(example)} is a boolean")
    if isinstance(example, int):
        return Guess(name, "INT64", f"the example {_short(example)} is a whole number; {_NUMBER_NOTE}")
    if isinstance(example, float):
        return Guess(name, "FLOAT64", f"the example {_short(example)} has a fraction")
    if isinstance(example, str):
        return Guess(name, "STRING", f"the example {_short(example)} is a string{_string_hint(example)}")
    if isinstance(example, dict):
        if is_geometry(example):
            return Guess(name, "GEOGRAPHY", f"the example is a GeoJSON {example['type']}")
        return Guess(name, "JSON", "the example is an object but not a GeoJSON geometry (sent as JSON text)")
    return _guess_array(name, example)


def _guess_array(name: str, example: list[Any]) -> Guess:
    if not example:
        return Guess(name, "ARRAY<STRING>", "the example is an empty array: nothing tells the element type")
    if all(isinstance(item, bool) for item in example):
        return Guess(name, "ARRAY<BOOL>", "the example is an array of booleans")
    if all(isinstance(item, str) for item in example):
        return Guess(name, "ARRAY<STRING>", "the example is an array of strings")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in example):
        return Guess(name, "ARRAY<INT64>", f"the example is an array of whole numbers; {_NUMBER_NOTE}")
    if all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in example):
        return Guess(name, "ARRAY<FLOAT64>", "the example is an array of numbers, some with a fraction")
    return Guess(name, "JSON", "the example is an array of mixed or nested values (sent as JSON text)")


def _string_hint(text: str) -> str:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return "; it looks like a date: make it DATE if the procedure takes one"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}.*", text):
        return "; it looks like a timestamp: make it TIMESTAMP if the procedure takes one"
    return ""


def is_geometry(value: Any) -> bool:
    """Whether `value` is a GeoJSON geometry object (RFC 7946 §3.1)."""
    if not isinstance(value, dict):
        return False
    if value.get("type") == "GeometryCollection":
        return isinstance(value.get("geometries"), list) and all(map(is_geometry, value["geometries"]))
    return value.get("type") in _GEOMETRIES and isinstance(value.get("coordinates"), list)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# --- placeholders ---------------------------------------------------------------------------

def check_placeholders(paste: Paste) -> list[str]:
    """The CALL's `@names` in order; PasteError naming every one that disagrees with queryParameters."""
    from gateway.workflows import query_parameter_names

    if not re.match(r"\s*CALL\s", paste.query, re.IGNORECASE):
        raise PasteError(f"the query is not a CALL: expected CALL `project.dataset.procedure`(…), as the workflow's "
                         f"API access dialog shows it; got {_short(paste.query)}")
    names = query_parameter_names(paste.query)
    positions = sorted({int(n) for n in _POSITIONAL.findall(_NOT_CODE.sub(" ", paste.query))})
    if isinstance(paste.parameters, list) or (positions and not names):
        _check_positional(positions, names, paste.parameters)
    problems = [f"the CALL uses @{n}, which queryParameters does not give" for n in names if n not in paste.parameters]
    problems += [f"queryParameters gives {k!r}, which the CALL does not use (no @{k})"
                 for k in paste.parameters if k not in names]
    if problems:
        raise PasteError("the paste's parameters and its CALL disagree:\n  " + "\n  ".join(problems))
    return names


def _check_positional(positions: list[int], names: list[str], parameters: Any) -> None:
    if names:
        raise PasteError(f"queryParameters is an array (positional parameters) but the CALL uses named "
                         f"{', '.join('@' + n for n in names)}: give queryParameters as an object")
    if not isinstance(parameters, list):
        raise PasteError(f"the CALL uses positional placeholders ({_positions(positions)}) but queryParameters "
                         "is an object: give it as an array in placeholder order")
    problems = [f"placeholder {p} has no value in queryParameters ({len(parameters)} given)"
                for p in positions if p > len(parameters)]
    problems += [f"queryParameters value {i} is used by no placeholder" for i in range(1, len(parameters) + 1)
                 if i not in positions]
    if problems:
        raise PasteError("the paste's parameters and its CALL disagree:\n  " + "\n  ".join(problems))
    raise PasteError(f"the CALL uses positional placeholders ({_positions(positions)}): new makes workflows with "
                     "named @parameters (BigQuery, the CARTO Data Warehouse); write a positional one by hand "
                     "(README, Workflow files)")


def _positions(positions: list[int]) -> str:
    return ", ".join(f":{p} / ${p}" for p in positions) or "none"


# --- the sender -----------------------------------------------------------------------------

def secret_env_name(workflow: str) -> str:
    """The environment variable holding the workflow's webhook secret: seed-clusters -> SEED_CLUSTERS_SECRET."""
    stem = workflow.upper().replace("-", "_")
    return ("HOOK_" if stem[0].isdigit() else "") + stem + "_SECRET"


def sender(scheme: str, workflow: str) -> Sender:
    """The `auth` block, idempotency rule and a fresh local secret for one sender scheme."""
    env = secret_env_name(workflow)
    ref = f"env:{env}"
    if scheme == "standard-webhooks":
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        return Sender([{"scheme": scheme, "secrets": ref}], {"header": "webhook-id"}, "the webhook-id header", env, secret)
    if scheme in ("github", "shopify"):
        header = {"github": "X-GitHub-Delivery", "shopify": "X-Shopify-Webhook-Id"}[scheme]
        return Sender([{"scheme": scheme, "secrets": ref}], {"header": header}, f"the {header} header", env,
                      secrets.token_hex(32))
    if scheme == "stripe":
        return Sender([{"scheme": scheme, "secrets": ref}], {"pointer": "/id"}, "the event id (/id) in the body",
                      env, "whsec_" + secrets.token_hex(16))
    if scheme == "slack":
        return Sender([{"scheme": scheme, "secrets": ref}], {"pointer": "/event_id"},
                      "the event_id (/event_id) in the body", env, secrets.token_hex(16))
    if scheme == "hmac":
        block = {"scheme": "hmac", "secrets": ref, "header": "X-Signature", "signed": ["id", "timestamp", "body"],
                 "id_header": "X-Webhook-Id", "timestamp_header": "X-Webhook-Timestamp"}
        return Sender([block], {"header": "X-Webhook-Id"}, "the X-Webhook-Id header", env, secrets.token_hex(32))
    if scheme == "bearer":
        return Sender([{"scheme": scheme, "tokens": ref}], {"header": "Idempotency-Key"},
                      "the Idempotency-Key header, if the caller sends one", env, secrets.token_urlsafe(32))
    if scheme == "google-id-token":
        block = {"scheme": scheme, "audience": "https://REGION-PROJECT.cloudfunctions.net/gateway-webhook",
                 "service_accounts": ["caller@PROJECT.iam.gserviceaccount.com"]}
        return Sender([block], {"header": "Idempotency-Key"}, "the Idempotency-Key header, if the caller sends one",
                      None, None)
    raise ConfigError(f"unknown sender {scheme!r}; expected one of {', '.join(SENDERS)}")


# --- the file -------------------------------------------------------------------------------

_JSON_TYPES = {"STRING": "string", "INT64": "integer", "FLOAT64": "number", "BOOL": "boolean",
               "DATE": "string", "TIMESTAMP": "string", "NUMERIC": ["number", "string"]}


def property_schema(sql_type: str, example: Any) -> dict[str, Any]:
    """The payload schema of one body field bound to `sql_type`."""
    if sql_type.startswith("ARRAY<"):
        return {"type": "array", "items": property_schema(sql_type[len("ARRAY<"):-1], None)}
    if sql_type == "GEOGRAPHY":
        return {"type": "object", "required": ["type"], "description": "a GeoJSON geometry"}
    if sql_type == "JSON":
        return {} if example is None else {"type": _json_type(example)}
    schema: dict[str, Any] = {"type": _JSON_TYPES[sql_type]}
    if sql_type == "DATE":
        schema["format"] = "date"
    elif sql_type == "TIMESTAMP":
        schema["format"] = "date-time"
    return schema


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", float: "number"}.get(type(value), "integer")


def definition(paste: Paste, names: list[str], guesses: Mapping[str, Guess], chosen: Sender,
               base_url_override: str | None) -> dict[str, Any]:
    """The workflow file: the pasted CALL verbatim, one `from` per parameter, a payload schema, auth."""
    examples = paste.parameters if isinstance(paste.parameters, dict) else {}
    built: dict[str, Any] = {
        "description": f"Runs {_procedure(paste.query)} (from CARTO's API access dialog).",
        "connection": paste.connection,
        "query": paste.query,
        "parameters": {name: {"type": guesses[name].type, "from": f"/{name}"} for name in names},
        "payload": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": list(names),
            "properties": {name: property_schema(guesses[name].type, examples.get(name)) for name in names},
        },
        "auth": chosen.auth,
    }
    if chosen.idempotency:
        built["idempotency"] = chosen.idempotency
    if base_url_override:
        built["carto"] = {"api_base_url": base_url_override}
    if names_its_output(paste.query):
        built["result"] = {"rows": 100}
    return built


# CARTO names the procedure of a workflow with an API Output or MCP Tool Output component
# `wfproc_api_<16 hex>`; that procedure writes its answer to `<procedure>_out_<16 hex>` and, in
# Async mode, the job's answer names it at jobMetadata.workflowOutputTableName (the generated SQL
# and the agent demos in CARTO's public repositories show both; CARTO's docs do not). The older
# "API access" procedures, `workflow_procedure_<hash>`, write no table of their own.
_OUTPUT_NAMING = re.compile(r"(^|\.)wfproc_api_[0-9a-f]{8,}$", re.IGNORECASE)


def names_its_output(query: str) -> bool:
    """Whether the CALLed procedure carries CARTO's API/MCP output naming (so its job names an output table)."""
    return bool(_OUTPUT_NAMING.search(_procedure(query).strip('`"')))


def _procedure(query: str) -> str:
    match = re.match(r"\s*CALL\s+`?([^`(\s]+)`?", query, re.IGNORECASE)
    return match[1] if match else "a CARTO workflow"


def base_url_override(paste: Paste, env: Mapping[str, str]) -> str | None:
    """The paste's base URL if the deployment's CARTO_API_BASE_URL is another one; None if they agree or it is unset."""
    configured = (env.get("CARTO_API_BASE_URL") or "").rstrip("/")
    pasted = (paste.base_url or "").rstrip("/")
    return pasted if pasted and configured and pasted != configured else None


def verify(built: Mapping[str, Any], name: str, schemas_dir: Path) -> None:
    """Load and lint the file exactly as `check` will, before anything is written."""
    from gateway.cli.check import lint_workflow
    from gateway.workflows import load_workflow, meta_validator

    meta = meta_validator(schemas_dir)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{name}.json"
        path.write_text(json.dumps(built), encoding="utf-8")
        try:
            workflow = load_workflow(path, meta, {}, require_secrets=False)
        except ConfigError as exc:
            raise ConfigError(f"the workflow made from this paste would not load:\n{str(exc).replace(str(path), name)}") from None
    problems = lint_workflow(workflow)
    if problems:
        raise ConfigError("the workflow made from this paste does not pass check:\n" + "\n".join(problems))


# --- the verb -------------------------------------------------------------------------------

def run(args: Any, env: Mapping[str, str] | None = None) -> int:
    """Read the paste, write schemas/workflows/NAME.json and examples/NAME.json, say what to do next."""
    from gateway.workflows import NAME_PATTERN

    env = os.environ if env is None else env
    name = args.name
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{name!r} cannot be a workflow name: it is the URL segment, {NAME_PATTERN.pattern}")
    schemas_dir, examples_dir = Path(args.schemas), Path(args.examples)
    workflow_path, example_path = schemas_dir / "workflows" / f"{name}.json", examples_dir / f"{name}.json"
    if getattr(args, "rotate_secret", False):
        return rotate_secret(name, workflow_path, env_file(schemas_dir))
    existing = [str(p) for p in (workflow_path, example_path) if p.exists()]
    if existing and not args.force:
        raise ConfigError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
                          "pick another name, or --force to replace")
    paste = _read(args)
    if paste.connection is None:
        paste = _with_connection(paste, args.connection)
    names = check_placeholders(paste)
    override = base_url_override(paste, env)
    if args.live:
        guesses = live_types(paste, names, env)
    else:
        guesses = {n: guess_type(n, paste.parameters[n]) for n in names}
    chosen = sender(args.sender, name)
    built = definition(paste, names, guesses, chosen, override)
    verify(built, name, schemas_dir)
    _write(workflow_path, json.dumps(built, indent=2, ensure_ascii=False) + "\n")
    _write(example_path, json.dumps({n: paste.parameters[n] for n in names}, indent=2, ensure_ascii=False) + "\n")
    kept = chosen.secret is not None and not remember(env_file(schemas_dir), str(chosen.secret_env), chosen.secret)
    _report(args, paste, guesses, chosen, override, workflow_path, example_path, kept=kept)
    return 0


def rotate_secret(name: str, workflow_path: Path, secrets_file: Path) -> int:
    """A fresh secret for an existing workflow's variable, written to `.env`; the workflow file stays as it is."""
    try:
        auth = json.loads(workflow_path.read_text(encoding="utf-8")).get("auth")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--rotate-secret needs the workflow {workflow_path}: {exc}") from None
    blocks = [b for b in (auth if isinstance(auth, list) else []) if isinstance(b, dict) and b.get("scheme") in SENDERS]
    fresh = next((sender(b["scheme"], name) for b in blocks if b["scheme"] != "google-id-token"), None)
    named = {ref[4:] for b in blocks for ref in _refs(b.get("secrets") or b.get("tokens"))}
    if fresh is None or fresh.secret_env not in named:
        raise ConfigError(f"{workflow_path} names no secret variable {secret_env_name(name)} to rotate")
    remember(secrets_file, str(fresh.secret_env), str(fresh.secret), replace=True)
    print(f"wrote a fresh {fresh.secret_env} to {secrets_file} ({workflow_path} unchanged)\n"
          f"  {fresh.secret_env}={fresh.secret}\n"
          "Give the sender the same value; restart make dev to load it (the stack reads secrets when it starts).")
    return 0


def _refs(value: Any) -> list[str]:
    return [v for v in ([value] if isinstance(value, str) else value or []) if isinstance(v, str) and v.startswith("env:")]


def live_source(paste: Paste, env: Mapping[str, str]) -> tuple[str, str, Mapping[str, str]]:
    """Where `new --live` reads the signature: (base URL, where that URL came from, the settings for the client).

    The CARTO the written file will call, as `check --live` reads it: the paste's URL when the file names it
    (`base_url_override`: it is not CARTO_API_BASE_URL), else CARTO_API_BASE_URL, else the paste's URL. The
    token is the paste's own for the paste's host (held in memory for this one query, never written), else the
    deployment's (CARTO_API_TOKEN, or CARTO_CLIENT_ID and CARTO_CLIENT_SECRET) for the CARTO it is configured
    for: a token goes only to the host it was pasted or configured for, so a paste naming another host without
    a token is refused."""
    configured = (env.get("CARTO_API_BASE_URL") or "").rstrip("/")
    pasted = (paste.base_url or "").rstrip("/")
    override = base_url_override(paste, env)
    base_url = override or configured or pasted
    if not base_url:
        raise ConfigError("new --live needs CARTO's base URL: paste the dialog's curl (its URL has it) "
                          "or set CARTO_API_BASE_URL")
    if override and not paste.token:
        raise ConfigError(f"new --live reads the signature from {override}, the paste's CARTO (the workflow file "
                          f"will call it), but the paste has no token and CARTO_API_BASE_URL is {configured}: the "
                          "deployment's token is not sent to another host. Paste the curl with its token, or set "
                          "CARTO_API_BASE_URL to that host")
    source = "the paste's URL" if base_url == pasted and (override or not configured) else "CARTO_API_BASE_URL"
    if override:
        source += f", which the workflow file names (CARTO_API_BASE_URL is {configured})"
    settings = {**env, "CARTO_API_TOKEN": paste.token} if paste.token and base_url == pasted else env
    return base_url, source, settings


def live_types(paste: Paste, names: list[str], env: Mapping[str, str]) -> dict[str, Guess]:
    """Each parameter's type from the procedure's real signature, read through CARTO (`live_source`) as
    `check --live` reads it."""
    from gateway.cli.live import client_from_env, read_signature
    from gateway.errors import GatewayError
    from gateway.warehouses import BIGQUERY, binding_type

    base_url, source, settings = live_source(paste, env)
    procedure = _procedure(paste.query)
    try:
        client, _ = client_from_env(settings)
    except ConfigError as exc:
        raise ConfigError(f"new --live reads {base_url} ({source}): {exc}") from None
    try:
        real = read_signature(client, base_url, str(paste.connection), procedure, BIGQUERY, arity=len(names))
    except GatewayError as exc:
        raise ConfigError(f"new --live could not read the signature of {procedure} on connection "
                          f"{paste.connection} at {base_url} ({source}): {exc.detail}") from None
    if real is None:
        raise ConfigError(f"new --live: {procedure} does not exist on connection {paste.connection} (API access "
                          "disabled, or the workflow updated under another procedure name): open the workflow's "
                          "API access dialog in CARTO and paste its curl again")
    by_name = {argument.name.lower(): argument for argument in real}
    missing = [n for n in names if n.lower() not in by_name]
    if missing or len(real) != len(names):
        raise ConfigError(f"new --live: the paste's parameters ({', '.join(names)}) are not the procedure's "
                          f"({', '.join(a.name for a in real)}): paste the dialog's curl again")
    return {n: Guess(n, binding_type(BIGQUERY, by_name[n.lower()].type),
                     f"{procedure} declares {by_name[n.lower()].type}", guessed=False) for n in names}


def _read(args: Any) -> Paste:
    if args.from_file:
        try:
            text = Path(args.from_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {args.from_file}: {exc}") from None
    else:
        if sys.stdin.isatty():
            print("Paste the curl command from CARTO's API access dialog, then Ctrl-D:", file=sys.stderr)
        text = sys.stdin.read()
    return read_paste(text)


def _with_connection(paste: Paste, connection: str | None) -> Paste:
    from dataclasses import replace

    if not connection:
        raise PasteError("the paste has no URL to take the connection from: pass --connection NAME "
                         "(the CARTO Data Warehouse's is carto_dw)")
    return replace(paste, connection=connection)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


def _report(args: Any, paste: Paste, guesses: Mapping[str, Guess], chosen: Sender, override: str | None,
            workflow_path: Path, example_path: Path, *, kept: bool = False) -> None:
    read = {"post": "the POST curl", "get": "the GET URL", "json": "the JSON body"}[paste.form]
    out: list[str] = [f"wrote {workflow_path} and {example_path} from {read}", "",
                      f"connection  {paste.connection}" + ("  (from the URL)" if paste.base_url else "")]
    if override:
        out.append(f"CARTO       {override}  (written as carto.api_base_url: CARTO_API_BASE_URL is another one)")
    elif paste.base_url:
        out.append(f"CARTO       {paste.base_url}  (not written: set CARTO_API_BASE_URL={paste.base_url} "
                   "where the gateway runs, e.g. deploy/env)")
    if all(not guess.guessed for guess in guesses.values()):
        out.append("parameters  (each type read from the procedure's signature)")
    else:
        out.append("parameters  (each type a guess from its example; check --live reads the procedure's real ones)")
    width = max((len(n) for n in guesses), default=0)
    for guess in guesses.values():
        out.append(f"  {guess.name:<{width}}  {guess.type:<9} {'guess: ' if guess.guessed else ''}{guess.reason}")
    out.append(f"auth        {chosen.auth[0]['scheme']}; idempotency key: {chosen.delivery_id}")
    out += _result_lines(paste)
    out += ["", *_token_lines(paste), "", *_secret_lines(chosen, args.name, env_file(args.schemas), kept), "", "Next:"]
    exe = _python()
    schemas = "" if args.schemas == "schemas" else f" --schemas {args.schemas}"
    out += [f"  {exe} -m gateway{schemas} check",
            f"  {exe} -m gateway{schemas} render {args.name} {example_path}",
            f"  {exe} -m gateway{schemas} send {args.name} {example_path}"]
    print("\n".join(out))
    if paste.token_in_url:
        print("warning: the token came in a URL (access_token=…): URLs end up in server logs, proxies and shell "
              "histories. Prefer the POST form with an Authorization header, and rotate the token in CARTO "
              "if this URL was shared.", file=sys.stderr)


def _result_lines(paste: Paste) -> list[str]:
    if names_its_output(paste.query):
        return ['result      {"rows": 100}: the procedure is named like CARTO\'s API/MCP output procedures '
                "(wfproc_api_…), so its jobs name their output table; the SUCCEEDED event will carry its first "
                "100 rows"]
    return ["result      none: the event carries no rows. If the workflow saves its answer to a table, add "
            '"result": {"table": "project.dataset.table", "rows": 100} (and "admission": {"max_concurrent_jobs": 1}); '
            "with an API Output or MCP Tool Output component in Async mode, "
            '"result": {"rows": 100} reads the table each job names']


def _token_lines(paste: Paste) -> list[str]:
    lead = "The CARTO token in the paste was not written anywhere." if paste.token else "The paste carried no token."
    return [f"{lead} The gateway reads it from CARTO_API_TOKEN:",
            "  locally       not needed: make dev's local CARTO job API has a token of its own",
            "  in the cloud  Secret Manager: CARTO_API_TOKEN='<token>' deploy/deploy.sh stores it as the secret "
            "CARTO_API_TOKEN"]


def _secret_lines(chosen: Sender, name: str, secrets_file: Path, kept: bool) -> list[str]:
    if chosen.secret is None:
        return ["google-id-token needs no secret: set audience to the webhook's URL and service_accounts to the "
                f"callers in {name}.json (docs/authentication.md); send cannot sign such a token locally."]
    if kept:
        return [f"{chosen.secret_env} is already in {secrets_file}: kept (new --rotate-secret {name} makes a fresh one)."]
    return [f"A fresh secret for {chosen.secret_env}, written to {secrets_file} (git-ignored; make dev and every "
            "python -m gateway verb read it, nothing deployed does):",
            f"  {chosen.secret_env}={chosen.secret}",
            f"Give the sender the same value; in the cloud {chosen.secret_env}='…' deploy/deploy.sh puts it in "
            "Secret Manager."]


def _python() -> str:
    """How to call this interpreter from the current directory (.venv/bin/python in a checkout)."""
    relative = os.path.relpath(sys.executable)
    return "python" if relative.startswith("..") else relative
