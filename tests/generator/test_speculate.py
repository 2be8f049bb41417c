"""Prompt-lookup speculation (generator/speculate.py): the drafts are transformers' prompt
lookup's, and a row's tokens and log-probabilities are the same bits with and without
speculation (greedy, seeded sampling, penalties, DRY, stops, beside rows that do not
speculate) on every kernel tier this machine runs, while the forwards drop when drafts match.

Drafts are forced both right and wrong by an oracle drafter that proposes the row's true
continuation (from a run without speculation) with every third draft corrupted."""

from __future__ import annotations

import pytest
import torch

from decoding import ParamError, SamplingParams
from generator import Engine
from generator.config import EngineConfig, EngineConfigError
from generator.speculate import NgramDrafter, StepCost, exact_here
from decoding.speculative import Speculation, speculation

ORACLE = "ngram:k=4,n=3,min_n=1"


# -- the drafts -------------------------------------------------------------------------

def test_drafts_are_transformers_prompt_lookup_candidates():
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        seq = torch.randint(0, 4, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g).tolist()
        n, k = 1 + trial % 3, 1 + trial % 5
        ref = PromptLookupCandidateGenerator(num_output_tokens=k, max_matching_ngram_size=n, max_length=10_000)
        cand, _ = ref.get_candidates(torch.tensor([seq]))
        expected = cand[0, len(seq):].tolist()
        drafter = NgramDrafter(Speculation("ngram", k, n, 1))
        drafter.extend(seq[: len(seq) // 2])  # grown in two pieces, as a row's history is
        drafter.extend(seq)
        assert drafter.draft(k) == expected, (seq, n, k)


def test_the_longest_suffix_wins_and_min_n_and_the_limit_hold():
    d = NgramDrafter(Speculation("ngram", 3, 3, 2))
    d.extend([5, 6, 7, 1, 2, 3, 9, 6, 7, 8, 2, 3])
    assert d.draft(3) == [9, 6, 7]  # "2 3" (a 3-gram "1 2 3" does not end the sequence)
    d.extend(d.tokens + [1, 2, 3])
    assert d.draft(3) == [9, 6, 7] and d.draft(1) == [9] and d.draft(0) == []
    d = NgramDrafter(Speculation("ngram", 3, 3, 2))
    d.extend([4, 5, 6, 9, 6])
    assert d.draft(3) == []  # only a 1-gram matches; min_n is 2


def test_a_draft_is_cut_to_the_length_that_pays_at_its_rate_and_cost():
    d = NgramDrafter(Speculation("ngram", 8, 3, 2))
    assert d.worth(8, 0.15) == 2  # p = 0.5 before any verify: 1.75 tokens for 1.3 steps beats 1 and 3
    d.right[3] = 0.95
    assert d.worth(8, 0.05) == 8 and d.worth(3, 0.05) == 3 and d.worth(0, 0.05) == 0
    d.right[3] = 0.1
    assert d.worth(8, 0.2) == 0  # a draft token right 1 time in 10 does not pay for a row at 0.2
    d.right[3] = 0.5
    for _ in range(6):
        d.observe(0, 4)  # the first token wrong: one failure counted (the rest were never chosen)
    assert d.right[3] < 0.15 and d.worth(8, 0.15) == 0
    for _ in range(6):
        d.observe(4, 4)  # all right: four successes each
    assert d.right[3] > 0.9 and d.worth(8, 0.15) == 8
    d.matched = 2
    assert d.right[2] == NgramDrafter.P0  # each n-gram length keeps its own rate


def test_a_row_whose_drafts_keep_failing_stops_verifying_them_and_tries_again_later():
    d = NgramDrafter(Speculation("ngram", 4, 3, 2))
    d.extend([1, 2, 3, 4, 5, 1, 2])  # "1 2" matches: the draft is [3, 4, 5, 1]
    proposed = []
    for _ in range(60):
        got = d.propose(4, 0.15)
        proposed.append(len(got))
        if got:
            d.observe(0, len(got))  # never right
    assert proposed[0] == 2 and sum(proposed) < 25  # 60 x 4 rows if every match were verified
    assert proposed[-40:].count(0) > 30 and any(proposed[20:])  # rests, and probes again


def test_the_step_cost_is_fitted_from_the_forwards_timed():
    cost = StepCost()
    assert cost.fit() is None and cost.row_cost(1) == StepCost.PRIOR
    for _ in range(StepCost.MIN_SEEN):
        cost.add(1, 0.005)
        cost.add(5, 0.009)
    fixed, per_row = cost.fit()
    assert fixed == pytest.approx(0.004) and per_row == pytest.approx(0.001)
    assert cost.row_cost(1) == pytest.approx(0.2)  # one more row: a fifth of a one-row step
    assert cost.row_cost(8) == pytest.approx(0.001 / 0.012)  # a smaller part of a bigger step
    cost.add(3, 0.5)  # one slow outlier of a count seen once does not enter the fit yet
    assert cost.fit() == pytest.approx((fixed, per_row))


def test_speculation_with_drafts_that_never_match_keeps_the_tokens_and_stops_drafting(tiny_model_dir, monkeypatch):
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=2,
                         max_len=256)
    prompt = list(range(40, 60))
    params = SamplingParams(strategy="greedy", max_new_tokens=60, ignore_eos=True)
    want, _ = _events(engine, prompt, params.replace(speculative="off"))
    monkeypatch.setattr(NgramDrafter, "draft",
                        lambda self, limit: [(t + 1) % 300 for t in self.tokens[-min(self.k, limit):]][:limit])
    monkeypatch.setattr(StepCost, "row_cost", lambda self, rows: StepCost.PRIOR)
    c0 = engine.spec_counts.drafted
    got, forwards = _events(engine, prompt, params.replace(speculative="ngram:k=4"))
    assert got == want
    assert engine.spec_counts.drafted - c0 < 40  # 59 steps x 4 draft rows if every draft were verified
    # every decode forward of the speculating row was timed, plain (1 row) and verify (more rows) alike
    seen = engine.step_cost.seen
    assert 1 in seen and max(seen) > 1 and sum(n for _, n in seen.values()) == forwards - 1  # - the prefill


def test_bad_speculative_settings_name_the_field():
    assert speculation({"method": "ngram", "k": 4, "n": 3}) == Speculation("ngram", 4, 3, 2)
    assert str(speculation("ngram:k=2,n=1")) == "ngram:k=2,n=1,min_n=1"
    assert SamplingParams(speculative='{"method": "off"}').speculative == Speculation("off")
    for bad, word in (({"k": 0}, "k"), ({"k": 17}, "k"), ({"n": "x"}, "n"), ({"method": "eagle"}, "method"),
                      ({"n": 2, "min_n": 3}, "min_n"), ({"draft": 1}, "draft"), ([4], "object"),
                      ("ngram:k", "key=value")):
        with pytest.raises(ParamError) as err:
            SamplingParams(speculative=bad)
        assert err.value.field == "speculative" and word in err.value.message
    with pytest.raises(EngineConfigError, match="speculate: k"):
        EngineConfig(speculate="ngram:k=0")


# -- exactness on the tiny model --------------------------------------------------------

def _engine(tiny_model_dir):
    return Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=16,
                       max_len=256)


