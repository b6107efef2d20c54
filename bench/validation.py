"""Validations per second for each workflow in schemas/: the compiled jsonschema-rs
validator the product builds at load time, beside pure-Python `jsonschema` for reference.

Both run `iter_errors` on the workflow's example payload (examples/<name>.json), which is what
`gateway.validation.render` does on every request.
"""

from __future__ import annotations

import json
import statistics
import timeit
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonschema

from bench.procs import ROOT
from gateway.workflows import load_registry


@dataclass(frozen=True)
class ValidationRate:
    """Validations per second of one workflow's payload: median and min–max of the repeats."""

    workflow: str
    library: str
    per_s_median: float
    per_s_min: float
    per_s_max: float
    valid: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(check: Any, repeats: int, budget_s: float) -> list[float]:
    timer = timeit.Timer(check)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 0.2))
    return [number / t for t in timer.repeat(repeat=repeats, number=number)]


def _summary(workflow: str, library: str, rates: list[float], valid: bool) -> ValidationRate:
    return ValidationRate(workflow, library, round(statistics.median(rates)), round(min(rates)), round(max(rates)),
                          valid)


def measure(schemas_dir: Path = ROOT / "examples", examples_dir: Path = ROOT / "examples", *, repeats: int = 5,
            budget_s: float = 0.2) -> list[ValidationRate]:
    """Rates for every workflow that has an example payload, both libraries."""
    registry = load_registry(schemas_dir, require_secrets=False)
    results = []
    for name, workflow in sorted(registry.workflows.items()):
        example = examples_dir / f"{name}.json"
        if not example.is_file():
            continue
        payload = json.loads(example.read_text())
        reference = jsonschema.Draft202012Validator(
            workflow.payload_schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        for library, validator in (("jsonschema-rs", workflow.validator), ("jsonschema (pure Python)", reference)):
            valid = not list(validator.iter_errors(payload))
            rates = _rate(lambda v=validator, p=payload: list(v.iter_errors(p)), repeats, budget_s)
            results.append(_summary(name, library, rates, valid))
    return results
