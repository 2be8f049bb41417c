"""What invariance costs, A/B in one process (alternating, so a busy host's load falls on
both sides alike): a prompt's prefill as one-token rows (the invariant path) vs one forward
of the whole chunk with matmul attention (the path before).

    PYTHONPATH=. python benchmarks/invariance_cost.py --lengths 32,128,512 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def prefill_ab(engine, lengths: list[int], repeats: int) -> None:
    from generator.model.runner import FastRunner

    runner = engine.runner
    vocab = engine.model.config.vocab_size
    print(f"prefill, min of {repeats} (ms): one-token rows (invariant) | whole chunks (before)")
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        rows, chunks = [], []
        invariant = FastRunner.token_rows
        for _ in range(repeats):
            rows.append(_best(lambda: runner.prefill(0, ids), 1))
            FastRunner.token_rows = property(lambda self: False)
            try:
                chunks.append(_best(lambda: runner.prefill(0, ids), 1))
            finally:
                FastRunner.token_rows = invariant
        print(f"  {n:4d} tokens  {min(rows):8.1f} | {min(chunks):8.1f}  ({min(rows) / min(chunks):.2f}x)")


def main() -> None:
    from generator import Engine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="32,128,512")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    engine = Engine.load(num_slots=2, max_len=1024)
    print(engine.describe())
    prefill_ab(engine, [int(x) for x in args.lengths.split(",")], args.repeats)


if __name__ == "__main__":
    main()
