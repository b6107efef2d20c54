"""deploy/gcloud_argcheck.py and deploy/monitoring.py loaded as modules, for the deploy, deployed-source
and metrics suites."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


argcheck = _load("gcloud_argcheck")
monitoring = _load("monitoring")
