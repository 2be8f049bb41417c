"""The checks behind the batch- and chunk-invariance tests, shared by the tiny model's
(tests/generator/test_invariance.py, every kernel tier) and the default model's
(tests/integration/test_invariance_integration.py): a row's tokens alone vs among 15 other
requests joining at other steps, and a prompt's logits and cache prefilled in 2 or 7
chunks, in chunks of 1, 2 or 7 tokens, beside other prompts, or as a decode step."""

from __future__ import annotations

import torch

from decoding import SamplingParams

STEPS = 8


def targets(steps: int = STEPS) -> list[SamplingParams]:
    """The rows under test: a seeded sampled request and a greedy one."""
    return [SamplingParams(strategy="top_p", top_p=0.95, seed=1, max_new_tokens=steps, ignore_eos=True),
            SamplingParams(strategy="greedy", max_new_tokens=steps, ignore_eos=True)]


def others(steps: int = STEPS) -> list[SamplingParams]:
    """14 more rows of other strategies and lengths (each target then shares the batch with 15)."""
    kinds = [dict(strategy="greedy"), dict(strategy="sample", seed=7), dict(strategy="top_k", top_k=5, seed=2),
             dict(strategy="min_p", min_p=0.1, seed=3), dict(strategy="typical", seed=4),
             dict(strategy="greedy", repetition_penalty=1.3), dict(strategy="sample", temperature=0.7, seed=5),
             dict(strategy="greedy", logprobs=3)]
    return [SamplingParams(**kinds[i % len(kinds)], max_new_tokens=steps + (i % 3) - 1, ignore_eos=True)
            for i in range(14)]


def run_rows(engine, rows: list[tuple[list[int], SamplingParams, int]]) -> list[list[tuple[int, float]]]:
    """Each ``(prompt ids, params, the step it joins at)`` row through one BatchGenerator;
    every row's ``(token id, logprob)`` list."""
    batch = engine.batch()
    handles: dict[int, int] = {}
    out: list[list[tuple[int, float]]] = [[] for _ in rows]
    step = 0
    while len(handles) < len(rows) or batch.active:
        for i, (ids, params, at) in enumerate(rows):
            if at == step and i not in handles:
                handles[i] = batch.add(ids, params)
        back = {h: i for i, h in handles.items()}
        for h, ev in batch.step():
            assert not isinstance(ev, Exception), ev
            out[back[h]].append((ev.token_id, ev.logprob))
        step += 1
    return out


def check_rows_alone_equal_rows_in_a_crowd(engine, prompts: list[list[int]]) -> None:
    """The targets' tokens (and log-probabilities) alone, then among 15 other requests: all
    joining at step 0, the targets joining 3 steps after the others, the others joining 3
    steps after the targets."""
    tg, ot = targets(), others()
    alone = [run_rows(engine, [(prompts[0], p, 0)])[0] for p in tg]
    assert len(alone[0]) == STEPS
    for target_at, other_at in ((0, 0), (3, 0), (0, 3)):
        rows = [(prompts[0], p, target_at) for p in tg] + [(prompts[1 + i % (len(prompts) - 1)], p, other_at)
                                                             for i, p in enumerate(ot)]
        got = run_rows(engine, rows)
        for i in range(len(tg)):
            assert got[i] == alone[i], (f"row {i} joining at {target_at} (others at {other_at}): "
                                        f"first difference at token "
                                        f"{next(k for k, (a, b) in enumerate(zip(alone[i], got[i])) if a != b)}")


def _kv(model, slot: int, n: int) -> list[torch.Tensor]:
    return [t for layer in model.layers for t in (layer.k_cache[slot, :, :n].clone(), layer.v_cache[slot, :, :n].clone())]


def check_prefill_in_chunks(model, prompt: list[int], crowd: list[list[int]]) -> None:
    """A prompt's last logits and cache, bit for bit: prefilled whole, in 2 and 7 chunks,
    beside other prompts (``prefill_many``), and as a prefill of all but its last token
    followed by a decode step of that token. ``model``: a FastLlama with 8+ slots."""
    from generator.model.runner import FastRunner

    n = len(prompt)
    whole_runner = FastRunner(model, prefill_chunk=n)
    whole = whole_runner.prefill(0, prompt)
    kv = _kv(model, 0, n)
    # 2 and 7 chunks, and chunks of 1, 2 and 7 tokens (on PyTorch's kernels, small chunks
    # are where a chunk's float32 attention used to round by its shape).
    for what, size in (("2 chunks", -(-n // 2)), ("7 chunks", -(-n // 7)), ("chunks of 1 token", 1),
                       ("chunks of 2 tokens", 2), ("chunks of 7 tokens", 7)):
        runner = FastRunner(model, prefill_chunk=size)
        got = runner.prefill(1, prompt)
        assert torch.equal(got, whole), f"{what}: logits differ (up to {(got - whole).abs().max().item():.3g})"
        assert all(torch.equal(a, b) for a, b in zip(_kv(model, 1, n), kv)), f"{what}: cache differs"
    # One chunk at a time through the scheduler's own calls (start > 0), beside other prompts.
    runner = FastRunner(model, prefill_chunk=n)
    cut = n // 3
    runner.prefill_many([2, 3], [prompt[:cut], crowd[0]], [0, 0])
    got = runner.prefill_many([2, 4, 5], [prompt[cut:], crowd[1], crowd[2]], [cut, 0, 0])[:1]
    assert torch.equal(got, whole), "beside other prompts: logits differ"
    assert all(torch.equal(a, b) for a, b in zip(_kv(model, 2, n), kv)), "beside other prompts: cache differs"
    runner.prefill(6, prompt[:-1])
    got = runner.decode([6], torch.tensor(prompt[-1:]))
    assert torch.equal(got, whole), "prefill + a decode step of the last token: logits differ"
