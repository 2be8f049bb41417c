"""Building and loading our C/C++ kernels: the compiler call, the cache folder, the CPU's flags.

The C kernels (``csrc/int4_gemm.c``) and their operator wrappers (``csrc/int4_op.cpp``,
registered as ``torch.ops.tokenflow.*``) are compiled on first use with the system's
compilers (``cc -O3 -march=native -fopenmp`` and ``c++`` against PyTorch's headers, about
7 s) into ``kernels/`` of the cache folder (``~/.cache/tokenflow`` or ``$TOKENFLOW_HOME``),
keyed by the sources, the CPU's flags and the torch version, and loaded with
``torch.ops.load_library``. The library links libgomp by its soname, which resolves to the
copy PyTorch already loaded: one OpenMP thread team for both.

``load()`` is the only entry: it answers ``(loaded, reason)`` and never raises.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "int4_gemm.c"
OP_SOURCE = Path(__file__).parent / "csrc" / "int4_op.cpp"


def _cache_dir() -> Path:
    from ..loading import cache_dir  # the model cache's folder ($TOKENFLOW_HOME, XDG, ~/.cache)

    return cache_dir() / "kernels"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (read once)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_avx512_bf16() -> bool:
    """Whether the CPU runs our kernels (they are written for AVX512_BF16)."""
    return {"avx512f", "avx512bw", "avx512_bf16"} <= cpu_flags()


def has_vnni() -> bool:
    """Whether the CPU runs the int8-activation kernels (AVX512_VNNI)."""
    return "avx512_vnni" in cpu_flags()


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
                    " ".join(sorted(cpu_flags())).encode(), torch.__version__.encode()))
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


def _register_fakes() -> None:
    """Output shapes of each op for the compiler (it traces the ops without running them)."""
    def fake_int4_mm(x, codes, _sz):
        return x.new_empty(x.shape[0], codes.shape[0] * 16)

    def fake_int8_mm(x, codes, _scales):
        return x.new_empty(x.shape[0], codes.shape[0] * 32)

    torch.library.register_fake("tokenflow::int4_mm")(fake_int4_mm)
    torch.library.register_fake("tokenflow::int4_q8_mm")(fake_int4_mm)
    torch.library.register_fake("tokenflow::int8_mm")(fake_int8_mm)
    torch.library.register_fake("tokenflow::int8_q8_mm")(fake_int4_mm)  # [N/16, K/4, 64]: 16 channels a block
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


@functools.lru_cache(maxsize=1)
def load() -> tuple[bool, str]:
    """Build (once per machine) and load the library: ``(True, tier)`` or ``(False, why not)``."""
    if not has_avx512_bf16():
        return False, "no AVX512_BF16 on this CPU"
    try:
        torch.ops.load_library(str(_build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-500:]
        log.warning("tokenflow kernels unavailable (%s %s); using PyTorch's kernels", exc, detail)
        return False, f"build failed: {exc}"
    _register_fakes()
    return True, "avx512"
