"""Building and loading our C/C++ kernels: the CPU's features, the tiers it runs, the compiler calls.

A tier is one kernel source compiled with its own ISA flags (never ``-march=native``, so a
lower tier forced on a bigger CPU runs the instructions a smaller CPU has):

- ``avx512``: ``csrc/avx512.c``, AVX512_BF16 dot products (+ AVX512_VNNI for int8 activations);
- ``avx2``: ``csrc/avx2.c``, AVX2 + FMA + F16C;
- ``portable``: ``csrc/portable.c``, plain C that the compiler vectorizes (any CPU, aarch64 too).

Every tier the CPU runs goes into one library, with the operator wrappers
(``csrc/int4_op.cpp``, ``torch.ops.tokenflow.*``) that call the chosen tier's table
(``torch.ops.tokenflow.use_tier``). It is compiled on first use with the system's compilers
(``cc -O3 -fopenmp`` and ``c++`` against PyTorch's headers, 10-20 s) into ``kernels/`` of the
cache folder (``~/.cache/tokenflow`` or ``$TOKENFLOW_HOME``), keyed by the sources, the flags,
the tiers and the torch version, and loaded with ``torch.ops.load_library``. The library links
libgomp by its soname, which resolves to the copy PyTorch already loaded: one OpenMP team.

``load()`` is the only entry that builds: it answers ``(tiers, None)`` or ``((), why not)``
and never raises. ``missing(tier)`` says why the CPU cannot run a tier.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
HEADER = CSRC / "tier.h"
OP_SOURCE = CSRC / "int4_op.cpp"
TIERS = ("avx512", "avx2", "portable")  # best first
X86 = ("x86_64", "amd64", "i686", "i386")

# What each tier needs (cpu_features() names, Linux's spelling) and the flags it is built with.
NEEDS = {"avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"),
         "avx2": ("avx2", "fma", "f16c"), "portable": ()}
FLAGS = {"avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                    "-mavx512bf16"],
         "avx2": ["-mavx2", "-mfma", "-mf16c"], "portable": []}


_unbuilt: dict[str, str] = {}  # tiers the CPU runs but the compiler could not build, and why


def _cache_dir() -> Path:
    from ..loading import cache_dir  # the model cache's folder ($TOKENFLOW_HOME, XDG, ~/.cache)

    return cache_dir() / "kernels"


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The CPU's features, lower case in Linux's spelling (``avx2``, ``avx512_bf16``,
    ``asimddp``): ``/proc/cpuinfo`` on Linux (x86 ``flags``, ARM ``Features``), ``sysctl`` on
    macOS. Empty where neither answers (then only the portable tier runs)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    if sys.platform == "darwin":
        names = f"{_sysctl('machdep.cpu.features')} {_sysctl('machdep.cpu.leaf7_features')}".lower().split()
        feats = {n.replace(".", "_") for n in names}  # AVX1.0 -> avx1_0; FMA, F16C, AVX2 as Linux's
        for linux, key in (("avx512f", "avx512f"), ("avx512bw", "avx512bw"), ("avx512vl", "avx512vl"),
                           ("avx512dq", "avx512dq"), ("avx512_vnni", "avx512vnni"), ("avx512_bf16", "avx512bf16"),
                           ("asimddp", "arm.FEAT_DotProd")):
            if _sysctl(f"hw.optional.{key}") == "1":
                feats.add(linux)
        return frozenset(feats)
    return frozenset()


def missing(tier: str) -> str | None:
    """Why this CPU cannot run ``tier`` (``"no AVX2"``), or None when it can."""
    if tier not in TIERS:
        return f"{tier!r} is not a tier"
    if NEEDS[tier] and platform.machine().lower() not in X86:
        return f"not an x86-64 CPU ({platform.machine()})"
    lacking = [f.upper() for f in NEEDS[tier] if f not in cpu_features()]
    return f"no {', '.join(lacking)}" if lacking else _unbuilt.get(tier)


def runnable() -> tuple[str, ...]:
    """The tiers this CPU runs, best first (``portable`` always)."""
    return tuple(t for t in TIERS if missing(t) is None)


# The features a figure's reader needs beside it: what decides which tier runs.
NAMED_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                  "avx_vnni", "asimd", "asimddp")


@functools.lru_cache(maxsize=1)
def cpu() -> dict:
    """The CPU a figure came from: ``{"model": name, "cores": n, "features": [the
    NAMED_FEATURES it has]}`` (the name from ``/proc/cpuinfo``, or ``sysctl`` on macOS)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = _sysctl("machdep.cpu.brand_string") if sys.platform == "darwin" else ""
    have = cpu_features()
    return {"model": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "features": [f for f in NAMED_FEATURES if f in have]}


