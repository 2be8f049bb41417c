"""benchmarks/scoring.py end to end on the tiny model: both sides measured, and ours
computes transformers' log-likelihoods."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scoring.py"


def test_scoring_benchmark_writes_every_figure(tiny_model_dir, tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--prompts", "6",
                          "--repeats", "1", "--formats", "fp32", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "scoring.json").read_text())
    assert report["prompts"] == 6 and report["tokens"] > 6 and report["machine"]["cpu"]
    ours, hf = report["tokenflow"][0], report["transformers"]
    assert ours["prompts_per_s"] > 0 and ours["tokens_per_s"] > 0 and hf["tokens_per_s"] > 0
    assert ours["max_abs_logprob_diff_vs_transformers"] < 1e-3
