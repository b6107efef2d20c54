"""`poll` of the code under BENCH_CODE_ROOT, timed by itself: one JSON line per invocation in
BENCH_TIMING_FILE (job id, trigger, seconds, whether it answered 2xx). Served by functions-framework
in place of main.py's `poll` (bench/follow.py), so the old and the new design are measured alike."""

import base64
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.environ["BENCH_CODE_ROOT"])

import functions_framework  # noqa: E402

import main  # noqa: E402  (the code under test's entry points)

_lock = threading.Lock()


def _job_id(cloud_event) -> tuple[str | None, str]:
    data = cloud_event.data
    try:
        if isinstance(data, dict) and "message" in data:
            return json.loads(base64.b64decode(data["message"]["data"]))["job_id"], "push"
        return data["job_id"], "task"
    except (KeyError, TypeError, ValueError):
        return None, "other"


@functions_framework.cloud_event
def poll(cloud_event):
    job_id, trigger = _job_id(cloud_event)
    started, ok = time.monotonic(), False
    try:
        main.poll(cloud_event)
        ok = True
    finally:
        line = json.dumps({"job_id": job_id, "trigger": trigger, "at": time.time(),
                           "seconds": round(time.monotonic() - started, 4), "ok": ok})
        with _lock, open(os.environ["BENCH_TIMING_FILE"], "a") as out:
            out.write(line + "\n")
