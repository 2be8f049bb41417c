"""The fused one-token step on the real default model (SmolLM2-135M: int4 weights, int8
head) on every tier the machine runs: the same logits and cache bits as the eager per-op
loop, at 1 row and at 4 rows of different lengths (a padding row and gathered rows too).
(The tiny model: tests/generator/test_fused_step.py.)"""

from __future__ import annotations

import pytest

from fused_checks import check_fused_equals_eager

pytestmark = pytest.mark.integration

PROMPTS = ["Explain streaming in one sentence.", "The capital of France is", "def fibonacci(n):",
           "Once upon a time, in a quiet village, there lived"]


def test_default_model_fused_step_equals_the_eager_loop(default_int4, tier):
    model = default_int4.runner.model
    assert model.fused_layers(4) is not None
    prompts = [default_int4.encode(p) for p in PROMPTS]
    check_fused_equals_eager(model, prompts, [p[-1] for p in prompts])
