"""Attention over the static slot cache with PyTorch's ops (the path where our one-token
kernel does not run: prefill chunks, float32 models, the compiled step, PyTorch's kernels).

The cache of a layer is ``[slots, kv_heads, >= max_len + 1, head_dim]``; ``read`` picks its
rows (a slice reads a view, no copy). Grouped-query attention never repeats K/V: the query
heads of one KV head are stacked with the time steps.
"""

from __future__ import annotations

import torch


def cached_attention(k_cache: torch.Tensor, v_cache: torch.Tensor, q: torch.Tensor, read, kv_len: int,
                     visible: torch.Tensor, mask: torch.Tensor, reduce: bool) -> torch.Tensor:
    """Attention of ``q [B, T, heads, D]`` over the cache rows ``read`` up to ``kv_len``
    -> ``[B, T, heads * D]``. ``visible [B, T, kv]`` and ``mask [B, 1, group * T, kv]`` say
    which cache positions each query sees; ``reduce``: products and sums instead of matmuls
    (for the compiled step, see ``FastLlama.forward``)."""
    keys = k_cache[read, :, :kv_len]  # (B, kv_heads, kv, D)
    values = v_cache[read, :, :kv_len]
    if reduce:
        return grouped_attention(q, keys, values, mask, reduce)
    # Eagerly: two float32 matmuls (the cache upcast on the fly) for every batch and chunk
    # size. Each row's scores and sums then come out the same bits whatever else is in the
    # batch, however long the longest row is (its masked tail adds exact zeros) and however
    # a prompt is cut into chunks (docs/kernels.md, "Batch and chunk invariance"); SDPA
    # would be faster up to 4 rows but picks kernels by shape, and a bf16 matmul rounds
    # scores that the one-token path keeps in float32. 16 rows x 64 positions: 130 us a
    # layer where SDPA's flash kernel took 635.
    return grouped_attention(q.float(), keys.float(), values.float(), mask, False).to(q.dtype)


def grouped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                      reduce: bool) -> torch.Tensor:
    """Grouped-query attention of ``q [B, T, heads, D]`` over ``keys``/``values [B, kv_heads,
    kv, D]`` -> ``[B, T, heads * D]``."""
    b, t, nh, hd = q.shape
    nkv = keys.shape[1]
    group = nh // nkv
    scaling = hd ** -0.5
    qg = q.view(b, t, nkv, group, hd).permute(0, 2, 3, 1, 4).reshape(b, nkv, group * t, hd)
    if reduce:
        scores = (qg.float()[:, :, :, None, :] * keys.float()[:, :, None, :, :]).sum(-1) * scaling
    else:
        scores = torch.matmul(qg, keys.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(qg.dtype)
    if reduce:
        attn = (probs.float()[..., None] * values.float()[:, :, None, :, :]).sum(-2).to(qg.dtype)
    else:
        attn = torch.matmul(probs, values)  # (B, kv_heads, group * T, D)
    return attn.view(b, nkv, group, t, hd).permute(0, 3, 1, 2, 4).reshape(b, t, nh * hd)
