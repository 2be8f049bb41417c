"""Weight formats for the fast model: dense (float32/bfloat16), int8 and int4 weight-only.

int4 is the format of ``aten._weight_int4pack_mm_for_cpu`` (groups of 32 along the
input dimension, a scale and a zero point per group, ``w = (q - 8) * scale + zero``),
packed once: for our own kernel (``cpukernel.py``) where the CPU has AVX512_BF16, else
for PyTorch's. A GGUF Q4_1 block is 32 values with a scale ``d`` and a minimum
``m`` (``w = d * q + m``), so the GGUF's own 4-bit codes map onto the kernel with
``scale = d`` and ``zero = m + 8 d``: no second rounding of the weights, only the
rounding of ``d`` and ``zero`` to the kernel's scale dtype (bfloat16).

int8 is per-output-channel symmetric (our kernel, else ``aten._weight_int8pack_mm``),
quantized here from the float weights.

Both kernels are fast on CPU only with bfloat16 activations (float32 activations
take a slow fallback path, about 100x slower in a probe on this machine), so the
quantized formats compute in bfloat16.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..kernels import ops as cpukernel

GROUP = 32  # Q4_1 block size and the int4 kernel's group size
QUANTS = ("none", "int8", "int4")
# From this many rows on (a prompt chunk), a quantized linear with a dense copy
# multiplies by that instead: the weight-only kernels dequantize into float32 FMAs and
# stay near 160 GFLOP/s here, where a bf16 GEMM reaches 300-400 (3072x576 at 128 rows:
# int4 2.8 ms, bf16 1.1 ms). One-token steps (and batches up to 31 rows) keep reading
# the 4-bit weights, which is what bounds them.
DENSE_MIN_ROWS = 32
# Without cpukernel's kernels, PyTorch's int8 kernel takes 11 ms for the output head
# (49152 x 576) at 16 rows, a bf16 GEMM 5.8 ms (3.0 vs 4.1 ms at 4 rows); so then an int8
# head keeps a bf16 copy for batches of 8+ rows. (cpukernel's int8 kernel: 2.7 ms.)
HEAD_DENSE_MIN_ROWS = 8


ACTIVATIONS = ("auto", "bf16", "int8")


def resolve_activations(name: str | None = "auto") -> str:
    """``bf16`` or ``int8``: what int4 layers multiply their codes by (``Int4Linear``).

    ``auto``: ``$TOKENFLOW_ACTIVATIONS`` when set, else ``int8`` where our VNNI kernel runs
    (``cpukernel.int8_activations()``), else ``bf16``. int8 is the arithmetic llama.cpp
    uses for this GGUF's Q4_1 layers (its Q8_1 activations): 64 products an instruction
    instead of 32, 1.45x faster at 16 rows here; the README's quality table compares both."""
    name = (name or "auto").strip().lower()
    source = "activations"
    if name == "auto" and os.environ.get("TOKENFLOW_ACTIVATIONS", "").strip():
        name, source = os.environ["TOKENFLOW_ACTIVATIONS"].strip().lower(), "TOKENFLOW_ACTIVATIONS"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown {source} {name!r}; choose from {', '.join(ACTIVATIONS)}")
    if name == "auto":
        return "int8" if cpukernel.int8_activations() else "bf16"
    if name == "int8" and not cpukernel.int8_activations():
        raise ValueError("int8 activations need tokenflow's kernels on a CPU with AVX512_VNNI and AVX512_BF16; "
                         "use activations='bf16'")
    return name


