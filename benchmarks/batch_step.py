"""What one batched decode step costs as rows are added, in process (no HTTP), and
why: the int4 matmul of the largest projection and of the output head at 1, 4 and
16 rows; and what a prompt's prefill costs by length (``--dense-prefill`` to compare).
Writes benchmarks/results/batch_step.json.

    .venv/bin/python benchmarks/batch_step.py [--batches 1,4,16] [--tokens 48] [--head auto]
                                              [--prefill 32,128,512] [--dense-prefill]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from decoding import SamplingParams
from generator import Engine
from generator.weights.formats import Int4Linear, Int8Linear

PROMPTS = ["Explain streaming in one paragraph.", "Write a haiku about the sea.", "What is a KV cache?",
           "List three prime numbers."]


def step_ms(engine, rows: int, tokens: int) -> float:
    """Median milliseconds of a decode step with ``rows`` greedy rows running."""
    batch = engine.batch()
    for i in range(rows):
        batch.add(engine.encode(PROMPTS[i % len(PROMPTS)]), SamplingParams(max_new_tokens=tokens, ignore_eos=True))
    while any(not r.ready for r in batch.rows.values()):  # prefill everyone first
        batch.step()
    times = []
    while batch.active:
        t = time.perf_counter()
        batch.step()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1000


def prefill_ms(engine, tokens: int, repeats: int = 3) -> float:
    """Best of ``repeats`` for writing a ``tokens``-token prompt into a slot."""
    ids = list(range(100, 100 + tokens))
    engine.runner.prefill(0, ids)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        engine.runner.prefill(0, ids)
        best = min(best, time.perf_counter() - t)
    return best * 1000


def kernel_us(linear, rows: int, k: int, n: int = 100) -> float:
    x = torch.randn(rows, k).bfloat16()
    with torch.inference_mode():
        for _ in range(5):
            linear(x)
        t = time.perf_counter()
        for _ in range(n):
            linear(x)
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--head", default="auto", help="output head format (auto: int8)")
    ap.add_argument("--activations", default="auto", help="int4 layers' activations: auto, bf16, int8")
    ap.add_argument("--prefill", default="32,128,512", help="prompt lengths to time the prefill of")
    ap.add_argument("--dense-prefill", action="store_true", help="prompt chunks through a bf16 copy of the weights")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_step.json"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    engine = Engine.load(device="cpu", num_slots=max(batches), head=args.head, dense_prefill=args.dense_prefill,
                         activations=args.activations)
    print(f"{engine.config.summary()} ({engine.config.kernels_reason})")
    step_ms(engine, 1, 4)  # warm-up
    rows = []
    print(f"{'rows':>4} {'ms/step':>8} {'tok/s':>7} {'vs 1 row':>8}")
    for b in batches:
        ms = step_ms(engine, b, args.tokens)
        rows.append(dict(rows=b, ms_per_step=ms, tok_s=b * 1000 / ms))
        print(f"{b:4d} {ms:8.1f} {b * 1000 / ms:7.1f} {rows[-1]['tok_s'] / rows[0]['tok_s']:7.2f}x")
    prefill = {}
    print(f"\nprefill{' (--dense-prefill)' if args.dense_prefill else ''}:")
    for n in (int(x) for x in args.prefill.split(",") if x):
        prefill[n] = prefill_ms(engine, n)
        print(f"{n:6d} tokens {prefill[n]:8.1f} ms {n * 1000 / prefill[n]:7.0f} tok/s")
    # The kernels behind it, weights hot in cache (so a floor, not the in-model cost).
    torch.manual_seed(0)
    acts = engine.activations
    kernels = {f"int4 3072x576 (gate/up, {acts})": Int4Linear.from_float(torch.randn(3072, 576) * 0.02, acts),
               f"int8 49152x576 (head, {acts})": Int8Linear(torch.randn(49152, 576) * 0.02, acts),
               f"int4 49152x576 (--head int4, {acts})": Int4Linear.from_float(torch.randn(49152, 576) * 0.02, acts)}
    micro = {}
    print(f"\n{'kernel':36s} " + " ".join(f"{f'{b} rows':>10s}" for b in batches))
    for name, lin in kernels.items():
        micro[name] = {b: kernel_us(lin, b, 576, n=20 if "49152" in name else 100) for b in batches}
        print(f"{name:36s} " + " ".join(f"{micro[name][b]:8.0f}us" for b in batches))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(kernels=engine.config.kernels, machine=platform.machine(), processor=platform.processor(),
                                   threads=torch.get_num_threads(), torch=torch.__version__, head=args.head,
                                   activations=engine.activations, engine=engine.config.as_dict(),
                                   dense_prefill=args.dense_prefill, steps=rows, prefill_ms=prefill, kernels_us=micro,
                                   time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
