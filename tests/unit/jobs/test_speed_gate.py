"""The speed gate's judgement: the served model's throughput over the original's, per level."""

from __future__ import annotations

import pytest

from kiln_jobs import speed_gate
from kiln_jobs.errors import ExitCode, SpeedGateFailed
from kiln_jobs.plan import PerformancePlan
from kiln_jobs.serving.loadtest import LevelStats

pytestmark = pytest.mark.unit


def _level(concurrency: int, tokens_per_second: float) -> LevelStats:
    return LevelStats(concurrency, 8, 2.0, 0.1, 0.2, 0.02, tokens_per_second, 4.0)


def test_every_level_must_reach_min_speedup() -> None:
    baseline = [_level(1, 20.0), _level(4, 50.0)]
    optimized = [_level(1, 41.0), _level(4, 90.0)]
    plan = PerformancePlan(concurrency=(1, 4), min_speedup=2.0)
    one, four = speed_gate.compare(baseline, optimized, plan)
    assert (one.speedup, one.passed) == (2.05, True)
    assert (four.speedup, four.passed) == (1.8, False)
    assert four.summary() == (
        "c=4: 90.0 tok/s against 50.0 for the original, 1.80x (below minSpeedup)"
    )
    unbounded = speed_gate.compare(baseline, optimized, PerformancePlan(concurrency=(1, 4)))
    assert all(r.passed for r in unbounded)


def test_the_failure_names_the_slow_levels_and_what_to_change() -> None:
    plan = PerformancePlan(concurrency=(1, 4), min_speedup=2.0)
    results = speed_gate.compare(
        [_level(1, 20.0), _level(4, 50.0)], [_level(1, 41.0), _level(4, 90.0)], plan
    )
    error = speed_gate.failure(results, plan)
    assert isinstance(error, SpeedGateFailed) and error.exit_code == ExitCode.SPEED_GATE_FAILED
    assert error.exit_code in ExitCode.permanent()
    assert "not 2.0x faster" in error.message and "c=4: 90.0 tok/s" in error.message
    assert "c=1:" not in error.message and "minSpeedup" in error.message


def test_levels_must_match_and_a_threshold_needs_the_baseline() -> None:
    with pytest.raises(ValueError, match="different levels"):
        speed_gate.compare([_level(1, 1.0)], [_level(2, 1.0)], PerformancePlan())
    with pytest.raises(ValueError, match="needs baseline"):
        PerformancePlan(baseline=False, min_speedup=1.5)
