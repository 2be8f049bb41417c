"""One decoding step over a batch of rows, each with its own settings.

Per-request settings become per-row tensors with "off" sentinels, so one batch
mixes greedy and sampling rows; greedy rows skip the filtering work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import selectors, transforms
from .params import SamplingParams
from .registry import resolve


@dataclass
class StepOutput:
    """What one step chose, all on the logits' device."""

    token_ids: torch.Tensor  # (B,) int64
    logprobs: torch.Tensor  # (B,) float32, log_softmax of the raw logits


class BatchSampler:
    """Chooses the next token for every row of a batch.

    Built once per batch composition; call it once per step with the model's
    logits ``[B, V]``. Row ``i`` uses ``params[i]`` and ``generators[i]``.
    """

    def __init__(
        self,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        device: torch.device | str = "cpu",
    ):
        if len(params) != len(generators):
            raise ValueError("one generator per row is needed")
        self.params = params
        self.generators = generators
        chains = [resolve(p.strategy) for p in params]
        for c in chains:
            if c.selector == "beam":
                raise ValueError("beam rows are driven by decoding.beam.BeamSearch, not BatchSampler")
        greedy = [p.is_greedy for p in params]
        self.all_greedy = all(greedy)
        self.greedy = torch.tensor(greedy, device=device)
        uses = lambda name: [name in c.transforms for c in chains]  # noqa: E731
        # Per-row parameters with the "off" value where a row's chain lacks the transform.
        self.temperature = self._column([p.temperature for p in params], uses("temperature"), 1.0,
                                        torch.float32, device)
        self.top_k = self._column([p.top_k for p in params], uses("top_k"), 0, torch.long, device)
        self.top_p = self._column([p.top_p for p in params], uses("top_p"), 1.0, torch.float32, device)
        self.min_keep = max(p.min_tokens_to_keep for p in params)

    @staticmethod
    def _column(values, used, off, dtype, device) -> torch.Tensor | None:
        vals = [v if u else off for v, u in zip(values, used)]
        if all(v == off for v in vals):
            return None  # no row needs it: skip the transform entirely
        return torch.tensor(vals, dtype=dtype, device=device)

    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the rows' transforms, ``[B, V] -> [B, V]`` with ``-inf`` for removed ids."""
        if self.temperature is not None:
            logits = transforms.temperature(logits, self.temperature)
        if self.top_k is not None:
            logits = transforms.top_k(logits, self.top_k, self.min_keep)
        if self.top_p is not None:
            logits = transforms.top_p(logits, self.top_p, self.min_keep)
        return logits

    def __call__(self, logits: torch.Tensor) -> StepOutput:
        logits = logits.float()
        logprobs_all = logits.log_softmax(dim=-1)
        greedy_ids = selectors.argmax(logits)
        if self.all_greedy:
            ids = greedy_ids
        else:
            sampled = selectors.sample(self.warp(logits), self.generators)
            ids = torch.where(self.greedy, greedy_ids, sampled)
        return StepOutput(ids, logprobs_all.gather(-1, ids[:, None]).squeeze(-1))
