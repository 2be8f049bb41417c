"""benchmarks/gpu_check.py's dry run (``--device cpu --quick``) on the tiny model: every section
runs and lands in the JSON, so the script the GPU machine runs does not rot between loans."""

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_the_dry_run_writes_every_section(tiny_model_dir, tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--model-dir",
                          str(tiny_model_dir), "--out", str(tmp_path), "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["quick"] and report["missing"] == {"engine": [], "server": []}
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["gpu"] is None
    assert report["model"] == {"folder": str(tiny_model_dir), "kind": "given"}
    # Here tests/gpu skips (no GPU), cleanly: pytest's "no failures" code and every test skipped.
    assert report["tests"]["rc"] == 0 and "skipped" in report["tests"]["summary"]
    assert "failed" not in report["tests"]["summary"] and "passed" not in report["tests"]["summary"]
    assert "needs a CUDA GPU" in (tmp_path / "gpu_tests.log").read_text()
    (run,) = report["runs"]
    assert run["name"] == "float32 eager" and run["engine"].startswith("cpu float32")
    assert run["batch1"]["ttft_ms"] > 0 and run["batch1"]["decode_tok_s"] > 0
    assert [s["rows"] for s in run["steps"]] == [1, 4] and all(s["aggregate_tok_s"] > 0 for s in run["steps"])


def test_asked_for_cuda_without_one_it_says_so(tmp_path):
    if torch.cuda.is_available():
        return
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and "torch sees no CUDA device" in res.stderr
    assert json.loads((tmp_path / "gpu_check.json").read_text())["error"] == "torch sees no CUDA device"
