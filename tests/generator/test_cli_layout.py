"""The shape of generator/cli/: modules import each other one way, the entry points
in pyproject.toml name real functions, and building the parser stays light."""

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_DIR = ROOT / "generator" / "cli"


def _cli_imports(path: Path) -> set[str]:
    """The generator.cli modules a file imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x, y
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.level == 0 and (node.module or "").startswith("generator.cli."):
                names = [node.module.removeprefix("generator.cli.")]
            else:
                continue
            found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("generator.cli.").split(".")[0] for a in node.names
                         if a.name.startswith("generator.cli."))
    return found


def test_cli_modules_import_each_other_without_a_circle():
    graph = {p.stem: _cli_imports(p) - {p.stem} for p in CLI_DIR.glob("*.py")}
    assert "main" not in set().union(*(deps for name, deps in graph.items() if name not in ("__init__", "__main__")))
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, path + (name,))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_entry_points_name_real_functions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = [*project["scripts"].values(), *project["entry-points"]["tokenflow.commands"].values()]
    for target in targets:
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


HEAVY = ("torch", "numpy", "transformers", "fastapi", "uvicorn", "rich", "nltk", "matplotlib", "ray")


def _heavy_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy libraries it imported."""
    code += f"; import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_building_the_parser_imports_no_heavy_library():
    assert _heavy_after("from generator.cli.main import build_parser; build_parser()") == []


def test_every_help_imports_no_torch():
    """``tokenflow --help`` and each subcommand's ``--help`` print their text and exit 0
    with torch, transformers and FastAPI never imported (what makes them instant)."""
    from generator.cli.main import build_parser

    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    assert {"generate", "compare", "replay", "strategies", "serve"} <= set(commands)
    for argv in [[], *([c] for c in commands)]:
        code = ("import contextlib, io; from generator.cli import main; out = io.StringIO()\n"
                "with contextlib.redirect_stdout(out):\n"
                f"    try: main({argv + ['--help']!r})\n"
                "    except SystemExit as exc: assert exc.code == 0, exc.code\n"
                "assert 'usage: tokenflow' in out.getvalue()")
        assert _heavy_after(code) == [], argv


def test_settings_validate_without_torch():
    """Decoding settings and engine flags are checked before anything heavy loads."""
    code = ("from decoding import SamplingParams, describe; SamplingParams(strategy='sample', top_k=5); describe(); "
            "from generator.config import EngineConfig; EngineConfig(quant='int4', num_slots=4)")
    assert _heavy_after(code) == []
