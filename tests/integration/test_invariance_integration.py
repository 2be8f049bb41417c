"""Batch and chunk invariance on the real default model (SmolLM2-135M: int4 weights, int8
head, the best kernel tier this CPU runs): a seeded top_p request and a greedy request give
the same token ids and log-probabilities alone and among 15 other requests (other
strategies, joining at step 0 and mid-way); a prompt prefilled whole, in 2 and 7 chunks,
beside other prompts, or through a decode step gives the same logits and cache bits.
(The tiny model on every tier: tests/generator/test_invariance.py.)"""

from __future__ import annotations

import pytest

from invariance_checks import check_prefill_in_chunks, check_rows_alone_equal_rows_in_a_crowd

pytestmark = pytest.mark.integration

PROMPTS = ["Write a short story about a lighthouse keeper.", "The capital of France is",
           "List three uses of a paperclip:", "def fibonacci(n):", "Once upon a time, in a quiet village,",
           "Explain streaming in one sentence."]


def test_default_model_rows_alone_equal_rows_among_15_others(default_int4):
    prompts = [default_int4.encode(p, chat=True) for p in PROMPTS]
    check_rows_alone_equal_rows_in_a_crowd(default_int4, prompts)


def test_default_model_prefill_in_1_2_7_chunks(default_int4):
    prompts = [default_int4.encode(p, chat=True) for p in PROMPTS]
    check_prefill_in_chunks(default_int4.runner.model, prompts[0], prompts[1:])


def test_default_model_prefill_in_chunks_on_pytorchs_kernels():
    """The same prefill checks with PyTorch's kernels forced (the tier without a C compiler):
    prompt tokens go through the one-token step there too."""
    from generator import Engine, kernels

    previous = kernels.use("aten")
    try:
        engine = Engine.load(num_slots=8, max_len=128)
        assert engine.config.kernels == "aten"
        prompts = [engine.encode(p, chat=True) for p in PROMPTS]
        check_prefill_in_chunks(engine.runner.model, prompts[0], prompts[1:])
    finally:
        kernels.use(previous)
