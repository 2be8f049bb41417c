"""Logits transforms: plain functions ``(logits[B, V], param) -> logits[B, V]``.

Removed entries are set to ``-inf``; the vocabulary is never shrunk, so shapes
stay static. ``param`` is a Python number (same for every row) or a tensor
``[B]`` (one value per row, with an "off" value that leaves the row as it is).
Semantics follow the ``transformers`` logits warpers of the same name.
"""

from __future__ import annotations

import torch

Param = float | int | torch.Tensor


def _per_row(param: Param, logits: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A ``[B, 1]`` column of per-row values on the logits' device."""
    if isinstance(param, torch.Tensor):
        col = param.to(device=logits.device, dtype=dtype or param.dtype)
        return col.reshape(-1, 1)
    return torch.full((logits.shape[0], 1), param, device=logits.device, dtype=dtype or logits.dtype)


def temperature(logits: torch.Tensor, t: Param) -> torch.Tensor:
    """Divide logits by ``t`` (``TemperatureLogitsWarper``). ``t == 1`` is off.

    Rows with ``t == 0`` mean greedy; they are left untouched here and the
    selector takes their argmax.
    """
    col = _per_row(t, logits, logits.dtype)
    col = torch.where(col > 0, col, torch.ones_like(col))
    return logits / col


def top_k(logits: torch.Tensor, k: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the ``k`` highest logits per row (``TopKLogitsWarper``); ``k == 0`` is off.

    Ties with the k-th value are kept, as in ``transformers``.
    """
    vocab = logits.shape[-1]
    col = _per_row(k, logits, torch.long)
    keep = col.clamp(min=min_tokens_to_keep, max=vocab)
    # kth largest per row: sort once, gather at (k - 1)
    sorted_desc = torch.sort(logits, dim=-1, descending=True).values
    kth = sorted_desc.gather(-1, keep - 1)
    remove = (logits < kth) & (col > 0)
    return logits.masked_fill(remove, float("-inf"))


def top_p(logits: torch.Tensor, p: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filter (``TopPLogitsWarper``): keep the smallest set of tokens whose
    probability mass reaches ``p``; ``p == 1`` is off."""
    col = _per_row(p, logits, torch.float32)
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
    cum = sorted_logits.float().softmax(dim=-1).cumsum(dim=-1)
    # ascending order: drop the low tail whose mass is <= 1 - p
    sorted_remove = cum <= (1 - col)
    sorted_remove[..., -min_tokens_to_keep:] = False
    sorted_remove &= col < 1.0
    remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
    return logits.masked_fill(remove, float("-inf"))