class _PackedLinear(nn.Module):
    """A weight-only quantized linear: its weights packed ONCE, for our kernel
    (``cpukernel``: buffers ``codes`` and ``sz``/``scales``) where it runs, else for
    PyTorch's. ``_matmul(x2)`` multiplies ``[M, K]`` bf16 rows by them; everything else
    (shapes, the dense copy, reading the weight back) is shared here.

    It can keep a bf16 copy of exactly the weight its kernel computes with, for inputs of
    many rows (prefill; the output head of a large batch), where the weight-only kernels
    are compute-bound."""

    in_features: int
    dense: torch.Tensor | None
    dense_min_rows: int = DENSE_MIN_ROWS

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense_rows(x):
            return torch.nn.functional.linear(x, self.dense)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.bfloat16:  # the kernels take bf16 (the int formats compute in it)
            return self._matmul(x2.to(torch.bfloat16)).to(x.dtype).view(*shape[:-1], -1)
        return self._matmul(x2).view(*shape[:-1], -1)

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel computes with, as float32 ``[N, K]`` (tests, the dense
        copy): multiplying the identity through the kernel reads back exactly what it uses."""
        return self._matmul(torch.eye(self.in_features, dtype=torch.bfloat16)).float().T.contiguous()

    def keep_dense(self, min_rows: int = DENSE_MIN_ROWS) -> None:
        """Store the bf16 copy (2 bytes a weight, beside the packed ones), used for
        inputs of ``min_rows`` rows or more."""
        self.register_buffer("dense", self.dequantized().to(torch.bfloat16).contiguous(), persistent=False)
        self.dense_min_rows = int(min_rows)

    def _dense_rows(self, x: torch.Tensor) -> bool:
        return getattr(self, "dense", None) is not None and x.numel() >= self.dense_min_rows * x.shape[-1]


def _int8_inputs(activations: str) -> bool:
    """Whether a linear asked for ``activations`` (already resolved: ``bf16`` or ``int8``)
    rounds its inputs to int8: only where our VNNI kernel runs (elsewhere it takes bf16)."""
    if activations not in ("bf16", "int8"):
        raise ValueError(f"activations must be 'bf16' or 'int8' here (see resolve_activations), got {activations!r}")
    return activations == "int8" and cpukernel.int8_activations()


class DenseLinear(nn.Module):
    """``y = x @ W.T`` with a plain float weight ``[N, K]``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float()


class Int8Linear(_PackedLinear):
    """int8 weight ``[N, K]`` with one scale per output channel; bf16 activations in and
    out. ``activations`` as ``Int4Linear``'s: with ``int8`` our VNNI kernel rounds the
    inputs to int8 per row and group of 32 (where ``K`` is a multiple of 32)."""

    def __init__(self, weight: torch.Tensor, activations: str = "bf16"):
        super().__init__()
        w = weight.float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        n, self.in_features = q.shape
        k = self.in_features
        self.register_buffer("scales", scale.to(torch.bfloat16))
        # One packing of the codes: our kernel's layout (cpukernel.py) where it runs, else
        # PyTorch's plain int8 matrix.
        q8 = _int8_inputs(activations) and n % 16 == 0 and k % GROUP == 0
        codes = qweight = None
        if q8:
            codes = cpukernel.pack_int8_q8(q)
        elif cpukernel.available() and n % 32 == 0 and k % 2 == 0:
            codes = cpukernel.pack_int8(q)
        else:
            qweight = q.contiguous()
        self.activations = "int8" if q8 else "bf16"  # what forwards really multiply by
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("qweight", qweight)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        if self.codes is None:
            return torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        kernel = cpukernel.int8_q8_mm if self.activations == "int8" else cpukernel.int8_mm
        return kernel(x2, self.codes, self.scales)


