"""Each op is one function: our kernel where it runs, PyTorch's otherwise.

Our kernels come in tiers, one per CPU class (``build.py``): ``avx512``, ``avx2`` and
``portable``; ``aten`` is PyTorch's own ops. Which runs is settled once per process, on the
first question: ``use(tier)``, else ``$TOKENFLOW_KERNELS`` (``avx512|avx2|portable|aten|auto``;
``TOKENFLOW_INT4_KERNEL=aten`` is an alias of ``aten``), else ``auto``: the best tier the CPU
runs. A tier above the CPU's is refused by ``use()`` and, asked by the variable, falls back to
the best one with the reason logged. ``status()`` names the tier and why (``no AVX2``, ``no C
compiler``, ``forced by TOKENFLOW_KERNELS=avx2``). Nothing outside this package asks: the
elementwise ops (``rms_norm``, ``silu_mul``, ``greedy_pick``, ``rope_write``,
``decode_attention``) fall back inside, and the matmuls follow the layout their weights were
packed in, which the weight formats choose once at load with ``ours()`` (``pack*`` make ours,
the same bytes for every tier; ``pack_int4_aten`` and a plain int8 matrix are PyTorch's).

Our matmuls have the arithmetic class of PyTorch's ``_weight_int4pack_mm_for_cpu``
(float32 sums of bf16 inputs times ``(q - 8) * scale + zero``), the scale and zero point
applied once per group of 32 (see ``csrc/avx512.c``); with int8 activations (``int4_q8_mm``,
``int8_q8_mm``: every tier but avx512 without AVX512_VNNI) the inputs are rounded per row
and group of 32 first, as llama.cpp does for this GGUF. Measured (2-core AVX-512, cold
caches): 3072x576 at 1 row 40 vs 56 us, at 16 rows 183 vs 352 us.
"""

from __future__ import annotations

import logging
import os
import threading

import torch

from . import build

log = logging.getLogger(__name__)

GROUP = 32  # values per scale/zero group: the GGUF's Q4_1 block and every kernel's group
TIERS = build.TIERS  # ours, best first
KERNEL_CHOICES = ("auto", *TIERS, "aten")

# What the int layers multiply their codes by where the caller says auto: the faster one on
# each tier, measured with benchmarks/batch_step.py (int8: integer dot products, vpdpbusd on
# avx512 with AVX512_VNNI, vpmaddubsw on avx2; the portable tier's plain C does not gain by them).
ACTIVATIONS = {"avx512": "int8", "avx2": "int8", "portable": "bf16", "aten": "bf16"}

_choice: tuple[str, str] | None = None  # (choice, who asked); None: not asked yet (the variables decide)
_status: dict | None = None  # settled on the first question after each use()
_lock = threading.Lock()


def use(choice: str) -> str:
    """Run ``choice`` for this process: a tier (``avx512``, ``avx2``, ``portable``), ``aten``
    (PyTorch's) or ``auto`` (the best tier the CPU runs); returns the previous choice. A tier
    this CPU cannot run raises ValueError. Weights already packed keep their layout (ours
    are the same for every tier, so they follow the new tier; PyTorch's stay PyTorch's)."""
    global _choice, _status
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"unknown kernels {choice!r}; choose from {', '.join(KERNEL_CHOICES)}")
    if choice in TIERS and build.missing(choice):
        raise ValueError(f"kernels {choice!r} cannot run here: {build.missing(choice)} "
                         f"(this CPU runs {', '.join(build.runnable())})")
    previous = requested()
    with _lock:
        _choice, _status = (choice, f"kernels.use({choice!r})"), None
    return previous


def requested() -> str:
    """The process's choice: ``use()``'s, else ``$TOKENFLOW_KERNELS``, else
    ``TOKENFLOW_INT4_KERNEL=aten``, else ``auto`` (also for a variable that names no choice)."""
    choice = _requested()[0]
    return choice if choice in KERNEL_CHOICES else "auto"


