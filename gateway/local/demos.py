"""The demo workflows of `examples/workflows/`: what the local stack runs when `schemas/workflows/` holds none.

`examples/` is laid out like a schemas directory (a `workflows/` folder; the meta-schema is the product's),
so `GATEWAY_SCHEMAS_DIR=examples` loads the demos anywhere a schemas directory is expected. They are never
deployed: `deploy/deploy.sh` reads `schemas/workflows/` only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_SCHEMAS_DIR = ROOT / "examples"
DEV_SECRET = "whsec_ZGV2LXNlY3JldC1ub3QtZm9yLXByb2R1Y3Rpb24tdXNl"  # base64("dev-secret-not-for-production-use")
# One variable per workflow, named as `new` names it: the workflow's name in UPPER_SNAKE + _SECRET.
DEMO_SECRETS = {name: DEV_SECRET for name in
                ("STORE_CLUSTERS_SECRET", "STORE_REVENUE_SNOWFLAKE_SECRET", "PARCELS_POSTGRES_SECRET")}


def workflow_files(schemas_dir: Path | str) -> list[Path]:
    """The workflow files a schemas directory holds (`*.json` under `workflows/`; a README there is not one)."""
    return sorted((Path(schemas_dir) / "workflows").glob("*.json"))


def local_schemas_dir(requested: Path | str, *, demos: bool = False) -> Path:
    """The schemas directory the local stack loads: `requested` when it holds a workflow, else the demos."""
    if demos or not workflow_files(requested):
        return DEMO_SCHEMAS_DIR
    return Path(requested)


def write_demo_schemas(target: Path) -> Path:
    """A writable copy of `schemas/` with the demo workflows in it (tests, bench and soak add their own)."""
    shutil.copytree(ROOT / "schemas", target, dirs_exist_ok=True)
    for path in workflow_files(DEMO_SCHEMAS_DIR):
        shutil.copy(path, target / "workflows" / path.name)
    return target
