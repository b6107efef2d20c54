"""The map stays true: every module of gateway/ is in docs/architecture.md's code map, no import
circle, the deployed modules never reach the local stack or the CLI, no test module is a library,
and nothing cites a document the repository does not hold."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.constants import ROOT

GATEWAY = ROOT / "gateway"
MAP = ROOT / "docs" / "architecture.md"
NOT_DEPLOYED = ("gateway.cli", "gateway.local")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gateway_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(GATEWAY.rglob("*.py"))}


def imported_modules(source: str, module: str) -> set[str]:
    """Every module name `source` (the text of `module`) imports, at any depth of the file (function-level
    imports too), relative ones resolved: `from ..local import x` in gateway.carto.client is gateway.local.x."""
    is_package = module.endswith(".__init__")
    package = module.removesuffix(".__init__").split(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package if is_package else package[:-1]
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every gateway module `path` imports."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return imported_modules(path.read_text(), name) & known


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = gateway_modules()
    known = set(modules)
    return {name: imports_of(path, known) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as a list of modules, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_no_import_circle_among_gateway_modules():
    assert find_cycle(import_graph()) is None, " → ".join(find_cycle(import_graph()) or [])


def test_the_circle_finder_finds_a_planted_circle():
    graph = {**import_graph(), "gateway.errors": {"gateway.settings"}}  # settings → errors already
    assert find_cycle(graph) == ["gateway.errors", "gateway.settings", "gateway.errors"]


def test_deployed_modules_never_import_the_cli_or_the_local_stack():
    graph = import_graph()
    deployed = [name for name in graph if not name.startswith(NOT_DEPLOYED) and name != "gateway.__main__"]
    wrong = {name: sorted(t for t in graph[name] if t.startswith(NOT_DEPLOYED)) for name in deployed}
    assert {name: targets for name, targets in wrong.items() if targets} == {}
    assert "gateway.app" in deployed and "gateway.local.devstack" not in deployed


def test_the_ledger_stores_import_only_the_records():
    graph = import_graph()
    for store in ("gateway.ledger.sqlite", "gateway.ledger.firestore"):
        assert not graph[store] & {"gateway.ledger", "gateway.ledger.sqlite", "gateway.ledger.firestore"}, store


def test_every_gateway_module_is_in_the_code_map():
    text = MAP.read_text()
    listed = set(re.findall(r"`(gateway/[\w/]+\.py)`", text))
    modules = {str(path.relative_to(ROOT)) for path in gateway_modules().values()}
    assert sorted(modules - listed) == [], "add these to docs/architecture.md's code map"
    assert sorted(listed - modules) == [], "the code map names modules that do not exist"


def test_no_test_module_imports_another_test_module():
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        imported = imported_modules(path.read_text(), f"tests.{path.stem}")
        offenders += [f"{path.name} imports {name}" for name in sorted(imported)
                      if name.startswith(("tests.test_", "tests.conftest"))]  # shared names: tests.constants
    assert offenders == []


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("from ..local import devstack", "gateway.carto.client", "gateway.local.devstack"),
    ("from .local.sandbox import serve", "gateway.http", "gateway.local.sandbox"),
    ("from . import local", "gateway.__init__", "gateway.local"),
    ("from .test_http import sandbox", "tests.test_poller", "tests.test_http"),
])
def test_relative_imports_are_resolved(source, module, expected):
    assert expected in imported_modules(source, module)


# What cites a document the repository does not hold: its name, an issue number, a section of "the design".
# A section sign is fine beside the RFC it belongs to. The names are written in pieces, so that this file,
# which lists what to look for, cites nothing itself.
_DOC, _GUIDE, _SIGN = "DESI" "GN", "STY" "LE", "\u00a7"
CITED = re.compile(rf"\b{_DOC}\b|\b{_GUIDE}\b|\b[Ii]ss(?:ue)s? #?\d+|\b[Dd]es(?:ign) (section|doc)|\bthe iss(?:ue)'s\b")
SECTION = re.compile(rf"{_SIGN} ?\d")
SCANNED = ("gateway", "tests", "bench", "soak", "deploy", "docs", "examples", "client", "main.py", "README.md",
           "BENCHMARKS.md", "Makefile", ".gcloudignore")


def cites_outside(line: str) -> bool:
    return bool(CITED.search(line)) or (bool(SECTION.search(line)) and "RFC" not in line.upper())


def test_nothing_cites_a_document_outside_the_repository():
    hits = []
    for top in SCANNED:
        base = ROOT / top
        for path in [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts or path.suffix in (".png", ".pyc"):
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if cites_outside(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}")
    assert hits == []


@pytest.mark.parametrize("line", [f"see {_DOC}.md", f"{_DOC} {_SIGN}15", f"({_GUIDE} 4)", "iss" "ue 23",
                                  "Iss" "ue #6, item 3", "as the des" "ign section says", f"{_SIGN}15 says so",
                                  "the iss" "ue's bound"])
def test_each_kind_of_outside_citation_is_found(line):
    assert cites_outside(line)


@pytest.mark.parametrize("line", [f"RFC 9457 {_SIGN}3.1.1", f"a relative `type`, rfc 9457 {_SIGN}3.1.1", "style-src 'self'",
                                  "the design before and after a change", "no issue here"])
def test_citations_of_what_the_repository_or_a_standard_holds_pass(line):
    assert not cites_outside(line)


def test_the_cli_help_names_no_outside_document():
    done = subprocess.run([sys.executable, "-m", "gateway", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    assert "usage: python -m gateway" in done.stdout
    assert not [line for line in done.stdout.splitlines() if cites_outside(line)]


def test_the_layout_names_every_top_level_folder_and_gateway_subpackage():
    text = MAP.read_text()
    layout = text[text.index("## Layout"):].split("```")[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {name.split("/")[0] for name in tracked if "/" in name and not name.startswith(".")}
    subpackages = {path.parent.name for path in GATEWAY.glob("*/__init__.py")}
    named = set(re.findall(r"^\s*([\w.-]+)/", layout, re.MULTILINE))
    assert sorted((folders | subpackages) - named) == []


# --- One error tree: every code the gateway serves is a class of gateway/errors.py, drawn at its top ---------

TREE_LINE = re.compile(r"^[\s│├└─]*([A-Z]\w+)\b", re.MULTILINE)


def drawn(docstring: str) -> set[str]:
    """The class names in the tree drawn at the top of gateway/errors.py."""
    drawing = docstring[:docstring.index("Problem details")]
    return set(TREE_LINE.findall(drawing))


def missing_from_drawing(docstring: str) -> list[str]:
    from gateway.errors import problem_types

    return sorted(cls.__name__ for cls in problem_types().values() if cls.__name__ not in drawn(docstring))


def test_every_code_served_is_in_the_drawn_error_tree():
    from gateway import errors

    assert missing_from_drawing(errors.__doc__ or "") == []


def test_the_drawing_check_finds_a_class_left_out():
    from gateway import errors

    doc = errors.__doc__ or ""
    without = "\n".join(line for line in doc.splitlines() if "TasksUnavailable" not in line)
    assert missing_from_drawing(without) == ["TasksUnavailable"]


def test_no_module_but_errors_defines_a_gateway_error():
    from gateway.errors import problem_types

    tree = {cls.__name__ for cls in problem_types().values()}
    elsewhere = []
    for name, path in gateway_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            bases = {getattr(base, "id", getattr(base, "attr", None)) for base in getattr(node, "bases", [])}
            if isinstance(node, ast.ClassDef) and bases & tree and name != "gateway.errors":
                elsewhere.append(f"{name}.{node.name}")
    assert elsewhere == [], "define it in gateway/errors.py and draw it in the tree"


def test_only_the_entry_points_import_the_http_layer():
    graph = import_graph()
    assert sorted(name for name, targets in graph.items() if "gateway.http" in targets) == ["gateway.entrypoints"]