def _requested() -> tuple[str, str]:
    global _choice
    if _choice is None:
        env = os.environ.get("TOKENFLOW_KERNELS", "").strip().lower()
        if env:
            _choice = (env, f"TOKENFLOW_KERNELS={env}")
        elif os.environ.get("TOKENFLOW_INT4_KERNEL", "").strip().lower() == "aten":
            _choice = ("aten", "TOKENFLOW_INT4_KERNEL=aten")
        else:
            _choice = ("auto", "")
    return _choice


def status() -> dict:
    """Which kernels run and why: ``{"tier": "avx512" | "avx2" | "portable" | "aten",
    "reason": str, "int8_activations": bool (whether they run), "activations": "int8" |
    "bf16" (the faster here: what ``auto`` means), "tiers": [what this process can run]}``
    (builds ours on the first call where they can run)."""
    global _status
    if _status is None:
        with _lock:  # one build at a time
            if _status is None:
                _status = _settle()
    return dict(_status)


def _settle() -> dict:
    choice, who = _requested()
    aten = {"tier": "aten", "int8_activations": False, "activations": "bf16", "tiers": ["aten"]}
    if choice == "aten":
        return {**aten, "reason": f"forced by {who}"}
    built, why_not = build.load()
    if not built:
        return {**aten, "reason": why_not}
    runs = [t for t in built if not build.missing(t)]
    if not runs:  # a library built for another CPU than the one reported now (tests fake one)
        return {**aten, "reason": "no tier built for this CPU"}
    best = runs[0]
    if choice == "auto":
        lowered = [f"{t}: {build.missing(t)}" for t in TIERS[:TIERS.index(best)]]
        reason = "the best tier this CPU runs" + (f" ({'; '.join(lowered)})" if lowered else "")
        tier = best
    elif choice in runs:
        tier, reason = choice, f"forced by {who}"
    else:  # a tier above the CPU's, or not a tier at all, asked by the variable
        why = build.missing(choice) if choice in TIERS else f"not one of {', '.join(KERNEL_CHOICES)}"
        tier, reason = best, f"{who} asked, but {why}: running {best}"
        log.warning("tokenflow kernels: %s", reason)
    torch.ops.tokenflow.use_tier(tier)
    int8 = tier != "avx512" or build.has_vnni()
    return {"tier": tier, "reason": reason, "int8_activations": int8,
            "activations": ACTIVATIONS[tier] if int8 else "bf16", "tiers": [*runs, "aten"]}


def ours() -> bool:
    """Whether our kernels run in this process (the weight formats ask once, at load)."""
    return (_status or status())["tier"] != "aten"  # every eager op asks: no copy, no lock


def int8_activations() -> bool:
    """Whether ``int4_q8_mm``/``int8_q8_mm`` (int8 activations) run here: on every tier but
    avx512 without AVX512_VNNI."""
    return (_status or status())["int8_activations"]


def _eager_ours(x: torch.Tensor) -> bool:
    # The compiled step fuses PyTorch's elementwise ops itself, better than calling ours.
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and ours())