@pytest.fixture
def oracle(monkeypatch):
    """Drafts from the true continuations in ``refs`` (prompt + output, a list per row), every
    third one wrong at its second token; a row whose history is no reference's prefix drafts nothing."""
    refs: list[list[int]] = []
    calls = [0]

    def draft(self, limit):
        limit = min(self.k, limit)
        for ref in refs:
            if limit > 0 and ref[: len(self.tokens)] == self.tokens and len(ref) > len(self.tokens):
                d = ref[len(self.tokens): len(self.tokens) + limit]
                calls[0] += 1
                if calls[0] % 3 == 0 and len(d) > 1:
                    d[1] = (d[1] + 1) % 300
                return d
        return []

    monkeypatch.setattr(NgramDrafter, "draft", draft)
    # the measured row cost would make the draft lengths (not the tokens) vary with the host's load
    monkeypatch.setattr(StepCost, "row_cost", lambda self, rows: StepCost.PRIOR)
    return refs


def _events(engine, prompt, params):
    c0 = engine.runner.forward_calls
    evs = list(engine.stream(prompt, params))
    return [(e.token_id, e.text, e.logprob, e.finish_reason) for e in evs], engine.runner.forward_calls - c0


SETTINGS = [
    dict(),
    dict(strategy="sample", temperature=1.0, seed=5),
    dict(strategy="min_p", temperature=0.9, min_p=0.05, seed=3, repetition_penalty=1.3, frequency_penalty=0.2),
    dict(strategy="sample", temperature=0.8, seed=7, dry_multiplier=0.8, logprobs=3),
]


