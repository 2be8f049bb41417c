"""The model side of the loop: prefill and one-token decode steps over a KV cache.

``HFRunner`` drives any ``transformers`` causal LM with a ``DynamicCache``.
The engine only needs this interface, so faster runners (static cache,
compiled step, quantized weights) can replace it without touching the loop.
"""

from __future__ import annotations

import torch


class HFRunner:
    """Forward passes of an HF causal LM; rows of the cache are sequences."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.forward_calls = 0  # tests use it to check when work happens

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, cache) -> torch.Tensor:
        """Run the prompt ``[B, T]`` through the model; return last-position logits ``[B, V]``."""
        self.forward_calls += 1
        out = self.model(input_ids=input_ids.to(self.device), cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def decode(self, token_ids: torch.Tensor, cache) -> torch.Tensor:
        """One step: the last chosen ids ``[B]`` in, next-token logits ``[B, V]`` out."""
        self.forward_calls += 1
        out = self.model(input_ids=token_ids.view(-1, 1), cache=cache, use_cache=True)
        return out.logits[:, -1, :].float()

    @staticmethod
    def reorder(cache, rows: torch.Tensor) -> None:
        """Make cache row ``i`` a copy of old row ``rows[i]`` (beams, forks)."""
        cache.reorder_cache(rows)

    @staticmethod
    def expand(cache, n: int) -> None:
        """Repeat every cache row ``n`` times (one prefill, ``n`` continuations)."""
        cache.batch_repeat_interleave(n)
