"""`tokenflow sweep` in process: cells, rows, resume, summary, fingerprint, bad input
(on the tiny model). The same sweep on a real local Ray cluster: tests/cluster/."""

import copy
import json
import math
import os
import subprocess
import sys

import pytest

from decoding import SamplingParams
from generator.cli.common import parse_strategy_spec
from generator.eval.rows import RowStore, SweepMismatch, read_rows
from generator.eval.sweep import chunked, parse_seeds, plan_cells, run_cells
from generator.eval.sweep_summary import mean_ci, summarize, t95
from generator.fingerprint import engine_fingerprint, fingerprint_parts, weights_digest

CLI = [sys.executable, "-m", "generator.cli"]
PROMPTS = ["Once upon a time", "The sea is", "Hello there"]
SPECS = ["greedy", "sample:temperature=0.8,top_k=50", "beam:num_beams=3"]


def run(args, **kw):
    # One torch thread: on a 2-core host shared with other work, two spinning OpenMP
    # threads make the tiny model's steps 50x slower (the sweep's result is the same).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, env=env, **kw)


def test_seeds_parse_ranges_and_lists():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    for bad in ("", "a", "4-1", "-1", "1-x"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_plan_runs_deterministic_strategies_once_and_keys_are_unique():
    specs = [parse_strategy_spec(s, max_new_tokens=6) for s in SPECS]
    cells = plan_cells(3, specs, SPECS, [0, 1])
    # per prompt: greedy once, sample twice, beam once
    assert len(cells) == 3 * (1 + 2 + 1)
    assert len({c.key for c in cells}) == len(cells)
    sampled = [c for c in cells if c.spec == 1]
    assert [c.params.seed for c in sampled[:2]] == [0, 1] and all(c.seed is None for c in cells if c.spec != 1)
    assert [len(c) for c in chunked(cells, 5)] == [5, 5, 2]


def test_each_row_has_the_tokens_engine_stream_gives(tiny_engine):
    """A cell run as a row of a shared batch yields what the engine gives it alone
    (same seed -> same tokens), with its logprobs, timing and metrics."""
    specs = [parse_strategy_spec(s, max_new_tokens=6, ignore_eos=True) for s in SPECS]
    cells = plan_cells(len(PROMPTS), specs, SPECS, [0, 1])
    rows = list(run_cells(tiny_engine, cells, PROMPTS))
    assert sorted(r["key"] for r in rows) == sorted(c.key for c in cells)
    for cell in cells:
        row = next(r for r in rows if r["key"] == cell.key)
        alone = list(tiny_engine.stream(PROMPTS[cell.prompt], cell.params))
        assert row["token_ids"] == [e.token_id for e in alone], cell.key
        assert row["logprobs"] == pytest.approx([e.logprob for e in alone], abs=1e-4)
        assert row["text"] == "".join(e.text for e in alone)
        assert row["finish_reason"] == "length" and row["metrics"]["tokens"] == 6
        assert row["timing"]["tokens"] == 6 and row["timing"]["ttft_ms"] > 0
        assert math.isclose(row["metrics"]["perplexity"], math.exp(-sum(row["logprobs"]) / 6), rel_tol=1e-6)
        assert row["engine"] == tiny_engine.config.as_dict()
        assert row["engine_fingerprint"] == engine_fingerprint(tiny_engine)
        assert row["fingerprint"] == engine_fingerprint(tiny_engine, cell.params.resolved_strategy.chain)


def test_a_cell_that_cannot_run_is_an_error_row_and_the_others_run(tiny_engine):
    prompts = ["Once upon a time", "word " * 400]  # the second is past the tiny model's 256 positions
    cells = plan_cells(2, [parse_strategy_spec("greedy", max_new_tokens=4)], ["greedy"], [0])
    rows = {r["prompt_index"]: r for r in run_cells(tiny_engine, cells, prompts)}
    assert rows[0]["error"] is None and len(rows[0]["token_ids"]) <= 4
    assert "ParamError" in rows[1]["error"] and rows[1]["token_ids"] == [] and rows[1]["prompt"] == prompts[1]


def test_fingerprint_names_weights_kernels_and_chain(tiny_engine):
    fp = engine_fingerprint(tiny_engine)
    assert fp.startswith("fp_") and len(fp) == 19 and fp == engine_fingerprint(tiny_engine)
    assert fingerprint_parts(tiny_engine)["config"]["kernels"] == tiny_engine.config.kernels
    greedy = SamplingParams().resolved_strategy.chain
    sample = SamplingParams(strategy="sample", top_k=5).resolved_strategy.chain
    assert engine_fingerprint(tiny_engine, greedy) != engine_fingerprint(tiny_engine, sample) != fp
    changed = copy.deepcopy(tiny_engine.model)
    with __import__("torch").no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert weights_digest(changed) != weights_digest(tiny_engine.model)


def test_mean_ci_is_students_t_interval():
    s = mean_ci([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(sum((v - 2.5) ** 2 for v in (1, 2, 3, 4)) / 3)
    assert s["mean"] == 2.5 and s["n"] == 4
    assert s["ci95"] == pytest.approx(3.182 * sd / 2)
    assert mean_ci([5.0, None, float("nan")]) == {"mean": 5.0, "ci95": None, "n": 1}
    assert mean_ci([])["mean"] is None
    assert t95(1) == 12.706 and t95(60) == pytest.approx(2.000, abs=0.002) and t95(1000) == pytest.approx(1.962, abs=0.003)


def test_summary_divergence_and_self_bleu():
    def row(spec, prompt, seed, ids):
        return {"key": f"{spec}{prompt}{seed}", "spec": spec, "prompt_index": prompt, "seed": seed, "token_ids": ids,
                "error": None, "timing": {"ttft_ms": 1.0, "tokens_per_s": 2.0},
                "metrics": {"tokens": len(ids), "perplexity": 2.0, "mean_logprob": -0.7, "distinct_1": 1.0,
                            "distinct_2": 1.0, "repetition_rate": 0.0}}
    rows = [row("g", 0, None, [1, 2, 3, 4]), row("s", 0, 0, [1, 2, 9, 9]), row("s", 0, 1, [7, 2, 3, 4])]
    s = summarize(rows, ["g", "s"])
    assert s["s"]["divergence"]["mean"] == 1.0  # 2 then 0 shared tokens with greedy's
    assert s["s"]["cells"] == 2 and s["g"]["divergence"]["n"] == 0
    assert s["s"]["self_bleu"]["n"] == 1 and 0 < s["s"]["self_bleu"]["mean"] < 1


def test_row_store_drops_a_cut_line_and_refuses_another_engine(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"key": "a", "engine_fingerprint": "tf-1", "error": null}\n{"key": "b", "eng')
    store = RowStore(tmp_path)
    assert set(store.done) == {"a"} and store.dropped == 1
    store.append({"key": "c", "engine_fingerprint": "tf-1", "error": None, "x": float("nan")})
    store.close()
    assert [r["key"] for r in read_rows(tmp_path)] == ["a", "c"] and read_rows(tmp_path)[1]["x"] is None
    RowStore(tmp_path).check_engine("tf-1")
    with pytest.raises(SweepMismatch, match="another engine"):
        RowStore(tmp_path).check_engine("tf-2")


def test_sweep_command_writes_rows_summary_plot_then_resumes(tiny_model_dir, tmp_path, capfd):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n{"prompt": \n"The sea is"\n')
    out = tmp_path / "out"
    args = ["sweep", str(prompts), "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32",
            "--strategy", "greedy", "--strategy", "sample:temperature=0.8", "--seeds", "0-1",
            "--max-new-tokens", "5", "--ignore-eos", "--out", str(out)]
    res = run(args)
    assert res.returncode == 0, res.stderr
    assert f"{prompts}:2: not JSON" in res.stderr and "line skipped" in res.stderr
    rows = read_rows(out)
    assert len(rows) == 2 * (1 + 2) and all(len(r["token_ids"]) == 5 for r in rows)
    assert {r["prompt"] for r in rows} == {"Once upon a time", "The sea is"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"greedy", "sample:temperature=0.8"}
    assert summary["summary"]["sample:temperature=0.8"]["cells"] == 4
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean ± 95% CI" in res.stdout

    # Cut the last row as an interrupted write would, then run again: only that cell runs.
    lines = (out / "rows.jsonl").read_text().splitlines(keepends=True)
    (out / "rows.jsonl").write_text("".join(lines[:-1]) + lines[-1][:40])
    # (in this process: a second interpreter's imports cost more than the cell)
    from generator.cli.main import main

    assert main(args + ["--no-plots", "--no-progress"]) == 0
    assert "resuming: 5/6 cells" in capfd.readouterr().err
    again = read_rows(out)
    assert len(again) == 6
    redone = next(r for r in again if r["key"] == json.loads(lines[-1])["key"])
    assert redone["token_ids"] == json.loads(lines[-1])["token_ids"]


@pytest.mark.parametrize("extra,message", [
    (["--strategy", "wizard"], "strategy"),
    (["--strategy", "greedy", "--seeds", "4-1"], "--seeds"),
    (["--strategy", "greedy", "--strict"], ":2: not JSON"),
    (["--strategy", "beam:num_beams=12"], "12 beams need as many KV-cache slots"),
    (["--strategy", "greedy", "--ray", "127.0.0.1:1"], "cannot reach a Ray cluster"),
])
def test_bad_input_is_one_line_before_any_cell(tiny_model_dir, tmp_path, extra, message):
    if "--ray" in extra:  # (tests/cluster, not tests/ray: a folder named ray on sys.path would pass for it)
        pytest.importorskip("ray.util")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\nnot json\n')
    res = run(["sweep", str(prompts), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")] + extra)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("tokenflow: error")]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o" / "rows.jsonl").exists()
