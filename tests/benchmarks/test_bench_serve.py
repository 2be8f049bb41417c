"""The serving benchmarks start as scripts: ``serve_inprocess.py`` end to end on the
tiny model (in process, then over HTTP through the served app), ``serve_load.py``'s help."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_serve_inprocess_runs_both_paths_on_the_tiny_model(tiny_model_dir):
    res = subprocess.run([sys.executable, str(BENCHMARKS / "serve_inprocess.py"), "--model", str(tiny_model_dir),
                          "--device", "cpu", "--dtype", "float32", "--runs", "1", "--max-tokens", "4"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tokens=4 runs=1" in res.stdout
    for path in ("in process", "HTTP (openai client)"):
        assert re.search(re.escape(path) + r"\s+ttft\s+[\d.]+ ms\s+decode\s+[\d.]+ tok/s", res.stdout), res.stdout


def test_serve_load_help():
    res = subprocess.run([sys.executable, str(BENCHMARKS / "serve_load.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--levels" in res.stdout, res.stderr[-3000:]
