"""Where a batch-1 eager decode step's time goes, and what running every decoder layer in
one op of ours (``kernels.decode_layers``, the default) saves against the per-op Python loop
(``TOKENFLOW_FUSED_STEP=0``); both give the same bits. Per tier this machine runs: the whole
step (``runner.decode``, wall time, the two paths alternated), the fused op alone, the final
norm + output head alone, and the 120 int4 matmuls called one by one from Python; with
``--cpu-time``, one thread's CPU time instead of wall time (steadier on a busy host).
Writes benchmarks/results/fused_step_<tier>.json.

    .venv/bin/python benchmarks/fused_step.py [--tiers avx512,avx2] [--steps 40] [--rows 1] [--cpu-time]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from generator import Engine, kernels
from generator.kernels.build import cpu


def timed(fn, steps: int, clock) -> dict:
    for _ in range(3):
        fn()
    times = []
    for _ in range(steps):
        t = clock()
        fn()
        times.append((clock() - t) * 1000)
    times.sort()
    return {"min_ms": round(times[0], 3), "p25_ms": round(times[len(times) // 4], 3),
            "median_ms": round(times[len(times) // 2], 3)}


def measure(engine, rows: int, steps: int, clock) -> dict:
    runner, model = engine.runner, engine.runner.model
    ids = engine.encode("Explain streaming in one paragraph.", chat=True)
    slots = list(range(rows))
    for s in slots:
        runner.prefill(s, ids)
    tokens = torch.tensor([ids[-1]] * rows)

    def step():
        runner.decode(slots, tokens)
        for s in slots:
            runner.lengths[s] -= 1

    out = {}
    with torch.inference_mode():
        for rep in range(2):  # alternated: the host drifts
            for fuse in (False, True):
                model.fuse_layers = fuse
                out[f"step_{'fused' if fuse else 'loop'}_{rep}"] = timed(step, steps, clock)
        model.fuse_layers = True
        fused = model.fused_layers(rows)
        x = model.embed[tokens]
        pos = torch.tensor([runner.lengths[s] for s in slots])
        slot_t = torch.tensor(slots)
        if fused is not None:
            out["decode_layers_op"] = timed(lambda: kernels.decode_layers(
                x, *fused, model.rope_cos, model.rope_sin, slot_t, pos, pos + 1, model.n_head, model.eps,
                model.head_dim ** -0.5), steps, clock)
        out["final_norm_and_head"] = timed(lambda: model.lm_head(model._norm(x, model.final_norm)).float(), steps,
                                           clock)
        h = torch.randn(rows, model.embed.shape[1]).bfloat16()
        g = torch.randn(rows, model.layers[0].down.in_features).bfloat16()

        def matmuls():
            for layer in model.layers:
                layer.qkv(h), layer.o(h), layer.gate_up(h), layer.down(g)

        out["int4_matmuls_from_python"] = timed(matmuls, steps, clock)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiers", default=kernels.status()["tier"],
                    help="tiers to switch to in turn (default: the one running; TOKENFLOW_KERNELS forces one "
                         "at load, with that tier's default activations)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true", help="one thread's CPU time (torch.set_num_threads(1))")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/fused_step_<tiers>.json")
    args = ap.parse_args()
    clock = time.perf_counter
    if args.cpu_time:
        torch.set_num_threads(1)
        clock = time.thread_time
    engine = Engine.load(device="cpu", num_slots=max(args.rows, 1))
    print(f"{engine.config.summary()}; {cpu()['model']} ({', '.join(cpu()['features'])}), "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    results = {}
    for tier in args.tiers.split(","):
        previous = kernels.use(tier)
        try:
            results[tier] = measure(engine, args.rows, args.steps, clock)
        finally:
            kernels.use(previous)
        for name, t in results[tier].items():
            print(f"{tier:9s} {name:26s} min {t['min_ms']:7.2f}  p25 {t['p25_ms']:7.2f}  median {t['median_ms']:7.2f} ms")
    out = Path(args.out or Path(__file__).parent / "results" / f"fused_step_{args.tiers.replace(',', '_')}.json")
    out.write_text(json.dumps({
        "cpu": cpu(), "threads": torch.get_num_threads(), "clock": "thread CPU time" if args.cpu_time else "wall",
        "rows": args.rows, "engine": engine.config.summary(), "load_average_at_start": os.getloadavg()[0],
        "results": results}, indent=2))


if __name__ == "__main__":
    main()
