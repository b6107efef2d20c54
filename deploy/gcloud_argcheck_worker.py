"""Worker of gcloud_argcheck.py, run by the SDK's own Python: SDK_ROOT BATCH_JSON.

Loads the gcloud CLI once, executes each argv of the batch (no credentials: a good command
stops when it wants an account) and prints, as JSON, each one's exit code and output.
Only the standard library is imported before the SDK's path is set: gcloud vendors its own
argparse and concurrent packages, and an earlier import of the stdlib ones breaks its parser.
"""

import json
import os
import signal
import sys
import tempfile

PER_COMMAND_S = 30


class CommandTimeout(Exception):
    """A command ran longer than PER_COMMAND_S."""


def main(sdk_root, batch_file):
    """Execute every command of the batch and write the results to stdout."""
    sys.path[:0] = [
        os.path.join(sdk_root, "lib", "third_party"),
        os.path.join(sdk_root, "lib"),
    ]
    import gcloud  # noqa: F401  (lib/gcloud.py puts the vendored packages first)
    from googlecloudsdk import gcloud_main

    signal.signal(signal.SIGALRM, _on_alarm)
    cli = gcloud_main.CreateCLI([])
    with open(batch_file) as batch:
        argvs = json.load(batch)
    results = []
    for argv in argvs:
        signal.alarm(PER_COMMAND_S)
        exit_code, output = _execute_captured(cli, argv[1:])
        signal.alarm(0)
        results.append({"argv": argv, "exit_code": exit_code, "stderr": output})
    sys.__stdout__.write(json.dumps(results))


def _on_alarm(signum, frame):
    raise CommandTimeout


def _execute_captured(cli, args):
    # gcloud binds its log streams early, so capture at the file-descriptor level.
    with tempfile.TemporaryFile() as captured:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        try:
            cli.Execute(args)
            exit_code = 0
        except SystemExit as exc:
            exit_code = (
                exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            )
        except CommandTimeout:
            exit_code = "timeout"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        captured.seek(0)
        return exit_code, captured.read().decode(errors="replace")


if __name__ == "__main__":
    main(*sys.argv[1:3])
