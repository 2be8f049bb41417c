"""The one timing summary (generator/eval/timing.py) on hand-made timestamps."""

import math

import numpy as np
import pytest

from generator.cli.generate import format_stats
from generator.eval import timing


def test_percentile_interpolates_linearly_like_numpy():
    vals = [10.0, 20.0, 30.0, 40.0]
    assert timing.percentile(vals, 50) == 25.0
    assert timing.percentile(vals, 0) == 10.0 and timing.percentile(vals, 100) == 40.0
    assert timing.percentile(vals, 95) == pytest.approx(38.5)  # 30 + 0.85 * (40 - 30)
    assert timing.percentile([7.0], 99) == 7.0
    assert math.isnan(timing.percentile([], 50))
    rng = np.random.default_rng(0).random(101)
    assert timing.percentile(rng, 99) == pytest.approx(float(np.percentile(rng, 99)))
    with pytest.raises(ValueError):
        timing.percentile(vals, 101)


def test_stream_timing_from_timestamps():
    s = timing.stream_timing(10.0, [10.1, 10.2, 10.3, 10.5], prompt_tokens=20)
    assert s["tokens"] == 4
    assert s["ttft_ms"] == pytest.approx(100.0)
    assert s["itl_p50_ms"] == pytest.approx(100.0)
    assert s["itl_mean_ms"] == pytest.approx(400 / 3)
    assert s["decode_tps"] == pytest.approx(3 / 0.4)
    assert s["prefill_tps"] == pytest.approx(200.0)


def test_stream_timing_counts_every_token_overall_and_prefill_in_ttft():
    s = timing.stream_timing(10.0, [10.1, 10.2, 10.3, 10.5], prompt_tokens=20)
    assert s["tokens_per_s"] == pytest.approx(4 / 0.5)
    assert s["total_s"] == pytest.approx(0.5)
    assert s["itl_p95_ms"] == pytest.approx(timing.percentile([100.0, 100.0, 200.0], 95))
    assert s["itl_p99_ms"] <= 200.0


def test_undefined_numbers_are_nan_not_errors():
    one = timing.stream_timing(1.0, [1.5], prompt_tokens=3)
    assert one["tokens"] == 1 and one["ttft_ms"] == pytest.approx(500.0)
    assert math.isnan(one["itl_mean_ms"]) and math.isnan(one["itl_p50_ms"]) and math.isnan(one["decode_tps"])
    none = timing.stream_timing(1.0, [])
    assert none["tokens"] == 0 and math.isnan(none["ttft_ms"]) and math.isnan(none["tokens_per_s"])
    assert math.isnan(timing.decode_rate(5, 2.0, 2.0)) and math.isnan(timing.decode_rate(1, 1.0, 2.0))
    assert timing.decode_rate(5, 1.0, 3.0) == 2.0


def test_median_is_the_50th_percentile():
    assert timing.median([3.0, 1.0, 2.0]) == 2.0
    assert timing.median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_pooled_timing_pools_gaps_and_sums_rates():
    runs = [(0.0, [0.1, 0.2, 0.4], 10), (1.0, [1.2, 1.3], 10)]
    t = timing.pooled_timing(runs)
    assert t["tokens"] == 5
    assert t["itl_ms"] == pytest.approx([100.0, 200.0, 100.0])
    assert t["itl_p50_ms"] == pytest.approx(100.0)
    assert t["decode_tps"] == pytest.approx(3 / 0.4)  # 2 + 1 tokens after the first over 0.3 + 0.1 s
    assert t["tokens_per_s"] == pytest.approx(5 / 0.7)  # end to end: 0.4 s + 0.3 s
    assert t["ttft_ms"] == pytest.approx(150.0)  # mean of 100 and 200
    assert t["prefill_tps"] == pytest.approx((100 + 50) / 2)


def test_cli_stats_line_reads_the_summary():
    line = format_stats(10.0, [10.1, 10.2, 10.3, 10.5], "length")
    assert line == ("[stats] 4 tokens in 0.50 s (8.0 tok/s overall), ttft 100 ms, "
                    "itl mean 133.3 ms p50 100.0 ms, decode 7.5 tok/s, finish=length")
    assert format_stats(0.0, [0.25], "stop").endswith("ttft 250 ms, itl n/a, finish=stop")
