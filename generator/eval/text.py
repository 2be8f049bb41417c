"""What a generation looks like, as pure functions on token ids: distinct-n,
repetition, self-BLEU. No model, no I/O: ``tokenflow compare`` and the benchmarks
feed them (timing lives in ``timing``, log-likelihood in ``likelihood``)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

from decoding.lazy import numpy as np

Tokens = Sequence[Hashable]


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


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the finite values; ``nan`` when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")
