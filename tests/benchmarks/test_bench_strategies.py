"""benchmarks/strategies.py end to end on the tiny model: valid JSON, CSV and PNG."""

import csv
import json
import subprocess
import sys
from pathlib import Path

from decoding import SamplingParams, strategies

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "strategies.py"


def test_benchmark_writes_json_csv_png_for_every_strategy(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n{"prompt": "The capital of France is"}\n')
    out = tmp_path / "results"
    res = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--device", "cpu",
                          "--tokens", "8", "--repeats", "1", "--prompts", str(prompts), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    names = [s.name for s in strategies()]
    report = json.loads((out / "strategies.json").read_text())
    assert [r["strategy"] for r in report["results"]] == names
    machine = report["machine"]
    for key in ("cpu", "cores", "torch", "dtype", "device"):
        assert machine[key], key
    assert machine["dtype"] == "float32" and machine["device"] == "cpu"
    assert report["settings"]["tokens"] == 8 and report["settings"]["repeats"] == 1
    for r in report["results"]:
        ours = r["ours"]
        assert ours["runs"] == 2 and ours["tokens_per_run"] == 8  # EOS ignored: every run is full length
        assert ours["ttft_ms"] > 0 and ours["e2e_tps"] > 0 and ours["peak_rss_mb"] > 0
        if "transformers" in r:
            theirs = r["transformers"]
            assert theirs["runs"] == 2 and theirs["tokens_per_run"] == 8
            assert r["ratio_e2e_tps"] > 0
        else:
            assert r["peer_note"]
    greedy = next(r for r in report["results"] if r["strategy"] == "greedy")
    for key in ("itl_p50_ms", "itl_p95_ms", "itl_p99_ms", "decode_tps", "prefill_tps"):
        assert greedy["ours"][key] > 0 and greedy["transformers"][key] > 0, key
    assert greedy["ours"]["itl_p50_ms"] <= greedy["ours"]["itl_p95_ms"] <= greedy["ours"]["itl_p99_ms"]
    assert greedy["ratio_decode_tps"] > 0 and greedy["peer_kwargs"]["do_sample"] is False

    with open(out / "strategies.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(row["strategy"], row["impl"]) for row in rows} >= {(n, "tokenflow") for n in names}
    assert ("greedy", "transformers") in {(row["strategy"], row["impl"]) for row in rows}
    assert all(row["machine_cpu"] and row["machine_torch"] for row in rows)

    for png in ("strategies_tps.png", "strategies_itl.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    table = (out / "strategies.md").read_text()
    assert "| `greedy` |" in table and table in res.stdout


def test_peer_settings_mirror_ours():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import strategies as bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    kw, _ = bench.peer_kwargs(SamplingParams(strategy="sample", temperature=0.8, top_k=50, seed=3,
                                             max_new_tokens=16, ignore_eos=True))
    assert kw == {"max_new_tokens": 16, "eos_token_id": None, "do_sample": True, "temperature": 0.8,
                  "top_k": 50, "top_p": 1.0}
    kw, _ = bench.peer_kwargs(SamplingParams(strategy="beam", num_beams=3, max_new_tokens=8))
    assert kw["num_beams"] == 3 and kw["do_sample"] is False and "eos_token_id" not in kw
    p = bench.strategy_params("sample", 8)
    assert p.temperature == 0.8 and p.top_k == 50 and p.seed == 0 and p.ignore_eos
    assert bench.strategy_params("beam:num_beams=2", 8).num_beams == 2
