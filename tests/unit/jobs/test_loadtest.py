"""The serving load test's arithmetic: percentiles, inter-token latency and a level's numbers."""

from __future__ import annotations

import pytest

from kiln_jobs.serving.loadtest import RequestTiming, level_stats, percentile

pytestmark = pytest.mark.unit


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_inter_token_latency_is_the_time_after_the_first_token_over_the_rest() -> None:
    assert RequestTiming(0.5, 2.0, 16).inter_token_seconds == pytest.approx(0.1)
    assert RequestTiming(0.5, 0.5, 1).inter_token_seconds is None


def test_a_level_counts_every_workers_tokens_over_its_wall_time() -> None:
    timings = [RequestTiming(0.2, 1.7, 16), RequestTiming(0.4, 1.9, 16), RequestTiming(0.3, 0.3, 1)]
    level = level_stats(2, timings, seconds=2.0)
    assert (level.concurrency, level.requests) == (2, 3)
    assert level.ttft_p50 == pytest.approx(0.3) and level.ttft_p95 == pytest.approx(0.39)
    assert level.itl_p50 == pytest.approx(0.1)
    assert level.latency_p50 == pytest.approx(1.7) and level.latency_p95 == pytest.approx(1.88)
    assert level.output_tokens_per_second == pytest.approx(16.5)
    assert level.requests_per_second == pytest.approx(1.5)
    assert level.summary() == (
        "c=2: TTFT p50 0.300 s (p95 0.390 s), ITL p50 100.0 ms, 16.5 tok/s, 1.5 req/s"
    )
