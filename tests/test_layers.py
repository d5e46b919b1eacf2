"""The package's layering: no import circles, the core imports nothing above it, no path of a
development checkout in library code, and importing the trainer leaves matplotlib alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "learndrop"
CORE = {"learndrop.units", "learndrop.scores", "learndrop.policy", "learndrop.surgery",
        "learndrop.flops", "learndrop.meta", "learndrop.recalibrate", "learndrop.drop_cost",
        "learndrop.rewind"}
KNOWN_CIRCLES: set[frozenset[str]] = set()  # none: the bench's parser lives in cli.py


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The learndrop modules ``path`` imports, at any level of its code (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                     else node.module for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def circles() -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    assert GRAPH["learndrop.train.trainer"] >= {"learndrop.train.builder",
                                                "learndrop.train.report"}
    assert "learndrop.data.folder" in GRAPH["learndrop.data.datasets"]  # a lazy import


def test_no_import_circles():
    assert circles() == KNOWN_CIRCLES


def test_the_core_imports_nothing_above_it():
    for name in CORE:
        assert GRAPH[name] <= CORE, (name, GRAPH[name] - CORE)


def test_methods_import_only_the_core_and_each_other():
    for name, deps in GRAPH.items():
        if name.startswith("learndrop.methods"):
            above = {d for d in deps if d not in CORE and not d.startswith("learndrop.methods")}
            assert not above, (name, above)


def test_no_development_checkout_path_in_library_code():
    for name, path in MODULES.items():
        text = path.read_text()
        assert "../shared" not in text and "shared/data" not in text, name


def test_importing_the_trainer_leaves_matplotlib_alone():
    code = ("import sys; import learndrop.train, learndrop.train.stream, learndrop.cli; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
