"""The decision trace through the engine and the command line, and ``compare``'s
divergence report, on the tiny model."""

from __future__ import annotations

import dataclasses
import json

from decoding import SamplingParams
from generator.cli.main import main
from generator.cli.research import first_divergence

def test_engine_events_carry_the_trace_and_the_same_tokens(tiny_engine):
    params = SamplingParams(strategy="min_p", min_p=0.05, seed=9, max_new_tokens=8, ignore_eos=True)
    plain = list(tiny_engine.stream("Once upon a time", params))
    traced = list(tiny_engine.stream("Once upon a time", params.replace(trace=True)))
    assert [e.token_id for e in plain] == [e.token_id for e in traced]
    assert all(e.trace is None for e in plain)
    for ev in traced:
        assert ev.trace["logprob"] == ev.logprob or abs(ev.trace["logprob"] - ev.logprob) < 1e-6
        assert ev.trace["links"][0]["name"] == "min_p"


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_generate_trace_lines_on_stderr(tiny_model_dir, capsys):
    assert main(["generate", "Once upon a time", "--model", str(tiny_model_dir), "--strategy", "top_k",
                 "--top-k", "5", "--seed", "1", "--max-new-tokens", "3", "--ignore-eos", "--trace"]) == 0
    res = capsys.readouterr()
    lines = [line for line in res.err.splitlines() if line.startswith("[trace]")]
    assert len(lines) == 3 and all("top_k kept 5" in line for line in lines)
    assert "[trace]" not in res.out


def test_compare_reports_the_first_divergence(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    assert main(["compare", "Once upon a time", "--model", str(tiny_model_dir), "--no-live", "--samples", "1",
                 "--strategy", "top_k:top_k=2", "--strategy", "top_k:top_k=200", "--strategy", "greedy",
                 "--max-new-tokens", "12", "--ignore-eos", "--trace", "--json", str(out)]) == 0
    assert "first divergence" in capsys.readouterr().out
    report = json.loads(out.read_text())
    ids = {e["spec"]: [t["token_id"] for t in e["runs"][0]["events"]] for e in report["strategies"]}
    pairs = {(d["a"], d["b"]): d for d in report["divergences"]}
    assert len(pairs) == 3
    for (a, b), d in pairs.items():
        assert d["position"] == first_divergence(ids[a], ids[b])
        if d["position"] is not None:
            assert d["a_token"]["id"] == ids[a][d["position"]]
            assert "links" in d["a_trace"] and "links" in d["b_trace"]


def test_replay_fork_continues_a_recording_from_a_token(tiny_model_dir, tiny_engine, tmp_path, capsys):
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    ids = [ev.token_id for ev in tiny_engine.stream("Once upon a time", params)]
    rec = tmp_path / "g.jsonl"
    header = {"type": "header", "prompt": "Once upon a time", "chat": False, "params": dataclasses.asdict(params)}
    lines = [header] + [{"type": "token", "t": 0.0, "stream": "0", "token_id": t,
                         "text": tiny_engine.tokenizer.decode([t])} for t in ids]
    rec.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # the recorded token at 4: greedy goes on exactly as recorded
    assert main(["replay", str(rec), "--fork", f"4:{ids[4]}", "--model", str(tiny_model_dir)]) == 0
    same = capsys.readouterr()
    assert same.out.rstrip("\n") == tiny_engine.tokenizer.decode(ids)
    assert "[fork] token 4" in same.err
    # another token at 4: the prefix is kept, then what the model makes of the new token
    other = next(t for t in range(3, 300) if t != ids[4])
    assert main(["replay", str(rec), "--fork", f"4:{other}", "--model", str(tiny_model_dir)]) == 0
    prompt = tiny_engine.encode("Once upon a time")
    cont = [ev.token_id for ev in tiny_engine.stream(prompt + ids[:4] + [other],
                                                     SamplingParams(max_new_tokens=5, ignore_eos=True))]
    assert capsys.readouterr().out.rstrip("\n") == tiny_engine.tokenizer.decode(ids[:4] + [other] + cont)
    assert main(["replay", str(rec), "--fork", "99:5", "--model", str(tiny_model_dir)]) != 0
    assert "past the recorded stream" in capsys.readouterr().err