def test_the_same_tokens_with_and_without_speculation_on_every_tier(tiny_model_dir, tier, oracle):
    engine = _engine(tiny_model_dir)
    assert exact_here(engine)
    prompt = list(range(10, 22)) * 3
    for kw in SETTINGS:
        off = SamplingParams(max_new_tokens=40, ignore_eos=True, speculative="off", **kw)
        want, plain_calls = _events(engine, prompt, off)
        oracle[:] = [prompt + [t for t, *_ in want]]
        got, spec_calls = _events(engine, prompt, off.replace(speculative=ORACLE))
        assert got == want, kw
        assert spec_calls < plain_calls * 0.6, (kw, spec_calls, plain_calls)  # most drafts are right


def test_stops_and_limits_hold_inside_an_accepted_run(tiny_model_dir, oracle):
    engine = _engine(tiny_model_dir)
    prompt = list(range(30, 45))
    ref, _ = _events(engine, prompt, SamplingParams(max_new_tokens=30, ignore_eos=True))
    oracle[:] = [prompt + [t for t, *_ in ref]]
    for max_new in (1, 2, 5, 7):
        p = SamplingParams(max_new_tokens=max_new, ignore_eos=True)
        assert _events(engine, prompt, p.replace(speculative=ORACLE))[0] == _events(engine, prompt, p)[0]
    # a stop string and a stop id that fall inside a draft the row accepts
    text = "".join(t for _, t, *_ in ref)
    stop = text[len(text) // 3: len(text) // 3 + 3]
    for p in (SamplingParams(max_new_tokens=30, ignore_eos=True, stop=[stop]),
              SamplingParams(max_new_tokens=30, ignore_eos=True, stop_token_ids=[ref[9][0]])):
        want, _ = _events(engine, prompt, p)
        got, _ = _events(engine, prompt, p.replace(speculative=ORACLE))
        assert got == want and got[-1][3] == "stop" and len(got) < 30


def test_speculating_rows_beside_rows_that_do_not(tiny_model_dir, tier, oracle):
    engine = _engine(tiny_model_dir)
    prompts = [list(range(40 + i, 52 + i)) * 2 for i in range(4)]
    settings = [SamplingParams(max_new_tokens=24 - 3 * i, ignore_eos=True, **kw) for i, kw in enumerate(SETTINGS)]

    def run(spec_for):
        batch = engine.batch()
        handles = [batch.add(p, s.replace(speculative=spec_for(i))) for i, (p, s) in enumerate(zip(prompts, settings))]
        out = {h: [] for h in handles}
        steps = 0
        while batch.active:
            for h, ev in batch.step():
                out[h].append((ev.token_id, ev.logprob, ev.finish_reason))
            steps += 1
        return [out[h] for h in handles], steps

    want, plain_steps = run(lambda i: "off")
    oracle[:] = [p + [t for t, *_ in w] for p, w in zip(prompts, want)]
    got, spec_steps = run(lambda i: ORACLE if i % 2 == 0 else "off")  # rows 1 and 3 never draft
    assert got == want
    got, all_steps = run(lambda i: ORACLE)
    assert got == want and all_steps < plain_steps


def test_real_ngram_drafts_on_a_repetitive_prompt_change_nothing(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    prompt = list(range(60, 72)) * 4
    for kw in SETTINGS[:2]:
        p = SamplingParams(max_new_tokens=40, ignore_eos=True, **kw)
        before = engine.spec_counts.drafted if hasattr(engine, "spec_counts") else 0
        assert _events(engine, prompt, p.replace(speculative="ngram:k=4,n=3,min_n=1"))[0] == \
            _events(engine, prompt, p)[0]
        assert engine.spec_counts.drafted > before  # drafts were made (and verified)


def test_no_speculation_where_the_verify_rows_are_not_exact(tiny_model_dir):
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="none", num_slots=4,
                         max_len=256)  # float weights: PyTorch's GEMM over the verify rows
    assert not exact_here(engine)
    prompt = list(range(60, 72)) * 4
    p = SamplingParams(max_new_tokens=20, ignore_eos=True)
    got, calls = _events(engine, prompt, p.replace(speculative="ngram:k=4,n=3,min_n=1"))
    assert calls == 20 and got == _events(engine, prompt, p)[0]
    assert getattr(engine, "spec_counts", None) is None or engine.spec_counts.verify_steps == 0


def test_exact_on_pytorchs_kernels_too(tiny_model_dir, pytorchs_kernels, oracle):
    engine = _engine(tiny_model_dir)
    assert engine.config.kernels == "aten" and exact_here(engine)
    prompt = list(range(10, 22)) * 3
    for kw in SETTINGS[:2]:
        off = SamplingParams(max_new_tokens=30, ignore_eos=True, speculative="off", **kw)
        want, plain_calls = _events(engine, prompt, off)
        oracle[:] = [prompt + [t for t, *_ in want]]
        got, spec_calls = _events(engine, prompt, off.replace(speculative=ORACLE))
        assert got == want and spec_calls < plain_calls * 0.6, kw


def test_the_engine_default_applies_to_requests_that_do_not_say(tiny_model_dir, oracle):
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", max_len=256,
                         speculate=ORACLE)
    assert engine.config.speculate == ORACLE
    prompt = list(range(10, 22))
    p = SamplingParams(max_new_tokens=20, ignore_eos=True)
    want, plain = _events(engine, prompt, p.replace(speculative="off"))
    oracle[:] = [prompt + [t for t, *_ in want]]
    got, fewer = _events(engine, prompt, p)
    assert got == want and fewer < plain


