"""The decision trace (``trace=True``), ``logprobs_mode`` and common random numbers, on
hand-made logits: every number of a trace against its definition computed here."""

from __future__ import annotations

import math

import pytest
import torch

from decoding import BatchSampler, ParamError, SamplingParams

V = 12


def _logits(seed: int = 0, rows: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, V, generator=g) * 2


def _trace(params: list[SamplingParams], logits: torch.Tensor, prompts=None):
    sampler = BatchSampler(params, prompt_ids=prompts)
    out = sampler(logits.clone())
    return out, out.trace.to_host([p.trace for p in params]) if out.trace is not None else None


def test_trace_numbers_match_their_definitions():
    logits = _logits(1)
    params = SamplingParams(strategy="sample", temperature=0.5, top_k=6, top_p=0.8, seed=3, trace=True,
                            repetition_penalty=1.5)
    out, (trace,) = _trace([params], logits, prompts=[[0, 1, 2]])
    tok = int(out.token_ids[0])
    raw = logits[0].log_softmax(-1)
    p = raw.exp()
    assert trace["entropy"] == pytest.approx(float(-(p * raw).sum()), rel=1e-5)
    assert trace["rank"] == 1 + int((raw > raw[tok]).sum())
    assert trace["prob"] == pytest.approx(float(p[tok]), rel=1e-5)
    best_other = max(float(p[i]) for i in range(V) if i != tok)
    assert trace["margin"] == pytest.approx(float(p[tok]) - best_other, abs=1e-6)
    assert trace["logprob"] == pytest.approx(float(raw[tok]), abs=1e-6)

    # the chain by hand: penalty on the prompt's tokens, temperature, top-k, top-p
    x = logits[0].clone()
    seen = torch.tensor([0, 1, 2])
    x[seen] = torch.where(x[seen] > 0, x[seen] / 1.5, x[seen] * 1.5)
    assert [entry["name"] for entry in trace["links"]] == ["repetition_penalty", "temperature", "top_k", "top_p"]
    pen, temp, topk, topp = trace["links"]
    assert pen["kept"] == V and pen["removed_mass"] == 0
    assert pen["logit_shift"] == pytest.approx(float(x[tok] - logits[0, tok]), abs=1e-5)
    x = x / 0.5
    assert temp["logit_shift"] == pytest.approx(float(x[tok]) - float(x[tok]) * 0.5, abs=1e-5)
    order = x.argsort(descending=True)
    probs = x.softmax(-1)
    assert topk["kept"] == 6
    assert topk["removed_mass"] == pytest.approx(float(probs[order[6:]].sum()), abs=1e-6)
    kept6 = x.clone()
    kept6[order[6:]] = -math.inf
    q = kept6.softmax(-1)[order[:6]]
    n_keep = int((q.cumsum(0) - q < 0.8).sum())  # the smallest prefix holding 0.8 of the mass
    assert topp["kept"] == n_keep
    assert topp["removed_mass"] == pytest.approx(float(q[n_keep:].sum()), abs=1e-6)
    final = kept6.clone()
    final[order[n_keep:]] = -math.inf
    assert trace["processed_logprob"] == pytest.approx(float(final.log_softmax(-1)[tok]), abs=1e-5)
    assert tok in order[:n_keep].tolist()


def test_trace_only_for_rows_that_ask_and_off_by_default():
    logits = _logits(2, rows=3)
    plain = [SamplingParams(strategy="sample", seed=1), SamplingParams(), SamplingParams(strategy="min_p", seed=2)]
    out = BatchSampler(plain)(logits.clone())
    assert out.trace is None  # nothing to read when no row traces
    mixed = [plain[0], SamplingParams(trace=True), plain[2]]
    traced, traces = _trace(mixed, logits)
    assert traces[0] is None and traces[2] is None
    assert traces[1]["rank"] == 1 and traces[1]["links"] == []  # greedy without links: the argmax
    assert torch.equal(traced.token_ids, out.token_ids)  # tracing never changes a token


def test_tracing_changes_no_token_over_many_steps():
    params = SamplingParams(strategy="llama_cpp", seed=5, presence_penalty=0.5)
    runs = []
    for trace in (False, True):
        sampler = BatchSampler([params.replace(trace=trace)], prompt_ids=[[1, 2]])
        ids = []
        for step in range(15):
            out = sampler(_logits(step))
            ids.append(int(out.token_ids[0]))
            sampler.accept(ids[-1:])
        runs.append(ids)
    assert runs[0] == runs[1]