# -- packing: ours ---------------------------------------------------------------------
def pack(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our layout of int4 codes ``[N, K]`` (0..15) with per-group ``scale`` and ``zero``
    ``[N, K // 32]`` (rounded to bf16, as in PyTorch's kernel): ``(codes [N/16, K/4, 32]
    uint8, sz [N/16, K/32, 32] bf16)``. See ``csrc/avx512.c`` for the bytes."""
    n, k = codes.shape
    if n % 16 or k % GROUP:
        raise ValueError(f"the int4 kernel needs N a multiple of 16 and K of {GROUP}, got {n} x {k}")
    c = codes.to(torch.uint8).view(n // 16, 16, k // 4, 2, 2)  # block, channel, quad, pair, input
    packed = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).permute(0, 2, 1, 3).reshape(n // 16, k // 4, 32).contiguous()
    s = scale.to(torch.bfloat16).view(n // 16, 16, k // GROUP).transpose(1, 2)
    z = zero.to(torch.bfloat16).view(n // 16, 16, k // GROUP).transpose(1, 2)
    return packed, torch.cat((s, z), dim=-1).contiguous()


def pack_q8(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``pack``, for the int8-activation kernel (``int4_q8_mm``): codes ``[N/16, K/8, 64]``
    uint8, four inputs of a channel a 32-bit lane; ``sz`` as ``pack``'s."""
    n, k = codes.shape
    packed, sz = pack(codes, scale, zero)  # checks the shape
    c = codes.to(torch.uint8).view(n // 16, 16, k // 8, 2, 4)  # block, channel, octet, half, input
    q8 = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).permute(0, 2, 1, 3).reshape(n // 16, k // 8, 64).contiguous()
    return q8, sz


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[N, K]`` in our int8 kernel's layout ``[N/32, K/2, 64]``."""
    n, k = q.shape
    if n % 32 or k % 2:
        raise ValueError(f"the int8 kernel needs N a multiple of 32 and K even, got {n} x {k}")
    c = q.to(torch.int8).view(n // 32, 2, 16, k // 2, 2)  # block, half, channel, pair, input
    return c.permute(0, 3, 1, 2, 4).reshape(n // 32, k // 2, 64).contiguous()


def pack_int8_q8(q: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[N, K]`` for ``int8_q8_mm``: ``q + 128`` as uint8, ``[N/16, K/4, 64]``
    (four inputs of a channel a 32-bit lane)."""
    n, k = q.shape
    if n % 16 or k % GROUP:
        raise ValueError(f"the int8 kernel with int8 activations needs N a multiple of 16 and K of {GROUP}, "
                         f"got {n} x {k}")
    u = (q.to(torch.int16) + 128).to(torch.uint8).view(n // 16, 16, k // 4, 4)  # block, channel, quad, input
    return u.permute(0, 2, 1, 3).reshape(n // 16, k // 4, 64).contiguous()


# -- packing: PyTorch's ----------------------------------------------------------------
def pack_int4_aten(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's layout of the same int4 weight: ``(packed [N, K/2] uint8, scales_zeros
    [K/32, N, 2] bf16)``, (scale, zero) per group and output channel."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 2)
    return packed, scales_zeros(scale, zero)


def scales_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Per-group ``scale``/``zero [N, K/32]`` as both of PyTorch's int4 kernels (CPU and
    CUDA) read them: ``[K/32, N, 2]`` bf16, the pair of a group and output channel side by side."""
    return torch.stack((scale.float(), zero.float()), dim=-1).transpose(0, 1).to(torch.bfloat16).contiguous()


def inner_k_tiles(k: int) -> int:
    """The widest tinygemm K tiling (``inner_k_tiles`` 8, 4 or 2: K a multiple of 128, 64
    or 32) that ``k`` allows; SmolLM2's 576 inputs take 4, its 1536 take 8."""
    for tiles in (8, 4, 2):
        if k % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"the CUDA int4 kernel needs K a multiple of 32, got {k}")


def pack_int4_cuda(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same int4 weight for PyTorch's CUDA kernel (``aten._weight_int4pack_mm``, the
    tinygemm layout): ``(packed [N/8, K/(16 t), 32, t/2] int32, scales_zeros [K/32, N, 2]
    bf16)`` on ``device``. The dequantization is the CPU kernel's, ``(q - 8) * scale + zero``,
    so Q4_1's ``d``/``m`` map the same way (``scale = d``, ``zero = m + 8 d``); only the
    packing differs: two codes a byte, the even input in the high nibble, then tiled on
    the GPU (it has no CPU implementation)."""
    n, k = codes.shape
    if n % 8 or k % GROUP:
        raise ValueError(f"the CUDA int4 kernel needs N a multiple of 8 and K of {GROUP}, got {n} x {k}")
    packed = torch.ops.aten._convert_weight_to_int4pack(nibble_pairs(codes).to(device), inner_k_tiles(k))
    return packed, scales_zeros(scale, zero).to(device)


def nibble_pairs(codes: torch.Tensor) -> torch.Tensor:
    """Codes ``[N, K]`` (0..15) two a byte, ``[N, K/2]`` uint8: input ``2j`` in the high
    nibble, ``2j + 1`` in the low one (what ``_convert_weight_to_int4pack`` reads)."""
    c = codes.to(torch.uint8)
    return ((c[:, ::2] << 4) | c[:, 1::2]).contiguous()


# -- matmuls: the layout says whose kernel ---------------------------------------------
def int4_mm(x: torch.Tensor, codes: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """``x [M, K]`` bf16 times an int4 weight -> ``[M, N]`` bf16: ours for ``pack``'s layout
    (3-d codes), PyTorch's CPU kernel for ``pack_int4_aten``'s (2-d), its CUDA kernel for
    ``pack_int4_cuda``'s (4-d)."""
    if codes.dim() == 4:
        return torch.ops.aten._weight_int4pack_mm(x, codes, GROUP, sz)
    if codes.dim() == 2:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, codes, GROUP, sz)
    return torch.ops.tokenflow.int4_mm(x, codes, sz)


def int4_q8_mm(x: torch.Tensor, codes: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """``int4_mm`` with ``x`` rounded to int8 per row and group of 32 first (AVX512_VNNI:
    64 products an instruction where bf16 does 32; AVX2: vpmaddubsw); codes from ``pack_q8``.
    Ours only: int8 activations are chosen only where it runs (``int8_activations()``)."""
    return torch.ops.tokenflow.int4_q8_mm(x, codes, sz)


def int8_mm(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x [M, K]`` bf16 (on the CPU) times an int8 weight with bf16 ``scales [N]``: ours
    for ``pack_int8``'s layout (3-d codes), PyTorch's for the plain ``[N, K]`` matrix."""
    if codes.dim() == 2:
        return torch.ops.aten._weight_int8pack_mm(x, codes, scales)
    return torch.ops.tokenflow.int8_mm(x, codes, scales)


def int8_q8_mm(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``int8_mm`` with ``x`` rounded to int8 per row and group of 32 first;
    codes from ``pack_int8_q8``. Ours only, as ``int4_q8_mm``."""
    return torch.ops.tokenflow.int8_q8_mm(x, codes, scales)


# -- elementwise and attention ops: ours where they run, else PyTorch's ----------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm of ``x [..., D]`` with a float32 ``weight [D]``. Ours (one
    op instead of nine) on bf16 CPU rows of a multiple of 16: the same bits but for a rare
    1-unit rounding of the scale (another summation order)."""
    if _eager_ours(x) and x.shape[-1] % 16 == 0:
        return torch.ops.tokenflow.rms_norm(x, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * h.to(x.dtype)).to(x.dtype)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up = [gate | up]`` (``[..., 2I]`` -> ``[..., I]``), each
    op rounded to the input's dtype. Ours (one op instead of three, the same bits) on bf16
    CPU rows where ``I`` is a multiple of 16."""
    if _eager_ours(gate_up) and gate_up.shape[-1] % 32 == 0:
        return torch.ops.tokenflow.silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def greedy_pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of float32 ``logits [B, V]``: ``(argmax [B], log_softmax at it [B])``, torch.argmax's
    choice (the first of equal maxima) and its log-probability. Ours on the CPU (two vector
    passes instead of a whole-row log_softmax and PyTorch's argmax), else PyTorch's ops."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and ours():
        return torch.ops.tokenflow.greedy_pick(logits)
    ids = logits.argmax(-1)
    return ids, logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)


def rope_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, n_head: int) -> torch.Tensor:
    """A one-token step's RoPE and cache writes: ``qkv [B, (heads + 2 kv_heads) * D]``, the
    tables ``cos``/``sin`` (sign folded in: ``rotate_half(x) * sin == roll(x, D/2) * sin``)
    ``[positions, D]``; writes the rotated keys and the values into ``k_cache``/``v_cache
    [slots, kv_heads, len, D]`` at ``(slots[b], positions[b])`` and returns the rotated
    queries ``[B, heads, D]``. Ours (bf16 on the CPU, D a multiple of 16) gives the bits
    of PyTorch's ops (each product and the sum rounded to bf16)."""
    d = k_cache.shape[3]
    if _eager_ours(qkv) and d % 16 == 0:
        return torch.ops.tokenflow.rope_write(qkv, cos, sin, k_cache, v_cache, slots, positions, n_head)
    b, n_kv = qkv.shape[0], k_cache.shape[1]
    if (positions >= k_cache.shape[2]).any() or (slots >= k_cache.shape[0]).any():
        raise RuntimeError("rope_write: slot out of range or position out of range")
    qk = qkv[:, : (n_head + n_kv) * d].view(b, n_head + n_kv, d)
    qk = qk * cos[positions][:, None] + torch.roll(qk, d // 2, dims=-1) * sin[positions][:, None]
    k_cache[slots, :, positions] = qk[:, n_head:]
    v_cache[slots, :, positions] = qkv[:, (n_head + n_kv) * d:].view(b, n_kv, d)
    return qk[:, :n_head]


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                     lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """One-token attention of ``q [B, heads, D]`` over cache rows ``slots [B]`` of
    ``k_cache``/``v_cache [slots, kv_heads, len, D]``, the first ``lengths[b]`` positions of
    each: float32 scores, softmax and sums, ``[B, heads, D]`` in ``q``'s dtype. Ours on bf16
    CPU tensors with D a multiple of 16; else the same arithmetic with PyTorch's ops."""
    if _eager_ours(q) and q.shape[-1] % 16 == 0:
        return torch.ops.tokenflow.decode_attention(q, k_cache, v_cache, slots, lengths, scale)
    if (lengths > k_cache.shape[2]).any() or (lengths < 1).any():
        raise RuntimeError("decode_attention: lengths must be in [1, cache length]")
    b, nh, d = q.shape
    n_kv, kv_len = k_cache.shape[1], int(lengths.max())
    keys = k_cache[slots, :, :kv_len].float()  # (B, kv_heads, kv, D)
    values = v_cache[slots, :, :kv_len].float()
    qg = q.float().view(b, n_kv, nh // n_kv, d)
    scores = torch.matmul(qg, keys.transpose(-1, -2)) * scale  # (B, kv_heads, group, kv)
    visible = torch.arange(kv_len, device=q.device)[None, :] < lengths[:, None]
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), values)
    return out.view(b, nh, d).to(q.dtype)


def decode_layers(x: torch.Tensor, weights: list[torch.Tensor], modes: list[int], caches: list[torch.Tensor],
                  cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                  lengths: torch.Tensor, n_head: int, eps: float, scale: float) -> torch.Tensor:
    """Every decoder layer of a one-token step in one op of ours: ``x [B, H]`` bf16 -> ``x``
    after the last layer, writing each layer's key and value into its cache. The same
    kernels in the same order as the eager layer loop (``rms_norm``, ``int4_mm`` or
    ``int4_q8_mm`` by ``modes``, ``rope_write``, ``decode_attention``, the residual add,
    ``silu_mul``), so the same bits, without a Python call and an ATen dispatch per op.
    ``weights``: per layer the float32 ``attn_norm``, qkv codes and sz, o codes and sz,
    ``mlp_norm``, gate_up and down codes and sz; ``modes``: per layer and projection
    (qkv, o, gate_up, down) 1 for int8 activations; ``caches``: per layer k, v. Ours only
    (``FastLlama`` asks ``ours()`` first)."""
    return torch.ops.tokenflow.decode_layers(x, weights, modes, caches, cos, sin, slots, positions, lengths,
                                             n_head, eps, scale)
