"""The rooms and their walls (docs/ARCHITECTURE.md): import-linter's contracts hold, no module
imports itself back through others (imports made only for type checking count too), a room
loads only what it needs, and no module outgrows one concept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import ROOT

PACKAGES = ("engine", "indexer", "web")
ROOMS = ("core", "store", "catalog", "encoder", "index", "users", "ranking", "search")
MAX_LINES = 400


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_even_for_type_checking() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    graph = grimp.ImportGraph()
    for a, b in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]:
        graph.add_import(importer=a, imported=b)
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_import_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_ranker_loads_alone() -> None:
    """The model's home imports its feature names and nothing else of the engine, nor SQL."""
    code = (
        "import sys, engine.ranking.ranker as r; "
        "print(sorted(m for m in sys.modules if m.startswith('engine'))); "
        "print('sqlalchemy' in sys.modules, 'flask' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    modules, external = done.stdout.splitlines()
    assert len(eval(modules)) <= 5, modules
    assert external == "False False"


def test_modules_stay_small_and_rooms_say_what_they_may_import() -> None:
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
    for room in ROOMS:
        doc = (ROOT / "engine" / room / "__init__.py").read_text(encoding="utf-8")
        assert "import" in doc.split('"""')[1].lower(), f"engine/{room}: say what it may import"