def has_vnni() -> bool:
    """Whether the avx512 tier's int8-activation kernels run here (AVX512_VNNI)."""
    return "avx512_vnni" in cpu_features()


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)


def _tier_flags(tier: str) -> list[str]:
    extra = ["-mavx512vnni"] if tier == "avx512" and has_vnni() else []
    return ["-O3", "-fopenmp", "-fPIC", f"-DTF_TIER={tier}", *FLAGS[tier], *extra]


def _build(tiers: tuple[str, ...]) -> Path:
    """Compile ``tiers`` and the op wrappers into one library, once per sources, flags and torch."""
    from torch.utils import cpp_extension

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    if cc is None or cxx is None:
        raise FileNotFoundError("no C compiler")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cxx_flags = ["-O2", "-std=c++17", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                 *(f"-DTF_HAVE_{t.upper()}" for t in tiers), *(f"-I{p}" for p in cpp_extension.include_paths())]
    parts = [HEADER.read_bytes(), OP_SOURCE.read_bytes(), " ".join(cxx_flags).encode(), torch.__version__.encode()]
    for t in tiers:
        parts += [(CSRC / f"{t}.c").read_bytes(), " ".join(_tier_flags(t)).encode()]
    out = _cache_dir() / f"tokenflow_kernels-{hashlib.sha256(b'|'.join(parts)).hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    torch_lib = Path(torch.__file__).parent / "lib"
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        objs = []
        for t in tiers:
            objs.append(Path(tmp) / f"{t}.o")
            try:
                _run([cc, *_tier_flags(t), "-c", str(CSRC / f"{t}.c"), "-o", str(objs[-1])])
            except subprocess.CalledProcessError as exc:
                exc.tier = t  # load() drops the tier (an older compiler may lack its flags)
                raise
        op_o, so = Path(tmp) / "op.o", Path(tmp) / out.name
        _run([cxx, *cxx_flags, "-c", str(OP_SOURCE), "-o", str(op_o)])
        _run([cxx, "-shared", "-fopenmp", str(op_o), *map(str, objs), f"-L{torch_lib}", "-lc10", "-ltorch_cpu",
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
def load() -> tuple[tuple[str, ...], str | None]:
    """Build (once per machine) and load the library of every tier this CPU runs:
    ``(tiers best first, None)`` or ``((), why not)``."""
    tiers = runnable()
    try:
        while True:
            try:
                path = _build(tiers)
                break
            except subprocess.CalledProcessError as exc:
                if getattr(exc, "tier", "portable") == "portable":
                    raise
                detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
                log.warning("tokenflow kernels: the %s tier did not build (%s); going on without it", exc.tier,
                            " ".join(detail))
                _unbuilt[exc.tier] = "the C compiler could not build it"
                tiers = tuple(t for t in tiers if t != exc.tier)
        torch.ops.load_library(str(path))
    except FileNotFoundError:
        log.warning("tokenflow kernels unavailable (no C compiler); using PyTorch's kernels")
        return (), "no C compiler"
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-500:]
        log.warning("tokenflow kernels unavailable (%s %s); using PyTorch's kernels", exc, detail)
        return (), f"build failed: {exc}"
    _register_fakes()
    return tuple(torch.ops.tokenflow.tiers()), None
