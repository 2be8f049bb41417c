"""Attention over the static slot cache with PyTorch's ops (the path where our one-token
kernel does not run: prefill chunks, float32 models, the compiled step, PyTorch's kernels).

The cache of a layer is ``[slots, kv_heads, max_len + 1, head_dim]``; ``read`` picks its
rows (a slice reads a view, no copy). Grouped-query attention never repeats K/V: the query
heads of one KV head are stacked with the time steps.
"""

from __future__ import annotations

import torch

# From this many rows on, a one-token step computes attention as float32 matmuls instead
# of SDPA (measured crossover: 2-4 rows favour SDPA, 16 rows 46 vs 49-52 ms a step).
BATCH_ATTENTION_ROWS = 8


def cached_attention(k_cache: torch.Tensor, v_cache: torch.Tensor, q: torch.Tensor, read, kv_len: int,
                     visible: torch.Tensor, mask: torch.Tensor, reduce: bool) -> torch.Tensor:
    """Attention of ``q [B, T, heads, D]`` over the cache rows ``read`` up to ``kv_len``
    -> ``[B, T, heads * D]``. ``visible [B, T, kv]`` and ``mask [B, 1, group * T, kv]`` say
    which cache positions each query sees; ``reduce``: products and sums instead of matmuls
    (for the compiled step, see ``FastLlama.forward``)."""
    b, t, nh, hd = q.shape
    keys = k_cache[read, :, :kv_len]  # (B, kv_heads, kv, D)
    values = v_cache[read, :, :kv_len]
    if t == 1 and not reduce and b < BATCH_ATTENTION_ROWS:
        # One eager op instead of a dozen for a one-token step of few rows.
        attn = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), keys, values, attn_mask=visible[:, None], scale=hd ** -0.5, enable_gqa=True)
        return attn.transpose(1, 2).reshape(b, t, nh * hd)
    if t == 1 and not reduce:
        # Many rows: the two small matmuls in float32 (the cache upcast on the fly) beat
        # SDPA's flash kernel, which splits tiny work into many blocks (16 rows x 64
        # positions: 130 vs 635 us a layer), and are no less exact (flash also keeps
        # scores in float32).
        return grouped_attention(q.float(), keys.float(), values.float(), mask, False).to(q.dtype)
    return grouped_attention(q, keys, values, mask, reduce)


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