def test_generate_stats_say_what_speculation_did(tiny_model_dir):
    import subprocess
    import sys

    prompt = "the cat sat on the mat. " * 4
    args = [sys.executable, "-m", "generator.cli", "generate", prompt, "--model", str(tiny_model_dir),
            "--max-new-tokens", "24", "--ignore-eos", "--stats", "--dtype", "bfloat16", "--quant", "int4"]
    spec = subprocess.run(args + ["--speculate", "ngram:k=4,n=2,min_n=1"], capture_output=True, text=True,
                          timeout=300)
    assert spec.returncode == 0, spec.stderr
    plain = _engine(tiny_model_dir).generate_text(prompt, SamplingParams(max_new_tokens=24, ignore_eos=True))
    assert spec.stdout == plain + "\n"
    engine_line = next(line for line in spec.stderr.splitlines() if line.startswith("[engine] "))
    assert "speculate=ngram:k=4,n=2,min_n=1" in engine_line and "off here" not in engine_line
    stats = next(line for line in spec.stderr.splitlines() if line.startswith("[stats] "))
    assert "speculation: " in stats and "drafted tokens accepted" in stats
    bad = subprocess.run(args + ["--speculate", "ngram:k=0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "speculate: k must be" in bad.stderr and "Traceback" not in bad.stderr
