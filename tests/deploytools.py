"""deploy/gcloud_argcheck.py loaded as a module, for the deploy and deployed-source suites."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _load_argcheck():
    spec = importlib.util.spec_from_file_location(
        "gcloud_argcheck", DEPLOY / "gcloud_argcheck.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["gcloud_argcheck"] = module
    spec.loader.exec_module(module)
    return module


argcheck = _load_argcheck()
