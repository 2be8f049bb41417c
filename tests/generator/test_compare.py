"""`tokenflow compare`, the stream recorder and `tokenflow replay`, on the tiny model."""

import json
import subprocess
import sys

import pytest

from decoding import ParamError, SamplingParams
from generator.cli.common import parse_engine_args, parse_strategy_spec
from generator.cli.replay import read_recording, replay_events, stream_texts

CLI = [sys.executable, "-m", "generator.cli"]


def run(args, **kw):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, **kw)


def test_strategy_spec_parses_into_sampling_params():
    p = parse_strategy_spec("sample:temperature=0.8,top_k=50", max_new_tokens=12)
    assert p == SamplingParams(strategy="sample", temperature=0.8, top_k=50, max_new_tokens=12)
    assert parse_strategy_spec("beam:num_beams=4").num_beams == 4
    assert parse_strategy_spec("greedy").strategy == "greedy"
    assert parse_strategy_spec("multinomial:seed=3").strategy == "sample"  # aliases resolve
    both = parse_strategy_spec("greedy:stop=a,stop=bc,ignore_eos=true,early-stopping=never")
    assert both.stop == ("a", "bc") and both.ignore_eos is True
    assert parse_strategy_spec("greedy:max_new_tokens=5", max_new_tokens=9).max_new_tokens == 5


@pytest.mark.parametrize("spec,field", [
    ("sample:temperature=hot", "temperature"),
    ("sample:top_k=1.5", "top_k"),
    ("sample:topk=3", "topk"),
    ("sample:top_p=1.5", "top_p"),
    ("wizard", "strategy"),
    (":top_k=3", "strategy"),
    ("sample:top_k", "top_k"),
    ("beam:num_beams=1", "num_beams"),
    ("greedy:ignore_eos=maybe", "ignore_eos"),
])
def test_bad_spec_names_the_field(spec, field):
    with pytest.raises(ParamError) as info:
        parse_strategy_spec(spec)
    assert info.value.field == field


def test_engine_args_are_typed():
    assert parse_engine_args(["quant=int4", "compile=false", "chunk=64", "x=0.5"]) == {
        "quant": "int4", "compile": False, "chunk": 64, "x": 0.5}
    with pytest.raises(ParamError, match="engine_arg"):
        parse_engine_args(["quant"])


SUMMARY = {"runs", "tokens", "tokens_per_s", "ttft_ms", "mean_logprob", "perplexity", "distinct_1", "distinct_2",
           "repetition_rate", "self_bleu"}
RUN = {"prompt_index", "sample", "seed", "text", "finish_reason", "prompt_tokens", "tokens", "ttft_ms",
       "tokens_per_s", "mean_logprob", "perplexity", "distinct_1", "distinct_2", "repetition_rate", "events"}
EVENT = {"token_id", "text", "logprob", "index", "finish_reason", "t", "t_own"}


