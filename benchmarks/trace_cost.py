"""What the decision trace costs per token, end to end (model step + sampler + host
reads), one row: the same prompt and seed with ``trace`` off and on, alternating.

    .venv/bin/python benchmarks/trace_cost.py [--model default] [--tokens 32] [--rounds 3]
                                              [--strategy llama_cpp]

Prints the median inter-token time of each setting over its rounds and writes
benchmarks/results/trace_cost.json. On a shared machine compare the two lines of one
run, not runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from decoding import SamplingParams
from generator import Engine

PROMPT = "Explain in one paragraph why the sky is blue."


def itl_ms(engine, params: SamplingParams) -> float:
    """Median milliseconds between tokens of one stream (the first token excluded)."""
    stamps = []
    for _ in engine.stream(PROMPT, params):
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the default model")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strategy", default="llama_cpp")
    args = ap.parse_args()
    engine = Engine.load(**({"model": args.model} if args.model else {}))
    base = SamplingParams(strategy=args.strategy, seed=1, max_new_tokens=args.tokens, ignore_eos=True)
    itl_ms(engine, base)  # warm-up
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for name, trace in (("off", False), ("on", True)):
            runs[name].append(itl_ms(engine, base.replace(trace=trace)))
    result = {"engine": engine.describe(), "cpu": platform.processor() or platform.machine(),
              "strategy": args.strategy, "tokens": args.tokens,
              "itl_ms": {k: statistics.median(v) for k, v in runs.items()}, "rounds": runs}
    for name, value in result["itl_ms"].items():
        print(f"trace {name:3s}  {value:7.2f} ms/token  (rounds: {', '.join(f'{v:.2f}' for v in runs[name])})")
    out = Path(__file__).parent / "results" / "trace_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
