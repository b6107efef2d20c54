"""The suite's shared vocabulary: the repository's folders, the secrets and tokens every test instance
uses (searched for in answers, logs and messages), the project, and the demo workflow files. Test modules
and helpers import these from here, never from conftest."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.local import demos
from gateway.local.demos import DEMO_SCHEMAS_DIR, workflow_files

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CARTO_TOKEN = "carto-token-SENTINEL-7f3a9c"  # searched for in every answer, log and message
OPERATOR_TOKEN = "operator-token-SENTINEL-2b8e41"  # GATEWAY_OPERATOR_TOKENS of test instances; searched for too
# The demos' webhook secret variables, all set to SECRET (one variable per workflow, as `new` names them).
DEMO_SECRETS = dict.fromkeys(demos.DEMO_SECRETS, SECRET)
PROJECT = "test-project"
TASKS_QUEUE = f"projects/{PROJECT}/locations/local/queues/poll-checks"  # LocalStack's queue for PROJECT


def demo_workflow_files() -> list[Path]:
    """The demo workflows (examples/workflows/): every test that runs over "each workflow" runs over these."""
    return workflow_files(DEMO_SCHEMAS_DIR)


def load_json(path: Path):
    return json.loads(path.read_text())