def test_compare_json_has_one_entry_per_strategy_with_every_field(tiny_model_dir, tiny_engine, tmp_path):
    out, rec = tmp_path / "cmp.json", tmp_path / "cmp.jsonl"
    specs = ["greedy", "sample:temperature=0.8,top_k=50", "beam:num_beams=3"]
    args = ["compare", "Once upon a time", "--model", str(tiny_model_dir), "--max-new-tokens", "10",
            "--ignore-eos", "--samples", "3", "--json", str(out), "--record", str(rec)]
    for s in specs:
        args += ["--strategy", s]
    res = run(args)
    assert res.returncode == 0, res.stderr
    assert "strategies compared" in res.stdout and "self-BLEU" in res.stdout
    report = json.loads(out.read_text())
    assert [e["spec"] for e in report["strategies"]] == specs
    assert [e["strategy"] for e in report["strategies"]] == ["greedy", "sample", "beam"]
    assert report["settings"]["samples"] == 3 and report["prompts"] == ["Once upon a time"]
    for entry in report["strategies"]:
        assert SUMMARY <= set(entry["summary"]), entry["spec"]
        for r in entry["runs"]:
            assert RUN <= set(r)
            assert r["tokens"] == 10 == len(r["events"])
            assert r["text"] == "".join(ev["text"] for ev in r["events"])
            for ev in r["events"]:
                assert EVENT <= set(ev) and isinstance(ev["logprob"], float) and ev["logprob"] <= 0
            assert [ev["t"] for ev in r["events"]] == sorted(ev["t"] for ev in r["events"])
    greedy, sample, beam = report["strategies"]
    # deterministic strategies run once; sampling ones once per seed, and only they get self-BLEU
    assert len(greedy["runs"]) == 1 and len(beam["runs"]) == 1 and len(sample["runs"]) == 3
    assert [r["seed"] for r in sample["runs"]] == [0, 1, 2]
    assert greedy["summary"]["self_bleu"] is None and 0 <= sample["summary"]["self_bleu"] <= 1
    # the greedy text is what the engine produces alone
    expected = tiny_engine.generate_text("Once upon a time", SamplingParams(max_new_tokens=10, ignore_eos=True))
    assert greedy["runs"][0]["text"] == expected
    # a seeded sample is the same as running that seed alone
    alone = tiny_engine.generate_text("Once upon a time", SamplingParams(
        strategy="sample", temperature=0.8, top_k=50, seed=1, max_new_tokens=10, ignore_eos=True))
    assert sample["runs"][1]["text"] == alone
    # the recording holds every stream, with the same texts
    header, events = read_recording(rec)
    assert header["command"] == "compare" and len(header["streams"]) == 5
    texts = stream_texts(events)
    assert texts["p0.s0.k0"] == greedy["runs"][0]["text"] and texts["p0.s1.k2"] == sample["runs"][2]["text"]


