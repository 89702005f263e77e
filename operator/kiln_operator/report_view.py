"""`kiln report NAME`: the run report of a ModelOptimization.

A published plan carries its report (Markdown and plots) in the store; when this machine can
read the store (`file://`, `s3://` with credentials in KILN_STORE_*), the report is fetched from
there, checked against the manifest's digests. Otherwise (a `pvc://` store, or a gate that failed
and published nothing) the same report is rendered from the resource's status, without plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kiln_jobs.contract import REPORT_DIR, REPORT_FILE
from kiln_jobs.manifest import Attempt, Metrics, StageResult, TaskResult
from kiln_jobs.report import ReportFacts, write_report
from kiln_operator.api import ModelOptimizationStatus
from kiln_operator.conditions import OPTIMIZED

__all__ = ["facts_from_status", "published_report", "save_report", "save_serving_report"]

Obj = dict[str, Any]
_READABLE_HERE = ("file://", "s3://")


def published_report(status: Obj) -> str | None:
    """The URI of the published report.md, when the status names one."""
    for artifact in status.get("artifacts") or []:
        if artifact.get("name") == "report":
            return str(artifact.get("uri"))
    return None


def save_report(obj: Obj, dest: Path) -> tuple[Path, str | None]:
    """Write the resource's report into `dest`: (path of report.md, a note on where it came
    from, None when it is the published one).

    Raises:
        KilnJobError: the store was readable but refused or failed the digest check.
    """
    status = obj.get("status") or {}
    uri = published_report(status)
    plan_hash = status.get("planHash")
    if uri and plan_hash and uri.startswith(_READABLE_HERE):
        from kiln_jobs.publish import open_store

        store_uri = uri.split(f"/{plan_hash}/", 1)[0]
        open_store(store_uri, dest / ".staging").fetch(plan_hash, dest, under=REPORT_DIR)
        return dest / REPORT_DIR / REPORT_FILE, None
    if uri:
        note = (
            f"Rendered from the resource's status, without plots: the published report is "
            f"{uri}, in a store this machine cannot read (the Triton pod mounts it at "
            f"/kiln/model/{REPORT_DIR})."
        )
    else:
        note = "Rendered from the resource's status: nothing is published for this plan."
    facts = facts_from_status(obj, notes=(note,))
    return write_report(facts, dest / REPORT_DIR, plots=False), note


def facts_from_status(obj: Obj, *, notes: tuple[str, ...] = ()) -> ReportFacts:
    """The report's facts as the resource's status records them."""
    meta = obj.get("metadata") or {}
    try:
        status = ModelOptimizationStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        status = ModelOptimizationStatus()
    conditions = {c.type: c for c in status.conditions or []}
    optimized = conditions.get(OPTIMIZED)
    stalled = conditions.get("Stalled")
    failure = stalled.message if stalled is not None and stalled.status == "True" else None
    return ReportFacts(
        title=f"{meta.get('namespace')}/{meta.get('name')}",
        plan_hash=status.plan_hash or "(none yet)",
        model=str(((obj.get("spec") or {}).get("model") or {}).get("source") or "?"),
        techniques=status.techniques or "?",
        metrics=status.metrics.to_metrics() if status.metrics else Metrics(),
        passed=optimized is not None and optimized.status == "True",
        attempts=[_attempt(a.model_dump()) for a in status.attempts or []],
        stages=[StageResult.model_validate(s.model_dump()) for s in status.stages or []],
        checkpoint=status.checkpoint.to_info() if status.checkpoint else None,
        serving_runtime=status.serving_runtime,
        failure=failure,
        notes=notes,
    )


def save_serving_report(obj: Obj, dest: Path) -> Path | None:
    """Write what the served-model evaluation measured on the resource's revision
    (`status.metrics.served`, `.performance`) as `serving.md` with its plot beside the run
    report; None when nothing was measured. The store cannot hold it: it is measured after
    publishing."""
    from kiln_jobs.served_eval import ServedTaskResult
    from kiln_jobs.serving.loadtest import LevelStats
    from kiln_jobs.serving_report import ServingFacts, write_serving_report

    try:
        status = ModelOptimizationStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        return None
    metrics = status.metrics
    if metrics is None or not (metrics.served or metrics.performance):
        return None
    tasks = [ServedTaskResult(**task.model_dump()) for task in metrics.served or []]
    levels = [
        LevelStats(
            concurrency=level.concurrency,
            requests=level.requests,
            seconds=level.requests / level.requests_per_second if level.requests_per_second else 0,
            ttft_p50=level.ttft_p50_ms / 1000,
            ttft_p95=level.ttft_p95_ms / 1000,
            itl_p50=None if level.itl_p50_ms is None else level.itl_p50_ms / 1000,
            output_tokens_per_second=level.output_tokens_per_second,
            requests_per_second=level.requests_per_second,
            latency_p50=None if level.latency_p50_ms is None else level.latency_p50_ms / 1000,
            latency_p95=None if level.latency_p95_ms is None else level.latency_p95_ms / 1000,
        )
        for level in metrics.performance or []
    ]
    meta = obj.get("metadata") or {}
    facts = ServingFacts(
        title=f"{meta.get('namespace')}/{meta.get('name')} (plan {status.plan_hash})",
        runtime=status.serving_runtime or "?",
        served_tasks=tasks,
        performance=levels,
    )
    return write_serving_report(facts, dest / REPORT_DIR)


def _attempt(recorded: Obj) -> Attempt:
    tasks = [TaskResult.model_validate(t) for t in recorded.pop("tasks", None) or []]
    return Attempt.model_validate({**recorded, "tasks": tasks or None})
