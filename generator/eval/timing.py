"""The one timing summary of a token stream: time to first token, inter-token
latency and tokens/s, from the moment a request started and the moment each
token arrived (``time.perf_counter()`` seconds).

    stream_timing(start, stamps, prompt_tokens) -> {"tokens", "ttft_ms", "itl_mean_ms",
        "itl_p50_ms", "itl_p95_ms", "itl_p99_ms", "decode_tps", "prefill_tps",
        "tokens_per_s", "total_s"}

Every caller (``tokenflow generate --stats``, ``tokenflow compare``, the
benchmarks) reads these keys, so the definitions below are the only ones:

- a percentile interpolates linearly between the two nearest ranks (numpy's
  default, ``method="linear"``): the median of ``[10, 20, 30, 40]`` is 25;
- inter-token latency (ITL) is the gap between consecutive tokens, so ``n``
  tokens give ``n - 1`` gaps and the first token's wait is TTFT, not ITL;
- decode tokens/s counts the tokens after the first over the time from the
  first to the last (prefill excluded); ``tokens_per_s`` is every token over
  the time from the start to the last (prefill included).

An undefined number (no gap, no time passed) is ``nan``, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence

from decoding.lazy import numpy as np

from .text import nan_mean

NAN = float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks
    (numpy's default); ``nan`` for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if len(values) == 0:
        return NAN
    return float(np.percentile(np.asarray(values, dtype=float), q))


def median(values: Sequence[float]) -> float:
    """The 50th ``percentile``: the mean of the two middle values for an even count."""
    return percentile(values, 50)


def gaps_ms(stamps: Sequence[float]) -> list[float]:
    """Inter-token latencies in milliseconds: one per pair of consecutive tokens."""
    return [(b - a) * 1000.0 for a, b in zip(stamps, stamps[1:])]


def decode_rate(tokens: int, first: float, last: float) -> float:
    """Tokens/s after the first token: ``tokens - 1`` over ``last - first`` seconds;
    ``nan`` with fewer than two tokens or no time between them."""
    span = last - first
    return (tokens - 1) / span if tokens > 1 and span > 0 else NAN


def stream_timing(start: float, stamps: Sequence[float], prompt_tokens: int = 0) -> dict[str, float]:
    """Timing of one stream from its start time and the arrival time of each token.

    ``ttft_ms``: first token; ``itl_*_ms``: gaps between consecutive tokens;
    ``decode_tps``: tokens after the first over the time they took;
    ``prefill_tps``: prompt tokens over the time to the first token;
    ``tokens_per_s``: every token over the whole time; ``total_s``: start to last token.
    """
    n = len(stamps)
    gaps = gaps_ms(stamps)
    ttft = (stamps[0] - start) if n else NAN
    total = (stamps[-1] - start) if n else NAN
    return {
        "tokens": n,
        "ttft_ms": ttft * 1000.0,
        "itl_mean_ms": float(np.mean(gaps)) if gaps else NAN,
        "itl_p50_ms": percentile(gaps, 50),
        "itl_p95_ms": percentile(gaps, 95),
        "itl_p99_ms": percentile(gaps, 99),
        "decode_tps": decode_rate(n, stamps[0], stamps[-1]) if n else NAN,
        "prefill_tps": prompt_tokens / ttft if n and ttft > 0 else NAN,
        "tokens_per_s": n / total if n and total > 0 else NAN,
        "total_s": total,
    }


def pooled_timing(runs: Sequence[tuple[float, Sequence[float], int]]) -> dict[str, float]:
    """The timing of several streams ``(start, stamps, prompt_tokens)`` taken together.

    ITL percentiles are over every gap of every run pooled (not a mean of per-run
    percentiles); ``decode_tps`` and ``tokens_per_s`` are all tokens over all time;
    ``ttft_ms`` and ``prefill_tps`` are means over the runs. ``itl_ms`` holds the
    pooled gaps themselves (for plots).
    """
    per_run = [stream_timing(start, stamps, prompt) for start, stamps, prompt in runs]
    gaps = [g for _, stamps, _ in runs for g in gaps_ms(stamps)]
    decode_tokens = sum(max(len(stamps) - 1, 0) for _, stamps, _ in runs)
    decode_time = sum(stamps[-1] - stamps[0] for _, stamps, _ in runs if len(stamps) > 1)
    tokens = sum(len(stamps) for _, stamps, _ in runs)
    total = sum(stamps[-1] - start for start, stamps, _ in runs if stamps)
    return {
        "tokens": tokens,
        "ttft_ms": nan_mean([s["ttft_ms"] for s in per_run]),
        "itl_p50_ms": percentile(gaps, 50),
        "itl_p95_ms": percentile(gaps, 95),
        "itl_p99_ms": percentile(gaps, 99),
        "decode_tps": decode_tokens / decode_time if decode_time > 0 else NAN,
        "prefill_tps": nan_mean([s["prefill_tps"] for s in per_run]),
        "tokens_per_s": tokens / total if total > 0 else NAN,
        "itl_ms": gaps,
    }

