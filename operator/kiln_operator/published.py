"""A plan whose artifacts are in the store, as the operator learns of it.

Three witnesses can say a plan is published: the finished Job's termination message, the
store's manifest (when the operator can see the store) and the resource's own status (once the
Job is gone). Each becomes the same `Published`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln_jobs.contract import Runtime
from kiln_jobs.manifest import (
    Attempt,
    CheckpointInfo,
    JobResult,
    Manifest,
    Metrics,
    Speculation,
    StageResult,
)
from kiln_operator.api.status import ModelOptimizationStatus

__all__ = ["Published"]


@dataclass(frozen=True)
class Published:
    """A plan whose artifacts are in the store."""

    plan_hash: str
    metrics: Metrics | None = None
    checkpoint: CheckpointInfo | None = None
    stages: tuple[StageResult, ...] = ()
    attempts: tuple[Attempt, ...] = ()
    manifest_digest: str | None = None
    serving_runtime: Runtime | None = None
    speculation: Speculation | None = None

    @classmethod
    def from_result(cls, plan_hash: str, result: JobResult | None) -> Published | None:
        """What a succeeded Job reported in its termination message; None when it left no
        readable result (a Job's exit code alone does not say that anything was published)."""
        if result is None or not result.ok or result.plan_hash != plan_hash:
            return None
        return cls(
            plan_hash,
            metrics=result.metrics,
            checkpoint=result.checkpoint,
            stages=tuple(result.stages),
            attempts=tuple(result.attempts),
            serving_runtime=result.serving_runtime,
            speculation=result.speculation,
            manifest_digest=result.manifest_digest,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, digest: str) -> Published:
        """What the store's manifest records; `digest` is the manifest file's sha256."""
        return cls(
            manifest.plan_hash,
            metrics=manifest.metrics,
            checkpoint=manifest.checkpoint,
            stages=tuple(manifest.stages),
            attempts=tuple(manifest.attempts),
            manifest_digest=digest,
            serving_runtime=manifest.serving_runtime,
            speculation=manifest.speculation,
        )

    @classmethod
    def from_status(cls, status: ModelOptimizationStatus) -> Published:
        """The record an earlier reconcile wrote into status."""
        if status.plan_hash is None:
            raise ValueError("status names no plan")
        return cls(
            status.plan_hash,
            metrics=status.metrics.to_metrics() if status.metrics else None,
            checkpoint=status.checkpoint.to_info() if status.checkpoint else None,
            manifest_digest=status.manifest_digest,
            serving_runtime=status.serving_runtime,
            speculation=status.speculation.to_record() if status.speculation else None,
        )
