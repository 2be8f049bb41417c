"""Batch and chunk invariance on the tiny model, on every kernel tier this machine runs and on
PyTorch's kernels: a row's tokens and log-probabilities are the same alone and among 15
other requests joining at other steps; a prompt's logits and cache are the same bits
prefilled whole, in chunks, beside other prompts, or through a decode step. (The default
model: tests/integration/test_invariance_integration.py.)"""

from __future__ import annotations

import pytest
import torch

from decoding import BatchSampler, SamplingParams
from generator import Engine, kernels

from invariance_checks import check_prefill_in_chunks, check_rows_alone_equal_rows_in_a_crowd

TIERS = kernels.status()["tiers"]  # ours the CPU runs, then "aten"


@pytest.fixture(params=TIERS)
def any_tier(request):
    previous = kernels.use(request.param)
    yield request.param
    kernels.use(previous)


@pytest.fixture
def tiny_int4(tiny_model_dir, any_tier):
    """The tiny model as the default model runs: int4 weights, int8 head, bf16 activations
    (int8 where the tier has them), packed for the tier under test."""
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=16,
                         max_len=128)
    assert engine.config.kernels == any_tier
    return engine


def _prompts(engine) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    vocab = engine.model.config.vocab_size
    return [torch.randint(3, vocab, (40 - 2 * i,), generator=g).tolist() for i in range(6)]


def test_a_row_gets_the_same_tokens_alone_and_among_15_others(tiny_int4):
    check_rows_alone_equal_rows_in_a_crowd(tiny_int4, _prompts(tiny_int4))


def test_a_prompt_prefills_to_the_same_bits_in_any_chunks(tiny_int4):
    prompts = _prompts(tiny_int4)
    check_prefill_in_chunks(tiny_int4.runner.model, prompts[0], prompts[1:])


@pytest.mark.parametrize("tier_name", TIERS)
def test_the_greedy_fast_path_and_a_mixed_batch_report_the_same_bits(tier_name):
    """A plain greedy row picks the same id with the same log-probability whether its batch
    is all greedy (the fused greedy pick) or mixed with sampled rows (the general path)."""
    previous = kernels.use(tier_name)
    try:
        logits = torch.randn(3, 5000, generator=torch.Generator().manual_seed(1)) * 4
        greedy = SamplingParams(strategy="greedy")
        alone = BatchSampler([greedy], greedy_pick=kernels.greedy_pick)(logits[:1])
        mixed = BatchSampler([greedy, SamplingParams(strategy="sample", seed=1), greedy],
                             greedy_pick=kernels.greedy_pick)(logits)
        assert torch.equal(mixed.token_ids[:1], alone.token_ids)
        assert torch.equal(mixed.logprobs[:1], alone.logprobs)
        assert torch.equal(mixed.logprobs[2:], BatchSampler([greedy], greedy_pick=kernels.greedy_pick)(
            logits[2:]).logprobs)
    finally:
        kernels.use(previous)
