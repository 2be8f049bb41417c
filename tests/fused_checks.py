"""The check behind the fused one-token step's tests (tests/generator/test_fused_step.py on
the tiny model and every tier, tests/integration/test_fused_step_integration.py on the
default model): the same steps run through ``kernels.decode_layers`` (every layer in one op)
and through the eager per-op loop give equal logits and equal cache bits."""

from __future__ import annotations

import torch

from generator import kernels
from generator.model.runner import FastRunner


def _steps(model, prompts: list[list[int]], tokens: list[int], fuse: bool) -> tuple[list[torch.Tensor], list, int]:
    """From zeroed caches: prefill ``prompts`` into slots 0.., then one-token steps of every
    row, of one row, of rows with a free slot between them (a padding row), of rows far apart
    (gathered) and of a row alone again; returns the logits, the caches and how many steps
    ran the fused op."""
    for layer in model.layers:
        layer.k_cache.zero_()
        layer.v_cache.zero_()
    model.fuse_layers = fuse
    calls = 0
    real = kernels.decode_layers

    def counted(*args):
        nonlocal calls
        calls += 1
        return real(*args)

    kernels.decode_layers = counted
    try:
        runner = FastRunner(model, compile=False)
        logits = [runner.prefill(slot, ids) for slot, ids in enumerate(prompts)]
        every = list(range(len(prompts)))
        rows_of_steps = [every, every, [0], every[::2], [every[0], every[-1]], [every[-1]], every]
        for i, rows in enumerate(rows_of_steps):
            ids = torch.tensor([tokens[(i + r) % len(tokens)] for r in rows])
            logits.append(runner.decode(rows, ids))
    finally:
        kernels.decode_layers = real
        model.fuse_layers = True
    caches = [t.clone() for layer in model.layers for t in (layer.k_cache, layer.v_cache)]
    return logits, caches, calls


def check_fused_equals_eager(model, prompts: list[list[int]], tokens: list[int]) -> None:
    """The fused step runs (every one-token step; a one-token prompt's prefill too) and gives
    the eager loop's logits and caches, bit for bit."""
    eager, eager_caches, none = _steps(model, prompts, tokens, fuse=False)
    fused, fused_caches, calls = _steps(model, prompts, tokens, fuse=True)
    assert none == 0 and calls >= len(fused) - len(prompts)
    for i, (a, b) in enumerate(zip(eager, fused)):
        assert torch.equal(a, b), f"step {i}: max diff {(a - b).abs().max().item()}"
    for i, (a, b) in enumerate(zip(eager_caches, fused_caches)):
        assert torch.equal(a, b), f"cache {i}"
