"""Scoring throughput: prompts/s and tokens/s of computing every token's log-likelihood
of a set of prompts (what an evaluation harness asks of /v1/completions with echo),
ours (``score_ids``: the prompts batched into padded forwards, no decode step) against
transformers computing the same log-likelihoods (padded batches of its own model with an
attention mask), in one run. Writes benchmarks/results/scoring.json.

    .venv/bin/python benchmarks/scoring.py [--model DIR] [--prompts 32] [--formats fp32,auto]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from generator import Engine
from generator.eval.likelihood import score_ids

SENTENCES = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Streaming means every token reaches the user the moment it exists.",
    "A hand-written generation loop over a small causal language model, token by token.",
    "Emoji travel in several bytes: 🙂 🚀 🎉, and so do 日本語, Ελληνικά and café.",
    "def add(a, b):\n    return a + b\n",
    "Once upon a time there was a small model that answered questions about the weather.",
    "Evaluation harnesses score the choices of a multiple-choice question by their log-likelihood.",
]
FORMATS = {"fp32": dict(dtype="float32", quant="none"), "auto": dict(), "int4": dict(quant="int4"),
           "bf16": dict(dtype="bfloat16", quant="none")}


def prompts(n: int) -> list[str]:
    """``n`` texts of 1 to 4 sentences (about 15 to 80 tokens), always the same."""
    return [" ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 4)) for i in range(n)]


def ours(engine, ids: list[list[int]]) -> list[list[float]]:
    return [s.logprobs[1:] for s in score_ids(engine, ids)]


def transformers_scores(model, ids: list[list[int]], batch: int, pad_id: int) -> list[list[float]]:
    """The same log-likelihoods with transformers: right-padded batches, an attention mask."""
    out = []
    with torch.inference_mode():
        for b0 in range(0, len(ids), batch):
            rows = ids[b0: b0 + batch]
            width = max(map(len, rows))
            tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                tokens[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            logp = torch.log_softmax(model(input_ids=tokens, attention_mask=mask).logits.float(), -1)
            for r, row in enumerate(rows):
                out.append(logp[r, torch.arange(len(row) - 1), torch.tensor(row[1:])].tolist())
    return out


def timed(fn, repeats: int):
    runs, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - t)
    return result, statistics.median(runs), min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model folder (default: the default model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="transformers' batch (ours: as many as fit 1024 tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", default="fp32,auto", help="ours, each: " + ", ".join(FORMATS))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    texts = prompts(args.prompts)
    rows, reference, hf = [], None, None
    for name in args.formats.split(","):
        engine = Engine.load(model=args.model, device="cpu", compile=False, num_slots=16, **FORMATS[name])
        ids = [engine.tokenizer(t)["input_ids"] for t in texts]
        tokens = sum(map(len, ids))
        ours(engine, ids[:2])  # warm-up
        got, med, best = timed(functools.partial(ours, engine, ids), args.repeats)
        if hf is None:  # transformers on the float32 model the first engine loaded
            model, pad = engine.model, engine.tokenizer.pad_token_id or 0
            transformers_scores(model, ids[:2], args.batch, pad)
            reference, hf_med, hf_best = timed(lambda: transformers_scores(model, ids, args.batch, pad), args.repeats)
            hf = {"impl": "transformers", "format": str(model.dtype).replace("torch.", ""), "batch": args.batch,
                  "seconds": round(hf_med, 4), "seconds_best": round(hf_best, 4),
                  "prompts_per_s": round(len(ids) / hf_med, 2), "tokens_per_s": round(tokens / hf_med, 1)}
        diff = max(abs(a - b) for g, r in zip(got, reference) for a, b in zip(g, r))
        rows.append({"impl": "tokenflow", "format": name, "engine": engine.config.summary(),
                     "seconds": round(med, 4), "seconds_best": round(best, 4),
                     "prompts_per_s": round(len(ids) / med, 2), "tokens_per_s": round(tokens / med, 1),
                     "max_abs_logprob_diff_vs_transformers": round(diff, 5),
                     "sum_logprob": round(sum(map(sum, got)), 3)})
        print(f"tokenflow {name:5s} {rows[-1]['prompts_per_s']:8.2f} prompts/s {rows[-1]['tokens_per_s']:9.1f} "
              f"tok/s  max |diff| vs transformers {diff:.2e}", flush=True)
        del engine
    print(f"transformers    {hf['prompts_per_s']:8.2f} prompts/s {hf['tokens_per_s']:9.1f} tok/s", flush=True)
    result = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "platform": platform.platform(),
                          "load_average": [round(x, 2) for x in os.getloadavg()]},
              "prompts": len(texts), "tokens": tokens, "repeats": args.repeats,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tokenflow": rows, "transformers": hf}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out / 'scoring.json'}")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.machine())
    except OSError:
        return platform.machine()


if __name__ == "__main__":
    main()
