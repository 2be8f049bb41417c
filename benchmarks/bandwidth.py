"""How fast this machine reads memory, and what that allows a decode step.

A batch-1 decode step reads every weight once; at 135M parameters in int4 with an int8
head that is about 95 MB a token, so memory bandwidth bounds tokens/s from above:
``limit = bandwidth / bytes per token``. This measures the bandwidth the way STREAM does
(arrays far larger than the caches, best of several passes) with torch's own threads:

    read    sum over a float32 array            (bytes read)
    copy    b[:] = a                              (bytes read + bytes written)
    triad   a = b + s * c                         (two arrays read, one written)

then, from the engine's weight bytes per token (``--model``'s format, default int4 with
the int8 head), the tokens/s limit, and (``--measure``) our decode rate on each kernel
tier this CPU runs, as a fraction of that limit. Writes ``benchmarks/results/bandwidth.json``.

    .venv/bin/python benchmarks/bandwidth.py [--mb 512] [--passes 7] [--threads 2] [--measure]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from generator.kernels.build import cpu

RESULTS = Path(__file__).resolve().parent / "results"


def best_gbps(fn, nbytes: int, passes: int) -> float:
    """Bytes moved per second of the fastest of ``passes`` runs (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def stream(mb: int, passes: int) -> dict:
    n = mb * 1_000_000 // 4
    a = torch.rand(n)
    b = torch.rand(n)
    c = torch.rand(n)
    size = a.numel() * 4
    return {
        "array_mb": size / 1e6,
        "read_gbps": best_gbps(lambda: a.sum(), size, passes),
        "copy_gbps": best_gbps(lambda: b.copy_(a), 2 * size, passes),
        "triad_gbps": best_gbps(lambda: torch.add(b, c, alpha=3.0, out=a), 3 * size, passes),
    }


def weight_bytes_per_token() -> tuple[float, str]:
    """What one batch-1 decode step reads of weights, from the default engine as it loads."""
    from generator import Engine

    engine = Engine.load(device="cpu")
    model = engine.runner.model
    return model.weight_bytes() / 1e6, engine.config.summary()


def decode_rate(tier: str, tokens: int) -> float | None:
    """Our batch-1 decode tokens/s with the kernels forced to ``tier`` (a fresh process,
    the CLI's own ``--stats`` line)."""
    env = {**os.environ, "TOKENFLOW_KERNELS": tier}
    res = subprocess.run([sys.executable, "-m", "generator.cli", "generate", "Explain streaming", "--chat",
                          "--stats", "--max-new-tokens", str(tokens), "--ignore-eos"],
                         capture_output=True, text=True, env=env, timeout=600)
    found = re.search(r"decode ([\d.]+) tok/s", res.stdout + res.stderr)  # the [stats] line
    return float(found.group(1)) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="size of each array (far past the caches)")
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--measure", action="store_true", help="also run our decode on each kernel tier")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS / "bandwidth.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bw = stream(args.mb, args.passes)
    mb_per_token, summary = weight_bytes_per_token()
    read = bw["read_gbps"]
    limit = read * 1e3 / mb_per_token
    out = {"cpu": cpu(), "threads": args.threads, **bw, "weight_mb_per_token": mb_per_token, "engine": summary,
           "decode_limit_tok_s": limit, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"{cpu()['model']} ({', '.join(cpu()['features'])}), {args.threads} threads")
    print(f"read {read:.1f} GB/s, copy {bw['copy_gbps']:.1f} GB/s, triad {bw['triad_gbps']:.1f} GB/s "
          f"({bw['array_mb']:.0f} MB arrays, best of {args.passes})")
    print(f"weights read per token: {mb_per_token:.1f} MB ({summary}) -> at most {limit:.0f} tok/s at batch 1")
    if args.measure:
        from generator import kernels

        out["tiers"] = {}
        for tier in [t for t in kernels.status()["tiers"]]:
            rate = decode_rate(tier, args.tokens)
            out["tiers"][tier] = {"decode_tok_s": rate, "of_limit": None if rate is None else rate / limit}
            shown = "?" if rate is None else f"{rate:.1f} tok/s = {rate / limit:.0%} of the limit"
            print(f"  {tier:9s} {shown}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
