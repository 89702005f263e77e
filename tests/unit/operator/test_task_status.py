"""Task results in status: the manifest's shape, from a published plan and from a failed gate."""

from __future__ import annotations

import pytest

from kiln_jobs.manifest import Attempt, JobResult, Metrics, TaskResult
from kiln_operator.api.status import ModelOptimizationStatus
from kiln_operator.config import OperatorConfig
from kiln_operator.published import Published
from kiln_operator.reconcile import Observed, Prepared, decide, prepare
from kiln_operator.status_view import render_status
from tests.unit.operator.conftest import job_obj, make_body, pod_obj

pytestmark = pytest.mark.unit
NOW = "2026-11-25T12:00:00Z"
KEPT = TaskResult(
    name="arc_easy",
    metric="acc_norm",
    baseline=0.52,
    optimized=0.515,
    stderr=0.0791,
    samples=40,
    passed=True,
)
LOST = KEPT.model_copy(update={"optimized": 0.45, "passed": False, "reason": "AboveMaxDrop"})
WIRE = {
    "name": "arc_easy",
    "metric": "acc_norm",
    "baseline": 0.52,
    "optimized": 0.515,
    "stderr": 0.0791,
    "samples": 40,
    "passed": True,
}  # list items in a status patch carry no nulls


def _prepared(config: OperatorConfig) -> Prepared:
    prepared = prepare(make_body(), config)
    assert isinstance(prepared, Prepared), prepared
    return prepared


def test_published_task_results_are_in_status_in_the_manifest_shape(
    config: OperatorConfig,
) -> None:
    prepared = _prepared(config)
    attempt = Attempt(techniques="ptq(fp8)", degradation_percent=1.2, passed=True, tasks=[KEPT])
    published = Published(
        prepared.plan_hash,
        metrics=Metrics(degradation_percent=1.2, tasks=[KEPT]),
        attempts=(attempt,),
    )
    decision = decide(prepared, Observed(published=published), config, NOW)
    assert decision.status["metrics"]["tasks"] == [WIRE]
    assert decision.status["attempts"][0]["tasks"] == [WIRE]
    # Status alone (the Job gone) gives the same record back.
    status = ModelOptimizationStatus.model_validate(decision.status)
    assert Published.from_status(status).metrics.tasks == [KEPT]  # type: ignore[union-attr]


def test_a_failed_task_gate_shows_every_attempt_with_its_tasks(config: OperatorConfig) -> None:
    attempts = [
        Attempt(techniques="ptq(int4_awq)", degradation_percent=4.0, passed=False, tasks=[LOST]),
        Attempt(
            techniques="ptq(int4_awq)+qat", degradation_percent=2.0, passed=False, tasks=[LOST]
        ),
    ]
    result = JobResult(
        ok=False,
        plan_hash="h",
        reason="AccuracyGateFailed",
        message="accuracy gate failed (...)",
        metrics=Metrics(tasks=[LOST]),
        attempts=attempts,
    )
    failed = job_obj(
        "j", conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
    )
    pod = pod_obj(
        phase="Failed", terminated={"exitCode": 5, "message": result.to_termination_message()}
    )
    decision = decide(_prepared(config), Observed(job=failed, job_pods=[pod]), config, NOW)
    shown = decision.status["attempts"]
    assert [a["techniques"] for a in shown] == ["ptq(int4_awq)", "ptq(int4_awq)+qat"]
    assert [a["tasks"][0]["reason"] for a in shown] == ["AboveMaxDrop", "AboveMaxDrop"]


def test_kiln_status_prints_each_task() -> None:
    obj = {
        "metadata": {"name": "m", "namespace": "ns"},
        "status": {"metrics": {"tasks": [WIRE, {**WIRE, "optimized": 0.45, "passed": False,
                                                 "reason": "AboveMaxDrop", "stderr": None}]}},
    }  # fmt: skip
    lines = render_status(obj).splitlines()
    assert "    task         arc_easy acc_norm 0.520 → 0.515 (±0.079, 40 samples) passed" in lines
    assert (
        "    task         arc_easy acc_norm 0.520 → 0.450 (40 samples) failed (AboveMaxDrop)"
        in (lines)
    )
