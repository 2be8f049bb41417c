"""The fused one-token step (``kernels.decode_layers``: every decoder layer in one op of ours)
on the tiny model: the same logits and cache bits as the eager per-op loop on every tier the
machine runs, at 1 and several rows at different lengths, with bf16 and int8 activations;
and where it does not run (the eager loop takes over)."""

from __future__ import annotations

import pytest
import torch

from generator import kernels
from generator.model.runner import FastRunner

from conftest import build_fast_llama, build_tiny_model
from fused_checks import check_fused_equals_eager

PROMPTS = [[5, 9, 14, 200, 31], [7, 7, 8], [100, 3, 54, 2, 9, 11, 250], [1]]
TOKENS = [17, 250, 3, 99, 42]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(320)


@pytest.mark.parametrize("activations", ["bf16", "int8"])
def test_fused_step_equals_the_eager_loop_bit_for_bit(tiny, tier, activations):
    model = build_fast_llama(tiny, quant="int4", num_slots=4, max_len=64, activations=activations)
    if activations == "int8" and model.activations != "int8":
        pytest.skip("int8 activations do not run on this machine's best tier")
    assert model.fused_layers(1) is not None
    check_fused_equals_eager(model, PROMPTS, TOKENS)


def test_where_the_fused_step_does_not_run(tiny, tier):
    """A dense copy used from 2 rows on (then the eager loop, as the linears would), int8
    projections, float32 weights and cache, PyTorch's kernels, or ``fuse_layers`` off: no fused op."""
    model = build_fast_llama(tiny, quant="int4", num_slots=4, max_len=64)
    assert model.fused_layers(3) is not None
    model.layers[1].o.keep_dense(min_rows=2)
    assert model.fused_layers(1) is not None and model.fused_layers(2) is None
    model.fuse_layers = False
    assert model.fused_layers(1) is None
    assert build_fast_llama(tiny, quant="int8", num_slots=2, max_len=32).fused_layers(1) is None
    assert build_fast_llama(tiny, quant="none", dtype="float32", num_slots=2, max_len=32).fused_layers(1) is None
    previous = kernels.use("aten")
    try:
        assert build_fast_llama(tiny, quant="int4", num_slots=2, max_len=32).fused_layers(1) is None
    finally:
        kernels.use(previous)


def test_fused_step_after_a_dense_copy_from_2_rows_still_matches(tiny, tier):
    """One row fused, two rows through the eager loop (its dense o projection): each gives
    what the loop alone gives."""
    model = build_fast_llama(tiny, quant="int4", num_slots=4, max_len=64)
    model.layers[0].o.keep_dense(min_rows=2)
    check_fused_equals_eager_rows = []
    for fuse in (False, True):
        for layer in model.layers:
            layer.k_cache.zero_()
            layer.v_cache.zero_()
        model.fuse_layers = fuse
        runner = FastRunner(model, compile=False)
        for slot, ids in enumerate(PROMPTS[:2]):
            runner.prefill(slot, ids)
        check_fused_equals_eager_rows.append(
            [runner.decode([0], torch.tensor([17])), runner.decode([0, 1], torch.tensor([3, 4]))])
    model.fuse_layers = True
    for a, b in zip(*check_fused_equals_eager_rows):
        assert torch.equal(a, b)


def test_bad_arguments_raise_not_crash(tiny, tier):
    model = build_fast_llama(tiny, quant="int4", num_slots=2, max_len=32)
    weights, modes, caches = model.fused_layers(1)
    x = torch.zeros(1, 64, dtype=torch.bfloat16)
    one = torch.tensor([1])

    def call(slots=torch.tensor([0]), positions=torch.tensor([0]), modes=modes, weights=weights):
        return kernels.decode_layers(x, weights, modes, caches, model.rope_cos, model.rope_sin, slots, positions,
                                     one, model.n_head, model.eps, 0.25)

    assert call().shape == (1, 64)
    with pytest.raises(RuntimeError, match="slot"):
        call(slots=torch.tensor([5]))
    with pytest.raises(RuntimeError, match="position"):
        call(positions=torch.tensor([40]))
    with pytest.raises(RuntimeError, match="4 modes"):
        call(modes=modes[:-1])
    with pytest.raises(RuntimeError, match="codes do not match"):
        call(modes=[1 - m for m in modes])
