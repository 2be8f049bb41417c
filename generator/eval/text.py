"""What a generation costs and what it looks like, as pure functions on numbers and
token ids. No model, no I/O: the benchmark and ``tokenflow compare`` feed them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

Tokens = Sequence[Hashable]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks
    (numpy's default); ``nan`` for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def latency_summary(start: float, stamps: Sequence[float], prompt_tokens: int) -> dict[str, float]:
    """Timing of one stream from its start time and the arrival time of each token.

    ``ttft_ms``: first token; ``itl_*_ms``: gaps between consecutive tokens;
    ``decode_tps``: tokens after the first over the time they took;
    ``prefill_tps``: prompt tokens over the time to the first token.
    """
    n = len(stamps)
    gaps = [(b - a) * 1000.0 for a, b in zip(stamps, stamps[1:])]
    ttft = (stamps[0] - start) if n else float("nan")
    span = (stamps[-1] - stamps[0]) if n > 1 else 0.0
    return {
        "tokens": n,
        "ttft_ms": ttft * 1000.0,
        "itl_mean_ms": float(np.mean(gaps)) if gaps else float("nan"),
        "itl_p50_ms": percentile(gaps, 50),
        "itl_p95_ms": percentile(gaps, 95),
        "itl_p99_ms": percentile(gaps, 99),
        "decode_tps": (n - 1) / span if span > 0 else float("nan"),
        "prefill_tps": prompt_tokens / ttft if n and ttft > 0 else float("nan"),
        "total_s": (stamps[-1] - start) if n else float("nan"),
    }


def ngrams(tokens: Tokens, n: int) -> list[tuple]:
    """All contiguous n-grams of a sequence, in order."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence[Tokens], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams over all n-grams, pooled over
    every sequence given (so repeats *across* samples count too). ``nan`` when
    there is no n-gram at all."""
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    if not grams:
        return float("nan")
    return len(set(grams)) / len(grams)


def repetition_rate(tokens: Tokens, n: int = 4) -> float:
    """Share of a sequence's n-grams that repeat an earlier n-gram of the same
    sequence (seq-rep-n, Welleck et al., 2019): 0 = no loop, near 1 = stuck.
    ``nan`` when the sequence is shorter than ``n``."""
    grams = ngrams(tokens, n)
    if not grams:
        return float("nan")
    counts = Counter(grams)
    return 1.0 - len(counts) / len(grams)


def self_bleu(samples: Sequence[Tokens], max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al., 2018, Texygen): each sample scored by BLEU against
    all the others as references, averaged. 1 = the samples are the same text,
    near 0 = nothing in common. Uses NLTK's ``sentence_bleu`` with uniform
    weights up to ``max_n`` and smoothing method 1, as Texygen does.
    ``nan`` with fewer than two samples."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    seqs = [list(s) for s in samples]
    if len(seqs) < 2:
        return float("nan")
    weights = tuple(1.0 / max_n for _ in range(max_n))
    smooth = SmoothingFunction().method1
    scores = []
    for i, hyp in enumerate(seqs):
        refs = seqs[:i] + seqs[i + 1:]
        scores.append(sentence_bleu(refs, hyp, weights=weights, smoothing_function=smooth)
                      if hyp else 0.0)
    return float(np.mean(scores))


def mean_logprob(logprobs: Sequence[float | None]) -> float:
    """Average log-probability per token under the model (``None`` entries skipped)."""
    vals = [lp for lp in logprobs if lp is not None]
    return float(np.mean(vals)) if vals else float("nan")


def perplexity(logprobs: Sequence[float | None]) -> float:
    """``exp(-mean logprob)``: the model's perplexity on the text it generated."""
    m = mean_logprob(logprobs)
    return math.exp(-m) if math.isfinite(m) else float("nan")


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the finite values; ``nan`` when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")
