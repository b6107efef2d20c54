"""Helpers for the client's tests: Google's token endpoint on loopback, a service account key that
points at it, and the ID token it issues (so google-auth's real code path runs without Google); the
client installed alone in a fresh virtualenv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.stackutil import answer_json

ROOT = Path(__file__).resolve().parent.parent


def install_client(where: Path) -> Path:
    """An empty virtualenv under `where` with `pip install ./client` in it (by this interpreter's pip:
    `--python`), from a copy of client/ so the build leaves nothing in the checkout; its python.
    OSError when no virtualenv can be made here."""
    import venv

    source = where / "client"
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv.EnvBuilder(with_pip=False, clear=True).create(where / "venv")
    python = where / "venv" / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                                "--disable-pip-version-check", str(source)],
                               capture_output=True, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python

SERVICE_ACCOUNT = "caller@test-project.iam.gserviceaccount.com"


@dataclass
class TokenEndpoint:
    """Where the generated service account key sends its JWT grant; answers `id_token`."""

    url: str
    key_file: Path
    id_token: str
    grants: list[dict[str, Any]] = field(default_factory=list)

    def audiences(self) -> list[str]:
        """The `target_audience` of every ID token asked for, read from the signed assertions."""
        from google.auth import jwt

        return [jwt.decode(grant["assertion"][0], verify=False)["target_audience"] for grant in self.grants]


def _private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def signed_id_token(private_key: str, audience: str, lifetime_s: int = 3600) -> str:
    """A JWT shaped like a Google ID token (google-auth reads its `exp` to know when to refresh)."""
    from google.auth import crypt, jwt

    now = int(time.time())
    claims = {"iss": "https://accounts.google.com", "aud": audience, "sub": "1", "email": SERVICE_ACCOUNT,
              "iat": now, "exp": now + lifetime_s}
    return jwt.encode(crypt.RSASigner.from_string(private_key, "k1"), claims).decode()


@contextmanager
def token_endpoint(directory: Path, audience: str = "https://gateway.test") -> Iterator[TokenEndpoint]:
    """A loopback token endpoint and a service account key file whose token_uri is it."""
    key = _private_key()
    grants: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            grants.append(parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()))
            answer_json(self, 200, {"id_token": endpoint.id_token})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/token"
    key_file = directory / "service-account.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "test-project", "private_key_id": "k1", "private_key": key,
        "client_email": SERVICE_ACCOUNT, "client_id": "1", "token_uri": url}))
    endpoint = TokenEndpoint(url, key_file, signed_id_token(key, audience), grants)
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
