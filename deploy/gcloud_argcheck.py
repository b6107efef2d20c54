"""Check gcloud command lines with the installed SDK's own parser, without credentials.

    deploy/deploy.sh --dry-run | python3 deploy/gcloud_argcheck.py

Every line that starts with ``gcloud `` is run through the real gcloud CLI with a throw-away
config directory and no account. A misspelt flag or a bad value stops at parsing (exit 2,
"unrecognized arguments" / "argument --x: ..."); a good command gets as far as needing
credentials and stops there (exit 1, "You do not currently have an active account selected").
Nothing reaches the network: the metadata server, update and feature-flag checks are off.

The CLI is loaded once and runs every command in one worker process (the SDK's own Python),
about 5 ms a command instead of a second; ``--separate`` runs one ``gcloud`` process per
command instead, the reference the fast path is tested against.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PARSED = "parsed"
PARSE_ERROR = "parse-error"
FAILED = "failed"
TIMEOUT = "timeout"

# What gcloud prints when a command got past parsing and wanted credentials.
NO_CREDENTIALS = "You do not currently have an active account selected"
PARSE_EXIT_CODE = 2  # argparse's exit status; gcloud's own errors exit 1
# Runs inside the SDK's Python, apart from this module: gcloud vendors its own argparse.
WORKER = Path(__file__).with_name("gcloud_argcheck_worker.py")

# gcloud settings for a check that never waits on the network or a prompt.
OFFLINE_SETTINGS = {
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_CORE_PROJECT": "test-project",
    "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    "CLOUDSDK_CORE_ENABLE_FEATURE_FLAGS": "false",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
}


@dataclass(frozen=True)
class Verdict:
    """How far one command got: parsed (then stopped for credentials), or why not."""

    argv: tuple[str, ...]
    outcome: str
    detail: str

    @property
    def ok(self) -> bool:
        """True when the command parsed."""
        return self.outcome == PARSED


@dataclass(frozen=True)
class Sdk:
    """An installed Google Cloud SDK: its root, launcher and the Python it runs on."""

    root: Path
    gcloud: Path
    python: str


def commands_from_script(text: str) -> list[tuple[str, ...]]:
    """The argv of every line of text that is a gcloud command (comments skipped)."""
    return [
        tuple(shlex.split(line))
        for line in text.splitlines()
        if line.startswith("gcloud ")
    ]


def classify(argv: tuple[str, ...], exit_code: int | str, stderr: str) -> Verdict:
    """Tell a parse error from a command that got as far as wanting credentials."""
    detail = _first_error_line(stderr)
    if exit_code == TIMEOUT:
        return Verdict(argv, TIMEOUT, "no answer in time")
    if exit_code == PARSE_EXIT_CODE:
        return Verdict(argv, PARSE_ERROR, detail)
    if exit_code == 0 or (exit_code == 1 and NO_CREDENTIALS in stderr):
        return Verdict(argv, PARSED, detail)
    return Verdict(argv, FAILED, f"exit {exit_code}: {detail}")


def _first_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or [""])[0]


def find_sdk(gcloud: str | None = None) -> Sdk | None:
    """The SDK behind the gcloud on PATH (or the given launcher), None when absent."""
    launcher = gcloud or shutil.which("gcloud")
    if launcher is None:
        return None
    root = Path(launcher).resolve().parent.parent
    if not (root / "lib" / "googlecloudsdk").is_dir():
        return None
    return Sdk(root=root, gcloud=Path(launcher), python=_sdk_python(root))


def _sdk_python(root: Path) -> str:
    # The launcher's own choice, in its order: CLOUDSDK_PYTHON, the bundled one, python3.
    bundled = root / "platform" / "bundledpythonunix" / "bin" / "python3"
    if os.environ.get("CLOUDSDK_PYTHON"):
        return os.environ["CLOUDSDK_PYTHON"]
    if bundled.exists():
        return str(bundled)
    return shutil.which("python3") or sys.executable


def offline_env(config_dir: str) -> dict[str, str]:
    """A clean environment: no credentials of the caller's, a throw-away config dir."""
    env = {
        key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL") if key in os.environ
    }
    env.update(OFFLINE_SETTINGS, CLOUDSDK_CONFIG=config_dir, HOME=config_dir)
    return env


def _offline_run(
    command: list[str], config_dir: str, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run one command of the SDK offline, in its own configuration directory, output captured."""
    return subprocess.run(
        command,
        check=False,
        env=offline_env(config_dir),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def check(
    argvs: list[tuple[str, ...]], sdk: Sdk, timeout_s: float = 60
) -> list[Verdict]:
    """Run every command through the SDK's CLI, loaded once, in one worker process."""
    with tempfile.TemporaryDirectory(prefix="gcloud-argcheck-") as config_dir:
        batch = Path(config_dir) / "commands.json"
        batch.write_text(json.dumps([list(argv) for argv in argvs]))
        worker = _offline_run(
            [sdk.python, "-S", str(WORKER), str(sdk.root), str(batch)], config_dir, timeout_s
        )
    if worker.returncode != 0:
        raise RuntimeError(
            f"gcloud argcheck worker failed: {worker.stderr.strip()[-2000:]}"
        )
    results = json.loads(worker.stdout)
    return [classify(tuple(r["argv"]), r["exit_code"], r["stderr"]) for r in results]


def check_separately(
    argvs: list[tuple[str, ...]], sdk: Sdk, timeout_s: float = 60
) -> list[Verdict]:
    """Run each command as its own gcloud process (slow; the reference for check())."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda argv: _check_one(argv, sdk, timeout_s), argvs))


def _check_one(argv: tuple[str, ...], sdk: Sdk, timeout_s: float) -> Verdict:
    with tempfile.TemporaryDirectory(prefix="gcloud-argcheck-") as config_dir:
        try:
            done = _offline_run([str(sdk.gcloud), *argv[1:]], config_dir, timeout_s)
        except subprocess.TimeoutExpired:
            return classify(argv, TIMEOUT, "")
    return classify(argv, done.returncode, done.stderr)


def main(argv: list[str] | None = None) -> int:
    """Check the gcloud commands read from stdin; print each failure; exit 1 if any."""
    args = _parser().parse_args(argv)
    sdk = find_sdk()
    if sdk is None:
        print("gcloud not found on PATH: install the Google Cloud SDK", file=sys.stderr)
        return 2
    commands = list(dict.fromkeys(commands_from_script(sys.stdin.read())))
    verdicts = (check_separately if args.separate else check)(commands, sdk)
    for verdict in verdicts:
        if not verdict.ok:
            print(f"{verdict.outcome}: {shlex.join(verdict.argv)}\n  {verdict.detail}")
    bad = sum(not verdict.ok for verdict in verdicts)
    print(
        f"{len(verdicts) - bad} of {len(verdicts)} gcloud commands parse",
        file=sys.stderr,
    )
    return 1 if bad else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--separate", action="store_true", help="one gcloud process per command"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
