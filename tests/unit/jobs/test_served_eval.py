"""The served-model evaluation's judgement: served score against the in-process one."""

from __future__ import annotations

import pytest

from kiln_jobs import served_eval
from kiln_jobs.errors import ExitCode, ServingRegression
from kiln_jobs.manifest import TaskResult
from kiln_jobs.plan import ServedEvaluationPlan
from kiln_jobs.tasks import TaskScore

pytestmark = pytest.mark.unit

PUBLISHED = TaskResult(
    name="qa", metric="exact_match", baseline=0.40, optimized=0.375, samples=40, passed=True
)


def test_a_served_score_within_max_drop_passes_and_one_beyond_fails() -> None:
    plan = ServedEvaluationPlan(max_drop=0.025)
    same = served_eval.judge_served(PUBLISHED, TaskScore(0.375, 0.07, 40), plan)
    one_less = served_eval.judge_served(PUBLISHED, TaskScore(0.35, 0.07, 40), plan)
    two_less = served_eval.judge_served(PUBLISHED, TaskScore(0.325, 0.07, 40), plan)
    better = served_eval.judge_served(PUBLISHED, TaskScore(0.45, 0.07, 40), plan)
    assert (same.passed, one_less.passed, two_less.passed, better.passed) == (
        True,
        True,
        False,
        True,
    )
    assert (two_less.in_process, two_less.served, two_less.samples) == (0.375, 0.325, 40)
    assert two_less.summary() == (
        "qa exact_match 0.375 in process, 0.325 served (40 samples) failed (ServingRegression)"
    )


def test_lower_is_better_metrics_fall_short_upwards() -> None:
    published = PUBLISHED.model_copy(update={"metric": "word_perplexity", "optimized": 20.0})
    plan = ServedEvaluationPlan(max_drop=1.0)
    worse = served_eval.judge_served(published, TaskScore(21.5, None, 40, False), plan)
    better = served_eval.judge_served(published, TaskScore(18.0, None, 40, False), plan)
    assert (worse.passed, better.passed) == (False, True)


def test_the_regression_names_each_failing_task_and_what_to_change() -> None:
    plan = ServedEvaluationPlan(max_drop=0.0)
    results = [
        served_eval.judge_served(PUBLISHED, TaskScore(0.30, None, 40), plan),
        served_eval.judge_served(
            PUBLISHED.model_copy(update={"name": "other"}), TaskScore(0.375, None, 40), plan
        ),
    ]
    error = served_eval.regression(results, plan)
    assert isinstance(error, ServingRegression)
    assert (error.reason, error.exit_code) == ("ServingRegression", ExitCode.SERVING_REGRESSION)
    assert error.exit_code in ExitCode.permanent()
    assert "qa exact_match 0.375 in process, 0.300 served" in error.message
    assert "other" not in error.message
    assert "evaluation.served.maxDrop" in error.message and "\n" not in error.message
