"""The shape of the house (docs/ARCHITECTURE.md), checked from the source.

Arrows point one way, ``server -> generator -> decoding``; no two modules import each
other, directly or around a circle, whether at the top of a file or inside a function
(an import inside a function is how a circle hides; one under ``if TYPE_CHECKING:``
never runs and does not count); no module grows past about 400 lines. Read with ``ast``: nothing of the project is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("decoding", "generator", "server")
MAX_LINES = 420  # "about 400": a module past this is two rooms


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (a package stands for its
    ``__init__``; ``from pkg import mod`` names the submodule)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports only a type checker runs are no circle at run time
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [(mod, a.name) for a in node.names]
        else:
            continue
        for mod, attr in targets:
            if attr and f"{mod}.{attr}" in MODULES:
                found.add(f"{mod}.{attr}")
            elif mod in MODULES:
                found.add(mod)
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_house():
    # a reader that found nothing would pass every check below
    assert {"decoding.params", "generator.engine", "server.app"} <= set(MODULES)
    assert "decoding" in GRAPH["generator.batch"] or any(m.startswith("decoding") for m in GRAPH["generator.batch"])


def test_arrows_point_one_way():
    wrong = []
    for name, deps in GRAPH.items():
        top = name.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if (top == "decoding" and other != "decoding") or (top == "generator" and other == "server"):
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports against the arrows server -> generator -> decoding: " + ", ".join(wrong)


def test_no_import_circles():
    assert _cycles() == []


def test_no_module_past_about_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