def test_penalty_link_reports_the_shift_of_the_chosen_token():
    logits = torch.zeros(1, V)
    logits[0, 4] = 3.0  # token 4 wins even after the penalty
    params = SamplingParams(trace=True, presence_penalty=1.0, frequency_penalty=0.5)
    sampler = BatchSampler([params], prompt_ids=[[7]])
    sampler.accept([4])  # generated once
    out = sampler(logits)
    (trace,) = out.trace.to_host([True])
    assert int(out.token_ids[0]) == 4
    assert trace["links"] == [{"name": "presence_frequency_penalty", "kept": V, "removed_mass": 0.0,
                               "logit_shift": pytest.approx(-1.5)}]


def test_logprobs_mode_processed_reports_the_chain_distribution():
    logits = _logits(3)
    raw = SamplingParams(strategy="top_k", top_k=3, temperature=0.7, seed=1, logprobs=5)
    processed = raw.replace(logprobs_mode="processed")
    out = BatchSampler([raw, processed])(torch.cat([logits, logits]))
    expected_raw = logits[0].log_softmax(-1).topk(5)
    assert torch.allclose(out.top_logprobs[0], expected_raw.values, atol=1e-6)
    chain = logits[0] / 0.7
    cut = chain.topk(3).values[-1]
    chain = chain.masked_fill(chain < cut, -math.inf).log_softmax(-1)
    assert torch.equal(out.top_ids[1, :3], chain.topk(3).indices)
    assert torch.allclose(out.top_logprobs[1, :3], chain.topk(3).values, atol=1e-6)
    assert torch.isinf(out.top_logprobs[1, 3:]).all()  # removed by top-k: no probability left


def test_bad_settings_are_refused():
    with pytest.raises(ParamError) as err:
        SamplingParams(logprobs_mode="cooked")
    assert err.value.field == "logprobs_mode"
    with pytest.raises(ParamError) as err:
        SamplingParams(strategy="beam", trace=True)
    assert err.value.field == "trace"


# -- common random numbers ---------------------------------------------------------

def test_two_chains_that_keep_the_same_set_pick_the_same_token():
    """top-k 4 and a min-p set just below the 4th token's ratio keep the same four tokens:
    under one seed, the same token, for every seed; and the seeds do not all agree."""
    logits = _logits(4)
    p = logits[0].softmax(-1).sort(descending=True).values
    min_p = float((p[3] + p[4]) / 2 / p[0])
    picks = []
    for seed in range(40):
        a = BatchSampler([SamplingParams(strategy="top_k", top_k=4, seed=seed)])(logits.clone())
        b = BatchSampler([SamplingParams(strategy="min_p", min_p=min_p, seed=seed)])(logits.clone())
        assert int(a.token_ids[0]) == int(b.token_ids[0]), seed
        picks.append(int(a.token_ids[0]))
    assert len(set(picks)) > 1


def test_an_extra_draw_does_not_move_the_main_stream():
    """XTC's coin comes from a second stream: an XTC row whose coin never removes anything
    (threshold above 0.5: two tokens cannot both pass it) picks what the same chain with
    XTC off picks, step after step."""
    runs = []
    for probability in (0.0, 0.9):
        params = SamplingParams(strategy="xtc", xtc_probability=probability, xtc_threshold=0.6, seed=11)
        sampler = BatchSampler([params])
        ids = []
        for step in range(20):
            out = sampler(_logits(100 + step))
            ids.append(int(out.token_ids[0]))
            sampler.accept(ids[-1:])
        runs.append(ids)
    assert runs[0] == runs[1]


def test_the_second_stream_follows_the_seed():
    from decoding.selectors import extra_generator, make_generator

    a = extra_generator(make_generator(7))
    b = extra_generator(make_generator(7))
    c = extra_generator(make_generator(8))
    x, y, z = (torch.rand(4, generator=g) for g in (a, b, c))
    assert torch.equal(x, y) and not torch.equal(x, z)
    assert not torch.equal(x, torch.rand(4, generator=make_generator(7)))
