"""A GGUF's Q4_1 blocks: read and unpacked into codes and scales (``Int4Linear`` takes them).

A Q4_1 block is 32 values with a scale ``d`` and a minimum ``m`` (``w = d * q + m``):
per block f16 ``d``, f16 ``m`` and 16 bytes of codes (low nibbles are values 0..15,
high nibbles 16..31). They map onto the int4 kernels with ``scale = d`` and ``zero =
m + 8 d``: no second rounding of the weights, only of ``d`` and ``zero`` to bf16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..kernels import GROUP


def unpack_q4_1(blocks: np.ndarray, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 bytes -> (codes int32 [N, K], d float32 [N, K/32], m float32 [N, K/32])."""
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(n, k // GROUP, 20)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:20]
    codes = np.concatenate((qs & 0x0F, qs >> 4), axis=-1).reshape(n, k)
    return (torch.from_numpy(codes.astype(np.int32)), torch.from_numpy(d), torch.from_numpy(m))


def dequantize_q4_1(blocks: np.ndarray, n: int, k: int) -> torch.Tensor:
    """The GGUF's own float32 weight ``d * q + m`` of a Q4_1 tensor (the reference)."""
    codes, d, m = unpack_q4_1(blocks, n, k)
    g = codes.view(n, k // GROUP, GROUP).float()
    return (g * d[..., None] + m[..., None]).view(n, k)


def _unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's Q/K rotary permutation (the same one
    ``transformers`` applies to dequantized GGUF weights), as an index ``[n_rows]``."""
    dim = n_rows // n_head // 2
    return torch.arange(n_rows).reshape(n_head, dim, 2).transpose(1, 2).reshape(-1)


class GGUFQ4Source:
    """The Q4_1 blocks of a llama GGUF, looked up by HF parameter name."""

    _NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}

    def __init__(self, path: Path, n_head: int, n_kv_head: int):
        from gguf import GGMLQuantizationType, GGUFReader

        reader = GGUFReader(str(path))
        self.tensors = {t.name: t for t in reader.tensors}
        self.q4_1 = GGMLQuantizationType.Q4_1
        self.n_head, self.n_kv_head = n_head, n_kv_head

    def has_q4_1(self, layer: int, name: str) -> bool:
        t = self.tensors.get(f"blk.{layer}.{self._NAMES[name]}.weight")
        return t is not None and t.tensor_type == self.q4_1

    def blocks(self, layer: int, name: str) -> tuple[np.ndarray, int, int]:
        """Raw Q4_1 bytes in HF row order, and the weight's ``(N, K)``."""
        t = self.tensors[f"blk.{layer}.{self._NAMES[name]}.weight"]
        k, n = (int(x) for x in t.shape)  # GGUF lists dims innermost first
        data = np.asarray(t.data).reshape(n, -1)
        if name in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = self.n_head if name == "self_attn.q_proj" else self.n_kv_head
            # Whole rows move; Q4_1 blocks run along K, so they stay intact.
            data = data[_unpermute_rows(n, heads).numpy()]
        return data, n, k

    def stacked_codes(self, layer: int, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes, d, m)`` of several projections' rows stacked (fused q/k/v, gate/up);
        ``Int4Linear.from_q4_1_codes`` makes the layer."""
        parts = [unpack_q4_1(*self.blocks(layer, name)) for name in names]
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def has_q4_1(path: Path) -> bool:
    """Whether a GGUF stores its attention/MLP projections as Q4_1 blocks."""
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception:  # an unreadable file simply is not a Q4_1 source
        return False
    kinds = [t.tensor_type for t in reader.tensors if t.name.startswith("blk.") and t.name.endswith("_q.weight")]
    return bool(kinds) and all(k == GGMLQuantizationType.Q4_1 for k in kinds)
