"""benchmarks/grammar_cost.py end to end on the tiny model: every figure is there."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grammar_cost.py"


def test_grammar_cost_writes_every_figure(tiny_model_dir, tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--rows", "1,2",
                          "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "grammar_cost.json").read_text())
    assert report["schema_fields"] == 10 and report["machine"]["cpu"]
    compile_ = report["compile"]
    assert compile_["compile_cold_ms"] > 0 and compile_["compile_cached_ms"] >= 0
    assert set(report["per_rows"]) == {"1", "2"}
    for row in report["per_rows"].values():
        assert row["step_ms_free"] > 0 and row["step_ms_schema"] > 0 and row["mask_ms_alone"] > 0
    assert report["tokens_per_s_batch1"]["free"] > 0 and report["tokens_per_s_batch1"]["schema"] > 0
    assert report["answer_valid"] or report["answer_tokens"] == 200  # valid unless cut by the budget
