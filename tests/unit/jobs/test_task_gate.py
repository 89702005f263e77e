"""The task gate as pure functions: recovery and drop thresholds, the anomaly rule, the verdict
an attempt ends with, and task results in the Plan hash and the termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln_jobs import gate
from kiln_jobs.errors import AccuracyGateFailed, AnomalousImprovement
from kiln_jobs.manifest import TERMINATION_MESSAGE_LIMIT, Attempt, JobResult, Metrics, TaskResult
from kiln_jobs.plan import DataRef, EvaluationPlan, Plan, TaskPlan
from kiln_jobs.tasks import TaskScore
from tests.unit.jobs.tiny import tiny_plan

pytestmark = pytest.mark.unit

STDERR = 0.06


def _task(**fields: object) -> TaskPlan:
    return TaskPlan(name="arc_easy", limit=40, **fields)  # type: ignore[arg-type]


def _score(value: float, stderr: float | None = STDERR, higher: bool = True) -> TaskScore:
    return TaskScore(score=value, stderr=stderr, samples=40, higher_is_better=higher)


def _judge(task: TaskPlan, baseline: float, optimized: float, **score: object) -> TaskResult:
    return gate.judge_task(task, _score(baseline, **score), _score(optimized, **score))  # type: ignore[arg-type]


def test_recovery_and_improvement_follow_the_metric_direction() -> None:
    assert gate.recovery(0.8, 0.6) == pytest.approx(0.75)
    assert gate.improvement(0.8, 0.6) == pytest.approx(-0.2)
    # Lower is better (a perplexity-like metric): 10 -> 12 keeps 10/12 of the score.
    assert gate.recovery(10.0, 12.0, higher_is_better=False) == pytest.approx(10 / 12)
    assert gate.improvement(10.0, 12.0, higher_is_better=False) == pytest.approx(-2.0)
    assert gate.recovery(0.0, 0.0) == 1.0
    assert gate.recovery(0.0, 0.1) == float("inf")


def test_min_recovery_holds_at_its_boundary() -> None:
    task = _task(min_recovery=0.97)
    kept = _judge(task, 0.8, 0.776)
    assert (kept.passed, kept.reason) == (True, None)
    lost = _judge(task, 0.8, 0.775)
    assert (lost.passed, lost.reason) == (False, gate.BELOW_MIN_RECOVERY)


def test_max_drop_is_absolute_in_the_metric_units() -> None:
    task = _task(max_drop=0.05)
    # 0.825 - 0.775 is 0.05000000000000004 in binary: a drop equal to the limit passes.
    assert _judge(task, 0.825, 0.775).passed
    lost = _judge(task, 0.825, 0.75)
    assert (lost.passed, lost.reason) == (False, gate.ABOVE_MAX_DROP)
    worse = _judge(_task(max_drop=1.0, metric="perplexity"), 10.0, 11.5, higher=False)
    assert (worse.passed, worse.reason) == (False, gate.ABOVE_MAX_DROP)


def test_an_improvement_within_the_standard_error_is_noise() -> None:
    result = _judge(_task(max_drop=0.02), 0.5, 0.5 + STDERR)
    assert (result.passed, result.reason) == (True, None)


def test_an_improvement_beyond_the_standard_error_is_an_anomaly_that_fails() -> None:
    result = _judge(_task(max_drop=0.02), 0.5, 0.6)
    assert (result.passed, result.reason) == (False, gate.ANOMALOUS_IMPROVEMENT)
    lower_is_better = _judge(_task(min_recovery=0.9, metric="ppl"), 10.0, 8.0, higher=False)
    assert lower_is_better.reason == gate.ANOMALOUS_IMPROVEMENT


def test_allowed_or_ungated_anomalies_are_flagged_without_blocking() -> None:
    allowed = _judge(_task(max_drop=0.02, allow_improvement=True), 0.5, 0.6)
    assert (allowed.passed, allowed.reason) == (True, gate.ANOMALOUS_IMPROVEMENT)
    ungated = _judge(_task(), 0.5, 0.6)
    assert (ungated.passed, ungated.reason) == (True, gate.ANOMALOUS_IMPROVEMENT)
    assert _judge(_task(), 0.5, 0.1).passed  # no threshold: measured, never blocking


def test_without_a_standard_error_any_improvement_is_an_anomaly() -> None:
    result = _judge(_task(max_drop=0.02), 0.5, 0.51, stderr=None)
    assert (result.passed, result.reason, result.stderr) == (
        False,
        gate.ANOMALOUS_IMPROVEMENT,
        None,
    )
    assert _judge(_task(max_drop=0.02), 0.5, 0.5, stderr=None).passed


def test_the_result_keeps_the_larger_standard_error_and_rounds() -> None:
    task = _task(min_recovery=0.5)
    result = gate.judge_task(task, _score(0.512345678, 0.05), _score(0.5, 0.0612345))
    assert result == TaskResult(
        name="arc_easy",
        metric="acc",
        baseline=0.5123,
        optimized=0.5,
        stderr=0.0612,
        samples=40,
        passed=True,
        reason=None,
    )


def _evaluation(*tasks: TaskPlan, limit: float | None = None) -> EvaluationPlan:
    return EvaluationPlan(
        data=DataRef(samples=1, seq_length=8),
        stride=8,
        max_degradation_percent=limit,
        tasks=tasks,
    )


def _attempt(*results: TaskResult, degradation: float = 1.0) -> Attempt:
    return Attempt(
        techniques="ptq(fp8)",
        degradation_percent=degradation,
        passed=False,
        tasks=list(results),
    )


def test_a_run_that_only_improved_suspiciously_fails_as_an_anomaly() -> None:
    task = _task(max_drop=0.02)
    evaluation = _evaluation(task, limit=5.0)
    anomalous = _judge(task, 0.5, 0.6)
    error = gate.failure(evaluation, [_attempt(anomalous)])
    assert isinstance(error, AnomalousImprovement)
    assert error.reason == "AnomalousImprovement"
    assert "arc_easy acc 0.500 -> 0.600" in error.message
    assert "allowImprovement" in error.message
    # A real loss anywhere in the last attempt makes it a plain accuracy failure.
    perplexity_too = gate.failure(evaluation, [_attempt(anomalous, degradation=9.0)])
    assert type(perplexity_too) is AccuracyGateFailed
    assert "perplexity +9.00% (maxDegradationPercent 5.0)" in perplexity_too.message


def test_the_failure_message_names_each_attempt_and_threshold() -> None:
    drop, recovery = (
        _task(max_drop=0.02),
        _task(min_recovery=0.97).model_copy(update={"name": "hellaswag", "metric": "acc_norm"}),
    )
    evaluation = _evaluation(drop, recovery)
    first = _attempt(_judge(drop, 0.52, 0.47), _judge(recovery, 0.4, 0.3))
    second = first.model_copy(
        update={"techniques": "ptq(fp8)+qat", "tasks": [_judge(drop, 0.52, 0.51)]}
    )
    message = gate.failure_message(evaluation, [first, second])
    assert message == (
        "accuracy gate failed (ptq(fp8): arc_easy acc 0.520 -> 0.470: drop 0.050 above maxDrop "
        "0.02, hellaswag acc_norm 0.400 -> 0.300: recovery 0.750 below minRecovery 0.97; "
        "ptq(fp8)+qat: passed)"
    )


def _with_tasks(plan: Plan, *tasks: TaskPlan) -> Plan:
    return plan.model_copy(
        update={"evaluation": plan.evaluation.model_copy(update={"tasks": tasks})}
    )


def test_a_plan_without_tasks_keeps_its_hash_and_tasks_change_it(tmp_path: Path) -> None:
    plan = tiny_plan(tmp_path / "model", tmp_path / "store", ())
    # Plans published before tasks existed hash as they did then.
    assert "tasks" not in plan.recipe()["evaluation"]  # type: ignore[operator]
    task = _task(max_drop=0.02)
    hashes = {
        plan.hash(),
        _with_tasks(plan, task).hash(),
        _with_tasks(plan, task.model_copy(update={"limit": 80})).hash(),
    }
    assert len(hashes) == 3


def test_task_results_survive_the_termination_message_limit() -> None:
    results = [
        TaskResult(
            name=f"mmlu_high_school_macroeconomics_{index}",
            metric="acc_norm",
            baseline=0.5123,
            optimized=0.4987,
            stderr=0.0791,
            samples=40,
            passed=False,
            reason=gate.BELOW_MIN_RECOVERY,
        )
        for index in range(8)
    ]
    attempts = [
        Attempt(techniques=label, passed=False, degradation_percent=1.23, tasks=results)
        for label in ("ptq(int4_awq)", "ptq(int4_awq)+qat", "ptq(int4_awq)+qad")
    ]
    result = JobResult(
        ok=False,
        plan_hash="0" * 16,
        reason="AccuracyGateFailed",
        message="accuracy gate failed " + "x" * 900,
        metrics=Metrics(baseline_perplexity=21.0, perplexity=22.0, tasks=results),
        attempts=attempts,
    )
    text = result.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = json.loads(text)
    # The attempts' task details go first; the published task results stay.
    assert len(parsed["metrics"]["tasks"]) == 8
    assert [a["techniques"] for a in parsed["attempts"]] == [a.techniques for a in attempts]
    assert all("tasks" not in a for a in parsed["attempts"])
