"""llama.cpp as a benchmark peer, built for the ISA tier being compared.

The llama-cpp-python sdist carries llama.cpp's own source (``vendor/llama.cpp``, the
server included). ``build(tier)`` downloads that sdist once, configures llama.cpp with
CMake for one tier and builds ``llama-server`` and ``llama-bench`` into the cache
(``~/.cache/tokenflow/llama.cpp/<version>-<tier>/bin``); a second call finds them there.

    native     GGML_NATIVE: whatever this CPU has (here AVX-512 with VNNI and BF16)
    avx512     AVX-512 F/BW/VL with VNNI and BF16 named explicitly (our avx512 tier)
    avx2       AVX, AVX2, FMA, F16C, BMI2; no AVX-512, no AVX-VNNI (our avx2 tier)
    portable   no SIMD option on: the compiler's baseline (SSE2 on x86-64; our portable tier)

    .venv/bin/python benchmarks/llamacpp.py build --tier avx2      # prints the bin folder

``LlamaServer(bin_dir, gguf, ...)`` starts ``llama-server`` on a free loopback port for
the benchmarks (``peer_llamacpp.py --tier``, ``serve_load.py --peer llama-server``).
Only a benchmark peer: nothing of tokenflow imports this module or runs what it builds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python, whose sdist vendors llama.cpp
_OFF = ["-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX512_VNNI=OFF",
        "-DGGML_AVX512_BF16=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
TIERS = {
    "native": ["-DGGML_NATIVE=ON"],
    "avx512": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
               "-DGGML_BMI2=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON",
               "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512_VBMI=OFF"],
    "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
             "-DGGML_BMI2=ON", *_OFF],
    "portable": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF",
                 "-DGGML_BMI2=OFF", "-DGGML_SSE42=OFF", *_OFF],
}
# Offline and lean: no HTTPS, no web UI download, no tests or examples.
_COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
           "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF",
           "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON"]
TARGETS = ["llama-server", "llama-bench"]


def cache_dir() -> Path:
    base = os.environ.get("TOKENFLOW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tokenflow")
    return Path(base) / "llama.cpp"


def source(log=print) -> Path:
    """The vendored llama.cpp source of the llama-cpp-python sdist, downloaded and unpacked once."""
    root = cache_dir() / f"src-{VERSION}"
    tree = root / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").exists():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    log(f"llama.cpp: downloading the llama-cpp-python {VERSION} sdist (its source, ~77 MB)")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-binary", ":all:", f"llama-cpp-python=={VERSION}", "-d", str(root)], check=True)
    archive = next(root.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    return tree


def build(tier: str, jobs: int | None = None, log=print) -> Path:
    """The ``bin`` folder holding ``llama-server`` and ``llama-bench`` built for ``tier``
    (built on the first call: several minutes on two cores)."""
    if tier not in TIERS:
        raise SystemExit(f"unknown llama.cpp tier {tier!r}; one of {', '.join(TIERS)}")
    out = cache_dir() / f"{VERSION}-{tier}"
    bin_dir = out / "bin"
    if all((bin_dir / t).exists() for t in TARGETS):
        return bin_dir
    if shutil.which("cmake") is None:
        raise SystemExit("llama.cpp: cmake is needed to build the peer (apt install cmake)")
    src = source(log)
    work = out / "build"
    log(f"llama.cpp: building {', '.join(TARGETS)} for the {tier} tier into {bin_dir} (minutes, once)")
    subprocess.run(["cmake", "-S", str(src), "-B", str(work), *_COMMON, *TIERS[tier]], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(work), "-j", str(jobs or os.cpu_count() or 2), "--target", *TARGETS],
                   check=True, stdout=subprocess.DEVNULL)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for t in TARGETS:
        shutil.copy2(work / "bin" / t, bin_dir / t)
    shutil.rmtree(work, ignore_errors=True)
    return bin_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``llama-server`` over ``gguf`` on a free loopback port, for a benchmark's duration:
    ``slots`` parallel sequences with continuous batching, ``threads`` CPU threads, a
    context of ``ctx_per_slot`` tokens a slot, the prompt cache off (every request prefills,
    as ours does)."""

    def __init__(self, bin_dir: Path, gguf: Path, slots: int = 16, threads: int = 2, ctx_per_slot: int = 1024):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(bin_dir / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
               "-np", str(slots), "-cb", "-c", str(slots * ctx_per_slot), "-t", str(threads), "-tb", str(threads),
               "--no-warmup", "--log-disable"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> "LlamaServer":
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise SystemExit("llama-server did not become ready in 120 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description="build llama.cpp (a benchmark peer) for one ISA tier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build llama-server and llama-bench; print their folder")
    b.add_argument("--tier", default="native", choices=list(TIERS))
    b.add_argument("-j", "--jobs", type=int, default=None)
    args = ap.parse_args()
    print(build(args.tier, args.jobs, log=lambda m: print(m, file=sys.stderr)))


if __name__ == "__main__":
    main()