def test_compare_with_prompts_file_and_bad_input(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n"The capital of France is"\n')
    out = tmp_path / "cmp.json"
    res = run(["compare", "--prompts", str(prompts), "--strategy", "greedy", "--model", str(tiny_model_dir),
               "--max-new-tokens", "4", "--no-live", "--json", str(out)])
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert len(report["prompts"]) == 2 and [r["prompt_index"] for r in report["strategies"][0]["runs"]] == [0, 1]
    for args, needle in [(["hi", "--strategy", "sample:top_p=2"], "top_p"),
                         (["hi"], "--strategy"),
                         (["hi", "--strategy", "greedy", "--samples", "0"], "--samples"),
                         (["--prompts", str(tmp_path / "none.jsonl"), "--strategy", "greedy"], "--prompts")]:
        res = run(["compare", *args, "--model", str(tiny_model_dir)])
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr


def test_record_then_replay_gives_the_same_text(tiny_model_dir, tmp_path):
    rec = tmp_path / "out.jsonl"
    gen = run(["generate", "Once upon a time", "--model", str(tiny_model_dir), "--max-new-tokens", "16",
               "--ignore-eos", "--record", str(rec)])
    assert gen.returncode == 0, gen.stderr
    header, events = read_recording(rec)
    assert header["command"] == "generate" and header["params"]["max_new_tokens"] == 16
    # The header names what made it: the model, its weights and kernels, the whole engine config.
    assert header["model"] == tiny_model_dir.name
    assert {"quant", "activations", "kernels", "kernels_reason", "device", "num_slots"} <= set(header["engine"])
    assert header["engine_summary"].startswith(f"{tiny_model_dir.name}: cpu ")
    assert f"kernels={header['engine']['kernels']}" in header["engine_summary"]
    assert len(events) == 16 and [e["index"] for e in events] == list(range(16))
    assert all(b["t"] >= a["t"] for a, b in zip(events, events[1:]))
    replay = run(["replay", str(rec), "--speed", "50"])
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout == gen.stdout
    bad = run(["replay", str(tmp_path / "missing.jsonl")])
    assert bad.returncode == 2 and bad.stderr.startswith("tokenflow: error: cannot read recording")


def test_replay_keeps_the_recorded_pace():
    events = [{"t": 0.0, "text": "a"}, {"t": 0.5, "text": "b"}, {"t": 2.0, "text": "c"}]
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    out = list(replay_events(events, speed=2.0, sleep=sleep, clock=lambda: now[0]))
    assert [e["text"] for e in out] == ["a", "b", "c"]
    assert slept == pytest.approx([0.25, 0.75])  # offsets 0.5 s and 2.0 s at double speed


def test_flags_and_specs_read_values_the_same_way():
    from generator.cli.common import CLIParser, add_sampling_flags, field_value, sampling_params_from_args

    for name, text, value in [("top_k", "50", 50), ("temperature", "0.8", 0.8), ("seed", "none", None),
                              ("early_stopping", "never", "never"), ("ignore_eos", "yes", True),
                              ("logit_bias", "42=-5.5", (42, -5.5)), ("bad_words_ids", "12,34", (12, 34)),
                              ("stop_token_ids", "3", 3), ("stop", "the end", "the end")]:
        assert field_value(name, text) == value, name
    spec = parse_strategy_spec("sample:logit_bias=42=-5.5,logit_bias=7=1,stop_token_ids=3,stop_token_ids=4")
    parser = CLIParser(prog="t")
    add_sampling_flags(parser)
    flags = parser.parse_args(["--strategy", "sample", "--logit-bias", "42=-5.5", "--logit-bias", "7=1",
                               "--stop-token-ids", "3", "--stop-token-ids", "4"])
    assert spec == sampling_params_from_args(flags) == SamplingParams(
        strategy="sample", logit_bias={42: -5.5, 7: 1.0}, stop_token_ids=(3, 4))
    with pytest.raises(ParamError, match="ID=BIAS") as info:
        parse_strategy_spec("greedy:logit_bias=42")
    assert info.value.field == "logit_bias"


def test_replay_verify_reruns_a_recording(tiny_model_dir, tmp_path):
    """A sampled run recorded without --seed stores the seed it drew, its chain and the
    engine's fingerprint; `replay --verify` re-runs it: identical; a changed token is
    reported where it is, with exit status 1; a recording it cannot re-run is refused."""
    rec = tmp_path / "run.jsonl"
    gen = run(["generate", "Once upon a time", "--model", str(tiny_model_dir), "--strategy", "top_p",
               "--max-new-tokens", "10", "--n", "2", "--ignore-eos", "--record", str(rec)])
    assert gen.returncode == 0, gen.stderr
    header, events = read_recording(rec)
    assert isinstance(header["seed"], int) and header["params"]["seed"] == header["seed"]
    assert header["chain"] == "logits -> temperature -> top_p -> sample"
    assert header["fingerprint"].startswith("fp_") and header["kernels"] == header["engine"]["kernels"]
    assert header["prompt_ids"] and header["fingerprint_parts"]["weights"]
    ok = run(["replay", "--verify", str(rec)])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["stream 0: identical (10 tokens)", "stream 1: identical (10 tokens)"]
    lines = rec.read_text().splitlines()
    k = [i for i, line in enumerate(lines) if json.loads(line).get("stream") == "1"][4]
    tampered = json.loads(lines[k])
    tampered["token_id"] = (tampered["token_id"] + 1) % 300
    lines[k] = json.dumps(tampered)
    rec.write_text("\n".join(lines) + "\n")
    bad = run(["replay", "--verify", str(rec)])
    assert bad.returncode == 1
    assert "stream 1: differs at token 4: recorded" in bad.stdout and "stream 0: identical" in bad.stdout
    other = tmp_path / "cmp.jsonl"
    other.write_text(json.dumps({"type": "header", "command": "compare"}) + "\n")
    refused = run(["replay", "--verify", str(other)])
    assert refused.returncode == 2 and "--verify re-runs recordings of `tokenflow generate --record`" in refused.stderr
