"""Per-step cost of decoding.BatchSampler for each strategy, one row, CPU, no model.

    .venv/bin/python benchmarks/sampler_step.py [--vocab 49152] [--steps 100] [--threads 1]

Prints milliseconds per step (sampler call + accept, and the trace's host read for the
"+ trace" cases). Timings on a shared machine are
noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import time

import torch

from decoding import BatchSampler, SamplingParams

CASES = [
    ("greedy", dict()),
    ("sample t=0.8", dict(strategy="sample", temperature=0.8)),
    ("sample top_k=50 top_p=0.95", dict(strategy="sample", temperature=0.8, top_k=50, top_p=0.95)),
    ("top_k", dict(strategy="top_k")),
    ("top_p", dict(strategy="top_p")),
    ("min_p", dict(strategy="min_p")),
    ("typical", dict(strategy="typical")),
    ("epsilon", dict(strategy="epsilon")),
    ("eta", dict(strategy="eta")),
    ("xtc", dict(strategy="xtc")),
    ("dry", dict(strategy="dry")),
    ("mirostat", dict(strategy="mirostat")),
    ("llama_cpp", dict(strategy="llama_cpp")),
    ("greedy + repetition/presence/frequency", dict(repetition_penalty=1.2, presence_penalty=0.5,
                                                   frequency_penalty=0.5)),
    ("greedy + no_repeat_ngram=3", dict(no_repeat_ngram_size=3)),
    ("sample + logprobs=5", dict(strategy="sample", logprobs=5)),
    ("greedy + trace", dict(trace=True)),
    ("sample top_k=50 top_p=0.95 + trace", dict(strategy="sample", temperature=0.8, top_k=50, top_p=0.95,
                                                trace=True)),
    ("llama_cpp + trace", dict(strategy="llama_cpp", trace=True)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2: 49152)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=200, help="history the penalties and DRY look at")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    stream = [torch.randn(1, args.vocab, generator=g) * 3 for _ in range(8)]
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=g).tolist()
    print(f"{'case':42s} {'ms/step':>8s}")
    for name, kw in CASES:
        params = SamplingParams(seed=1, **kw) if kw.get("strategy") else SamplingParams(**kw)
        sampler = BatchSampler([params], prompt_ids=[prompt], eos_token_ids=[2])
        start = time.perf_counter()
        for i in range(args.steps):
            out = sampler(stream[i % len(stream)])
            sampler.accept(out.token_ids.tolist())
            if out.trace is not None:  # what the generator reads for a tracing row
                out.trace.to_host(sampler.tracing)
        print(f"{name:42s} {(time.perf_counter() - start) / args.steps * 1e3:8.2f}")


if __name__ == "__main__":
    main()
