"""Weight formats for the fast model: dense (float32/bfloat16), int8 and int4 weight-only.

int4 is the format of ``aten._weight_int4pack_mm_for_cpu`` (groups of 32 along the
input dimension, a scale and a zero point per group, ``w = (q - 8) * scale + zero``),
packed once: for our own kernel (``generator.kernels``) where it runs, else for
PyTorch's. The GGUF's Q4_1 blocks map onto it with no second rounding (``gguf.py``).

int8 is per-output-channel symmetric (our kernel, else ``aten._weight_int8pack_mm``),
quantized here from the float weights.

Both kernels are fast on CPU only with bfloat16 activations (float32 activations
take a slow fallback path, about 100x slower in a probe on this machine), so the
quantized formats compute in bfloat16.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..kernels import GROUP
from .gguf import unpack_q4_1

# From this many rows on (a prompt chunk), a quantized linear with a dense copy
# multiplies by that instead: the weight-only kernels dequantize into float32 FMAs and
# stay near 160 GFLOP/s here, where a bf16 GEMM reaches 300-400 (3072x576 at 128 rows:
# int4 2.8 ms, bf16 1.1 ms). One-token steps (and batches up to 31 rows) keep reading
# the 4-bit weights, which is what bounds them.
DENSE_MIN_ROWS = 32
# Without our kernels, an int8 output head multiplies every batch by a bf16 copy of its
# weights (+2 bytes a weight): PyTorch's int8 kernel takes 11 ms for the head (49152 x 576)
# at 16 rows, a bf16 GEMM 5.8 ms (3.0 vs 4.1 ms at 4 rows). Both give a row the same bits at
# any row count, but not each other's: switching between them by batch size would make a
# row's logits depend on its batch-mates, so the head keeps one of them for every size.
HEAD_DENSE_MIN_ROWS = 1


class _PackedLinear(nn.Module):
    """A weight-only quantized linear: its weights packed ONCE, for our kernel
    (buffers ``codes`` and ``sz``/``scales``) where it runs, else for PyTorch's. ``_matmul(x2)`` multiplies ``[M, K]`` bf16 rows by them; everything else
    (shapes, the dense copy, reading the weight back) is shared here.

    It can keep a bf16 copy of exactly the weight its kernel computes with, for inputs of
    many rows (prefill; the output head of a large batch), where the weight-only kernels
    are compute-bound."""

    in_features: int
    dense: torch.Tensor | None
    dense_min_rows: int = DENSE_MIN_ROWS
    dense_changes = 0  # counts keep_dense calls of any linear (FastLlama.fused_layers re-reads them)

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
        device = next(b for b in self.buffers() if b is not None).device
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=device)
        return self._matmul(eye).float().T.contiguous()

    def keep_dense(self, min_rows: int = DENSE_MIN_ROWS) -> None:
        """Store the bf16 copy (2 bytes a weight, beside the packed ones), used for
        inputs of ``min_rows`` rows or more."""
        self.register_buffer("dense", self.dequantized().to(torch.bfloat16).contiguous(), persistent=False)
        self.dense_min_rows = int(min_rows)
        _PackedLinear.dense_changes += 1

    def _dense_rows(self, x: torch.Tensor) -> bool:
        return getattr(self, "dense", None) is not None and x.numel() >= self.dense_min_rows * x.shape[-1]


def _int8_inputs(activations: str) -> bool:
    """Whether a linear asked for ``activations`` (already resolved: ``bf16`` or ``int8``)
    rounds its inputs to int8: only where our VNNI kernel runs (elsewhere it takes bf16)."""
    if activations not in ("bf16", "int8"):
        raise ValueError(f"activations must be 'bf16' or 'int8' here (see config.resolve_activations), "
                         f"got {activations!r}")
    return activations == "int8" and kernels.int8_activations()


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
        if weight.device.type != "cpu":
            raise ValueError(f"int8 weights run on the CPU only (their kernels), not {weight.device.type}")
        w = weight.float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        n, self.in_features = q.shape
        k = self.in_features
        self.register_buffer("scales", scale.to(torch.bfloat16))
        # One packing of the codes: our kernel's layout where it runs and takes the shape,
        # else PyTorch's plain int8 matrix.
        q8 = _int8_inputs(activations) and n % 16 == 0 and k % GROUP == 0
        codes = qweight = None
        if q8:
            codes = kernels.pack_int8_q8(q)
        elif kernels.ours() and n % 32 == 0 and k % 2 == 0:
            codes = kernels.pack_int8(q)
        else:
            qweight = q.contiguous()
        self.activations = "int8" if q8 else "bf16"  # what forwards really multiply by
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("qweight", qweight)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        matmul = kernels.int8_q8_mm if self.activations == "int8" else kernels.int8_mm
        return matmul(x2, self.qweight if self.codes is None else self.codes, self.scales)


class Int4Linear(_PackedLinear):
    """4-bit codes ``[N, K]`` (0..15) in groups of 32 along K, with per-group scale and
    zero point; bf16 activations in and out.

    ``activations`` (``config.resolve_activations``): what our kernel multiplies the codes by,
    the bf16 inputs as they are (``bf16``) or rounded to int8 per row and group of 32
    (``int8``, AVX512_VNNI). PyTorch's kernel, where ours cannot run, takes bf16.

    ``device``: where the layer runs (default: the codes'). On CUDA the weight is packed for
    PyTorch's CUDA kernel (``kernels.pack_int4_cuda``, tinygemm) and multiplies bf16 inputs;
    our CPU kernels are neither built nor asked."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, activations: str = "bf16",
                 device: torch.device | str | None = None):
        # codes: int32 [N, K]; scale, zero: float [N, K // 32] with w = (q - 8) * scale + zero
        super().__init__()
        device = torch.device(device) if device is not None else codes.device
        n, k = codes.shape
        if k % GROUP:
            raise ValueError(f"int4 needs the input dimension to be a multiple of {GROUP}, got {k}")
        if n % 16:
            raise ValueError(f"int4 needs the output dimension to be a multiple of 16, got {n}")
        self.out_features, self.in_features = n, k
        if device.type != "cpu" and activations != "bf16":
            raise ValueError(f"int4 on {device.type} multiplies bf16 inputs, not {activations!r}")
        # One packing: our kernel's layout where it runs (faster than PyTorch's at every
        # batch size here), else PyTorch's.
        q8 = device.type == "cpu" and _int8_inputs(activations)
        codes_k = sz_k = packed = scales_zeros = None
        if device.type != "cpu":
            packed, scales_zeros = kernels.pack_int4_cuda(codes, scale, zero, device)
        elif kernels.ours():
            codes_k, sz_k = (kernels.pack_q8 if q8 else kernels.pack)(codes, scale, zero)
        else:
            packed, scales_zeros = kernels.pack_int4_aten(codes, scale, zero)
        self.activations = "int8" if q8 else "bf16"  # what forwards really multiply by
        self.register_buffer("codes", codes_k, persistent=False)
        self.register_buffer("sz", sz_k, persistent=False)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        if self.codes is None:
            return kernels.int4_mm(x2, self.packed, self.scales_zeros)
        matmul = kernels.int4_q8_mm if self.activations == "int8" else kernels.int4_mm
        return matmul(x2, self.codes, self.sz)

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
    def from_q4_1(cls, blocks, n: int, k: int, activations: str = "bf16") -> "Int4Linear":
        """From GGUF Q4_1 bytes ``[N, K / 32 * 20]`` (see ``gguf.unpack_q4_1``): a block's
        ``w = d * q + m`` is the kernel's ``(q - 8) * scale + zero`` with ``scale = d``,
        ``zero = m + 8 d``: the GGUF's own codes, no second rounding of the weights."""
        return cls.from_q4_1_codes(*unpack_q4_1(blocks, n, k), activations)

    @classmethod
    def from_q4_1_codes(cls, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
                        activations: str = "bf16", device: torch.device | str | None = None) -> "Int4Linear":
        """From unpacked Q4_1 codes and their per-group ``d`` and ``m`` (``GGUFQ4Source.stacked_codes``)."""
        return cls(codes, d, m + 8 * d, activations, device)


def make_linear(weight: torch.Tensor, quant: str, dtype: torch.dtype, activations: str = "bf16") -> nn.Module:
    """A linear layer of ``weight`` in the given format (int4 from float: min/max)."""
    if quant == "int8":
        return Int8Linear(weight, activations)
    if quant == "int4":
        return Int4Linear.from_float(weight, activations)
    return DenseLinear(weight.to(dtype))
