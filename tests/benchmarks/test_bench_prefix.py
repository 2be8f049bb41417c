"""benchmarks/prefix_cache.py end to end on the tiny model (int4, so the cache runs):
every figure is there, the answers match with and without the cache, compare's columns
prefill their prompt once, the load stays within the cache's budget."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prefix_cache.py"


def test_prefix_cache_bench_writes_every_figure(tiny_model_dir, tmp_path):
    out = tmp_path / "prefix_cache.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--quant", "int4",
                          "--turns", "2", "--answer", "3", "--repeats", "1", "--system", "Be brief.", "--load", "6", "--load-mb", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] and len(report["chat"]) == 2
    assert all(turn["same_answer"] and turn["ttft_ms_on"] > 0 for turn in report["chat"])
    assert report["chat"][0]["cached_tokens"] == 0 and report["chat"][1]["cached_tokens"] >= 16
    compare = report["compare"]
    prompt = compare["off_together"]["prompt_tokens"]
    assert compare["off_together"]["prefilled_tokens"] == 4 * prompt
    assert compare["on_together"]["prefilled_tokens"] == prompt
    assert compare["on_one_after_another"]["prefilled_tokens"] < 2 * prompt
    on = report["load"]["on"]
    assert on["prompts"] == 6 and on["cache_used_mb"] <= on["cache_capacity_mb"] <= 1
