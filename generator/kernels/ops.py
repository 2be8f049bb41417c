"""Our own CPU kernels: int4/int8 weight-only matmuls and one-token attention (``int4_gemm.c``).

The same weights and arithmetic class as PyTorch's ``_weight_int4pack_mm_for_cpu``
(float32 sums of bf16 inputs times ``(q - 8) * scale + zero``), but with bf16 dot
products over the 4-bit codes and the scale and zero point applied once per group of
32 (see the C file). Measured here (2-core AVX-512, cold caches): 3072x576 at 1 row
40 vs 56 us, at 16 rows 183 vs 352 us; the 49152x576 head at 1 row 518 vs 816 us.

The C kernels (``int4_gemm.c``) and their operator wrappers (``int4_op.cpp``:
``torch.ops.tokenflow.int4_mm`` / ``int8_mm`` / ``decode_attention`` / ``rms_norm``) are compiled on
first use with the system's compilers (``cc -O3 -march=native -fopenmp`` and ``c++``
against PyTorch's headers, about 7 s) into ``kernels/`` of the cache folder
(``~/.cache/tokenflow``, or ``$TOKENFLOW_HOME``), keyed by the sources, the CPU's flags
and the torch version, and loaded with ``torch.ops.load_library``. Registered ops run
the same in eager code and in the compiled decode step. The library links libgomp by
its soname, which resolves to the copy PyTorch already loaded: one OpenMP thread team
for both. Where building is not possible (no compiler, no AVX512_BF16, or
``TOKENFLOW_INT4_KERNEL=aten``) ``available()`` is false and the int4/int8 layers use
PyTorch's kernels (and attention PyTorch's ops).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "int4_gemm.c"
OP_SOURCE = Path(__file__).parent / "csrc" / "int4_op.cpp"
GROUP = 32

_loaded = False
_tried = False
_lock = threading.Lock()


def _cache_dir() -> Path:
    from ..loading import cache_dir  # the model cache's folder ($TOKENFLOW_HOME, XDG, ~/.cache)

    return cache_dir() / "kernels"


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (read once: every int linear asks at load)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _cpu_has_avx512_bf16() -> bool:
    return {"avx512f", "avx512bw", "avx512_bf16"} <= _cpu_flags()


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)


def _build() -> Path:
    """Compile the kernels and their op wrappers once per source version, CPU and torch."""
    from torch.utils import cpp_extension

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cc is None or cxx is None:
        raise RuntimeError("no C/C++ compiler found")
    c_flags = ["-O3", "-march=native", "-fopenmp", "-fPIC"]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cxx_flags = ["-O2", "-std=c++17", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                 *(f"-I{p}" for p in cpp_extension.include_paths())]
    # -march=native: the build is for this CPU, so the CPU's flags are part of the key.
    key = b"".join((SOURCE.read_bytes(), OP_SOURCE.read_bytes(), " ".join(c_flags + cxx_flags).encode(),
                    " ".join(sorted(_cpu_flags())).encode(), torch.__version__.encode()))
    out = _cache_dir() / f"tokenflow_kernels-{hashlib.sha256(key).hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    torch_lib = Path(torch.__file__).parent / "lib"
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        kernel_o, op_o, so = Path(tmp) / "kernel.o", Path(tmp) / "op.o", Path(tmp) / out.name
        _run([cc, *c_flags, "-c", str(SOURCE), "-o", str(kernel_o)])
        _run([cxx, *cxx_flags, "-c", str(OP_SOURCE), "-o", str(op_o)])
        _run([cxx, "-shared", "-fopenmp", str(op_o), str(kernel_o), f"-L{torch_lib}", "-lc10", "-ltorch_cpu",
              "-o", str(so)])
        os.replace(so, out)  # atomic: a parallel build never leaves half a file
    return out


def available() -> bool:
    """Whether the kernels are built and loaded (builds them on the first call)."""
    global _loaded, _tried
    if _tried:
        return _loaded
    with _lock:
        if _tried:
            return _loaded
        _tried = True
        if os.environ.get("TOKENFLOW_INT4_KERNEL", "").strip().lower() == "aten":
            return False
        if not _cpu_has_avx512_bf16():
            log.info("int4/int8 kernels: no AVX512_BF16 on this CPU; using PyTorch's kernels")
            return False
        try:
            torch.ops.load_library(str(_build()))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            log.warning("int4/int8 kernels unavailable (%s %s); using PyTorch's kernels", exc,
                        detail.decode(errors="replace")[-500:])
            return False
        # Shapes for the compiler (it traces the ops without running them).
        torch.library.register_fake("tokenflow::int4_mm")(_fake_int4_mm)
        torch.library.register_fake("tokenflow::int4_q8_mm")(_fake_int4_mm)
        torch.library.register_fake("tokenflow::int8_mm")(_fake_int8_mm)
        torch.library.register_fake("tokenflow::int8_q8_mm")(_fake_int4_mm)
        torch.library.register_fake("tokenflow::rms_norm")(lambda x, weight, eps: torch.empty_like(x))
        torch.library.register_fake("tokenflow::greedy_pick")(
            lambda logits: (logits.new_empty(logits.shape[0], dtype=torch.long), logits.new_empty(logits.shape[0])))
        torch.library.register_fake("tokenflow::rope_write")(
            lambda qkv, cos, sin, k_cache, v_cache, slots, positions, n_head:
            qkv.new_empty(qkv.shape[0], n_head, k_cache.shape[3]))
        torch.library.register_fake("tokenflow::silu_mul")(
            lambda gu: gu.new_empty(*gu.shape[:-1], gu.shape[-1] // 2))
        torch.library.register_fake("tokenflow::decode_attention")(
            lambda q, k_cache, v_cache, slots, lengths, scale: torch.empty_like(q))
        _loaded = True
        return True


def int8_activations() -> bool:
    """Whether ``int4_q8_mm`` (int8 activations, AVX512_VNNI) can run here."""
    return available() and "avx512_vnni" in _cpu_flags()


def _fake_int4_mm(x: torch.Tensor, codes: torch.Tensor, _sz: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], codes.shape[0] * 16)


def _fake_int8_mm(x: torch.Tensor, codes: torch.Tensor, _scales: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], codes.shape[0] * 32)


def pack(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's layout of int4 codes ``[N, K]`` (0..15) with per-group ``scale`` and
    ``zero`` ``[N, K // 32]`` (rounded to bf16, as in PyTorch's kernel): ``(codes
    [N/16, K/4, 32] uint8, sz [N/16, K/32, 32] bf16)``. See ``int4_gemm.c`` for the bytes."""
    n, k = codes.shape
    if n % 16 or k % GROUP:
        raise ValueError(f"the int4 kernel needs N a multiple of 16 and K of {GROUP}, got {n} x {k}")
    c = codes.to(torch.uint8).view(n // 16, 16, k // 4, 2, 2)  # block, channel, quad, pair, input
    packed = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).permute(0, 2, 1, 3).reshape(n // 16, k // 4, 32).contiguous()
    s = scale.to(torch.bfloat16).view(n // 16, 16, k // GROUP).transpose(1, 2)
    z = zero.to(torch.bfloat16).view(n // 16, 16, k // GROUP).transpose(1, 2)
    return packed, torch.cat((s, z), dim=-1).contiguous()


def int4_mm(x: torch.Tensor, codes: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """``x [M, K]`` bf16 (on the CPU) times a packed int4 weight (``pack``) -> ``[M, N]`` bf16."""
    return torch.ops.tokenflow.int4_mm(x, codes, sz)


def pack_q8(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``pack``, for the int8-activation kernel (``int4_q8_mm``): codes ``[N/16, K/8, 64]``
    uint8, four inputs of a channel a 32-bit lane; ``sz`` as ``pack``'s."""
    n, k = codes.shape
    packed, sz = pack(codes, scale, zero)  # checks the shape
    c = codes.to(torch.uint8).view(n // 16, 16, k // 8, 2, 4)  # block, channel, octet, half, input
    q8 = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).permute(0, 2, 1, 3).reshape(n // 16, k // 8, 64).contiguous()
    return q8, sz


def int4_q8_mm(x: torch.Tensor, codes: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """``int4_mm`` with ``x`` rounded to int8 per row and group of 32 first (AVX512_VNNI:
    64 products an instruction where bf16 does 32); codes from ``pack_q8``."""
    return torch.ops.tokenflow.int4_q8_mm(x, codes, sz)


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[N, K]`` in the int8 kernel's layout ``[N/32, K/2, 64]``."""
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


def int8_q8_mm(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``int8_mm`` with ``x`` rounded to int8 per row and group of 32 first (AVX512_VNNI);
    codes from ``pack_int8_q8``."""
    return torch.ops.tokenflow.int8_q8_mm(x, codes, scales)


def int8_mm(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x [M, K]`` bf16 (on the CPU) times an int8 weight (``pack_int8``) with bf16 ``scales [N]``."""
    return torch.ops.tokenflow.int8_mm(x, codes, scales)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                     lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """One-token attention of ``q [B, heads, D]`` (bf16) over cache rows ``slots [B]``
    of ``k_cache``/``v_cache [slots, kv_heads, len, D]``, the first ``lengths[b]``
    positions of each: float32 scores, softmax and sums, bf16 ``[B, heads, D]``."""
    return torch.ops.tokenflow.decode_attention(q, k_cache, v_cache, slots, lengths, scale)


def greedy_pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of float32 CPU ``logits [B, V]``: ``(argmax [B], log_softmax at it [B])``,
    torch.argmax's choice (the first of equal maxima) and its log-probability, in two
    vector passes instead of a whole-row log_softmax and PyTorch's argmax."""
    return torch.ops.tokenflow.greedy_pick(logits)


def rope_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, n_head: int) -> torch.Tensor:
    """A one-token step's RoPE and cache writes: ``qkv [B, (heads + 2 kv_heads) * D]`` bf16,
    the bf16 tables ``cos``/``sin`` (sign folded in) ``[positions, D]``; writes the rotated
    keys and the values into ``k_cache``/``v_cache [slots, kv_heads, len, D]`` at
    ``(slots[b], positions[b])`` and returns the rotated queries ``[B, heads, D]``. The same
    bits as the eager ops (each product and the sum rounded to bf16)."""
    return torch.ops.tokenflow.rope_write(qkv, cos, sin, k_cache, v_cache, slots, positions, n_head)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of bf16 ``gate_up = [gate | up]`` (``[..., 2I]`` -> ``[..., I]``),
    rounded to bf16 after each op as the eager forward does, in one op."""
    return torch.ops.tokenflow.silu_mul(gate_up)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm on bf16 ``x [..., D]`` with a float32 ``weight [D]``, one op."""
    return torch.ops.tokenflow.rms_norm(x, weight, eps)
