"""Batch and chunk invariance, measured: a row's logits alone vs in batches of B rows
(joined at other steps, at other slots), and a prompt prefilled whole vs in chunks vs with
other prompts, per kernel tier. Prints, per case, whether the bits are equal and the
largest difference.

    PYTHONPATH=. python benchmarks/invariance.py --model tiny          # the tests' tiny model
    PYTHONPATH=. python benchmarks/invariance.py --model default       # SmolLM2-135M
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def _model(name: str, tier: str, **options):
    from generator import kernels
    from generator.config import EngineConfig
    from generator.model.llama import FastLlama

    kernels.use(tier)
    if name == "tiny":
        from conftest import build_tiny_model

        hf = build_tiny_model(320)
        options = {"quant": "int4", "dtype": "bfloat16", **options}
        cfg = EngineConfig(num_slots=20, max_len=200, **options).resolve(hf)
        return FastLlama.from_hf(hf, cfg), 320
    from generator import Engine

    engine = Engine.load(num_slots=20, max_len=512, **options)
    return engine.runner.model, engine.runner.model.lm_head.out_features if hasattr(
        engine.runner.model.lm_head, "out_features") else None


def _diff(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "equal"
    return f"DIFF max {(a.float() - b.float()).abs().max().item():.3g}"


def measure(name: str, tier: str, steps: int = 6, batches=(2, 4, 8, 16), prompt_len: int = 40, **options) -> list:
    from generator.model.runner import FastRunner

    model, _ = _model(name, tier, **options)
    g = torch.Generator().manual_seed(0)
    vocab = model.embed.shape[0]
    prompts = [torch.randint(3, vocab, (prompt_len - 2 * i,), generator=g).tolist() for i in range(17)]
    rows = []

    def run(slot: int, others: list[tuple[int, list[int], int]], chunk: int = 256) -> list[torch.Tensor]:
        """The row's logits (prompt 0 in ``slot``) over ``steps`` steps, ``others``:
        (slot, prompt, the step it joins)."""
        runner = FastRunner(model, prefill_chunk=chunk)
        runner.acquire(runner.num_slots)
        out = [runner.prefill(slot, prompts[0])]
        running = [slot]
        tokens = {slot: 5}
        for step in range(steps):
            for s, p, at in others:
                if at == step:
                    runner.prefill(s, p)
                    running.append(s)
                    tokens[s] = 7
            ids = torch.tensor([tokens[s] for s in running])
            logits = runner.decode(running, ids)
            out.append(logits[running.index(slot)][None])
            tokens = {s: int(logits[i].argmax()) for i, s in enumerate(running)}
        return out

    alone = run(0, [])
    for b in batches:
        for join in (0, steps // 2):
            for slot in (0, b - 1):
                others = [(s, prompts[1 + i], join if i % 2 else 0) for i, s in enumerate(
                    [x for x in range(b) if x != slot])]
                got = run(slot, others)
                worst = "equal"
                for a, c in zip(alone[1:], got[1:]):
                    d = _diff(a, c)
                    if d != "equal":
                        worst = d
                rows.append((tier, f"decode B={b} join@{join} slot={slot}", worst))
    # prefill: whole vs chunks vs with other prompts
    runner = FastRunner(model, prefill_chunk=256)
    runner.acquire(runner.num_slots)
    whole = runner.prefill(0, prompts[0])
    kv = [layer.k_cache[0, :, :prompt_len].clone() for layer in model.layers]
    for chunk in (1, 2, 7, 16, 33):
        r = FastRunner(model, prefill_chunk=chunk)
        r.acquire(r.num_slots)
        got = r.prefill(1, prompts[0])
        kvd = all(torch.equal(k, layer.k_cache[1, :, :prompt_len]) for k, layer in zip(kv, model.layers))
        rows.append((tier, f"prefill chunk={chunk}", f"{_diff(whole, got)}; kv {'equal' if kvd else 'DIFF'}"))
    for n in (2, 8):
        r = FastRunner(model, prefill_chunk=256)
        r.acquire(r.num_slots)
        got = r.prefill_many(list(range(2, 2 + n)), prompts[:n], [0] * n)[0:1]
        rows.append((tier, f"prefill_many with {n - 1} others", _diff(whole, got)))
        short = [p[:12] for p in prompts[:n]]
        r2 = FastRunner(model, prefill_chunk=256)
        r2.acquire(r2.num_slots)
        one = r2.prefill(0, short[0])
        got = r2.prefill_many(list(range(2, 2 + n)), short, [0] * n)[0:1]
        rows.append((tier, f"prefill_many flat, 12 tokens, with {n - 1} others", _diff(one, got)))
    # decode of the prompt's tokens one at a time vs the prefill's last logits
    r = FastRunner(model, prefill_chunk=256)
    r.acquire(r.num_slots)
    r.prefill(3, prompts[0][:-1])
    got = r.decode([3], torch.tensor(prompts[0][-1:]))
    rows.append((tier, "prefill vs prefill[:-1] + decode", _diff(whole, got)))
    return rows


def main() -> None:
    from generator import kernels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=("tiny", "default"))
    ap.add_argument("--tiers", default=",".join(kernels.status()["tiers"]))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batches", default="2,4,8,16")
    ap.add_argument("--quant", default=None, help="the weight format (default: the model's default)")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()
    options = {k: v for k, v in (("quant", args.quant), ("dtype", args.dtype)) if v}
    for tier in args.tiers.split(","):
        for row in measure(args.model, tier, steps=args.steps, batches=[int(b) for b in args.batches.split(",")],
                           **options):
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