class Int4Linear(_PackedLinear):
    """4-bit codes ``[N, K]`` (0..15) in groups of 32 along K, with per-group scale and
    zero point; bf16 activations in and out.

    ``activations`` (``resolve_activations``): what our kernel multiplies the codes by,
    the bf16 inputs as they are (``bf16``) or rounded to int8 per row and group of 32
    (``int8``, AVX512_VNNI). PyTorch's kernel, where ours cannot run, takes bf16."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, activations: str = "bf16"):
        # codes: int32 [N, K]; scale, zero: float [N, K // 32] with w = (q - 8) * scale + zero
        super().__init__()
        n, k = codes.shape
        if k % GROUP:
            raise ValueError(f"int4 needs the input dimension to be a multiple of {GROUP}, got {k}")
        if n % 16:
            raise ValueError(f"int4 needs the output dimension to be a multiple of 16, got {n}")
        self.out_features, self.in_features = n, k
        # One packing: our kernel's layout (cpukernel.py) where it runs (faster than
        # PyTorch's at every batch size here), else PyTorch's, whose kernel wants the
        # scales as [K // 32, N, 2]: (scale, zero) per group and output channel.
        q8 = _int8_inputs(activations)
        codes_k = sz_k = packed = scales_zeros = None
        if cpukernel.available():
            codes_k, sz_k = (cpukernel.pack_q8 if q8 else cpukernel.pack)(codes, scale, zero)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 2)
            sz = torch.stack((scale.float(), zero.float()), dim=-1).transpose(0, 1)
            scales_zeros = sz.to(torch.bfloat16).contiguous()
        self.activations = "int8" if q8 else "bf16"  # what forwards really multiply by
        self.register_buffer("codes", codes_k, persistent=False)
        self.register_buffer("sz", sz_k, persistent=False)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        if self.codes is None:
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, GROUP, self.scales_zeros)
        kernel = cpukernel.int4_q8_mm if self.activations == "int8" else cpukernel.int4_mm
        return kernel(x2, self.codes, self.sz)

    @classmethod
    def from_float(cls, weight: torch.Tensor, activations: str = "bf16") -> "Int4Linear":
        """Asymmetric min/max int4 quantization of a float weight (used when no GGUF
        Q4_1 blocks are available, e.g. a plain HF folder)."""
        w = weight.float()
        n, k = w.shape
        g = w.view(n, k // GROUP, GROUP)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scale = ((hi - lo) / 15.0).clamp(min=1e-8)
        codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).view(n, k)
        return cls(codes.to(torch.int32), scale, lo + 8 * scale, activations)

    @classmethod
    def from_q4_1(cls, blocks: np.ndarray, n: int, k: int) -> "Int4Linear":
        """From GGUF Q4_1 bytes ``[N, K / 32 * 20]``: per block f16 ``d``, f16 ``m``,
        16 bytes of codes (low nibbles are values 0..15, high nibbles 16..31)."""
        codes, d, m = unpack_q4_1(blocks, n, k)
        return cls(codes, d, m + 8 * d)


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

    def int4(self, layer: int, names: list[str], activations: str = "bf16") -> Int4Linear:
        """One int4 linear for the rows of several projections stacked (fused q/k/v, gate/up)."""
        parts = [unpack_q4_1(*self.blocks(layer, name)) for name in names]
        codes = torch.cat([p[0] for p in parts])
        d = torch.cat([p[1] for p in parts])
        m = torch.cat([p[2] for p in parts])
        return Int4Linear(codes, d, m + 8 * d, activations)


def has_q4_1(path: Path) -> bool:
    """Whether a GGUF stores its attention/MLP projections as Q4_1 blocks."""
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception:  # an unreadable file simply is not a Q4_1 source
        return False
    kinds = [t.tensor_type for t in reader.tensors if t.name.startswith("blk.") and t.name.endswith("_q.weight")]
    return bool(kinds) and all(k == GGMLQuantizationType.Q4_1 for k in kinds)


def make_linear(weight: torch.Tensor, quant: str, dtype: torch.dtype, activations: str = "bf16") -> nn.Module:
    """A linear layer of ``weight`` in the given format (int4 from float: min/max)."""
    if quant == "int8":
        return Int8Linear(weight, activations)
    if quant == "int4":
        return Int4Linear.from_float(weight, activations)
    return DenseLinear(weight.to(dtype))
