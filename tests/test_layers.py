"""The house's rooms and the arrows allowed between them (DESIGN.md, "Packages"): no import circles anywhere, and
no arrow up a floor, lazy imports inside functions counted too.

Every module of the six packages is read with ``ast`` (not imported: an import done only under a flag or on a
device still counts) and every module is imported once, so a module that no longer imports is found here too.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_app", "trainer", "converter", "benchmarks", "fleet", "edgecls")

# room -> the rooms it may import (its own room always). `edge_app` alone is the package's __init__ (__version__).
ALLOWED = {
    "edge_app.runtime": set(),
    "edge_app.learn": {"edge_app.runtime"},
    "edge_app.frames": {"edge_app.runtime"},
    "edge_app.kiosk": {"edge_app.runtime", "edge_app.frames", "edge_app.learn"},
    "edge_app.link": {"edge_app.runtime", "edge_app.frames"},
    "edge_app.live": {"edge_app.runtime", "edge_app.frames", "edge_app.kiosk", "edge_app.link"},
    "edge_app.classify": {"edge_app.runtime"},
    "edge_app.evaluate": {"edge_app.runtime"},
    "edge_app.meta": {"edge_app.runtime"},
    # the trainer's imagenet-tflite weights are ported from the base model `learn` ships
    "trainer": {"edge_app.runtime", "edge_app.learn"},
    "converter": {"edge_app.runtime"},
    # --pipeline times the live app itself
    "benchmarks": {"edge_app.runtime", "edge_app.live"},
    # fleet bench prints the devices' figures in bench's own columns
    "fleet": {"edge_app.runtime", "benchmarks"},
    "edgecls": {"edge_app.runtime", "edge_app.learn", "edge_app.frames", "edge_app.live", "edge_app.classify",
                "trainer", "converter", "benchmarks", "fleet"},
}
ENTRY_POINTS = ("__main__",)  # `python -m trainer` and friends call the front door: they sit above everything


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports (``from pkg import name``: pkg, and pkg.name when that is a
    module)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {_nearest(alias.name, known) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + [base] if base else up)
                targets |= {_nearest(f"{base}.{alias.name}", known) for alias in node.names}
                # `from pkg import mod` runs pkg/__init__ first: inside pkg, an arrow back to the package itself
                targets.add(_nearest(base, known))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _nearest(name: str, known) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def room(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "edge_app":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else "edge_app"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in graph:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_arrows_only_go_where_the_design_allows():
    wrong = []
    for module, targets in import_graph().items():
        if module.rpartition(".")[2] in ENTRY_POINTS:
            continue
        here = room(module)
        assert here in ALLOWED or here == "edge_app", f"{module}: a room DESIGN.md does not name; add it to ALLOWED"
        for target in targets:
            there = room(target)
            if there != here and there != "edge_app" and there not in ALLOWED.get(here, set()):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_checker_sees_circles_and_upward_arrows(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    # the arrow the split removed: the runtime reading the k-NN rewrite from learn/
    assert "edge_app.learn" not in ALLOWED[room("edge_app.runtime.classifier")]
    assert room("edge_app.kiosk.server") == "edge_app.kiosk" and room("fleet.cli") == "fleet"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package):
    for name in modules():
        if name.partition(".")[0] == package and not name.endswith("__main__"):
            importlib.import_module(name)
