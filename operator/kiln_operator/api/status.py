"""`ModelOptimization.status`: what happened, with measured numbers. Written only by Kiln.

The operator builds status as these models and writes `ModelOptimizationStatus.merge_patch()`;
the `from_*` constructors turn what the job reported (`kiln_jobs.manifest`) into status, and
`to_*` turn status back into the job's records when the Job is gone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from kiln_jobs.contract import Runtime
from kiln_jobs.manifest import (
    Attempt,
    CheckpointInfo,
    Metrics,
    Progress,
    ServedLevel,
    ServedTask,
    Speculation,
    StageResult,
)
from kiln_operator.api.base import KilnModel
from kiln_operator.conditions import CONDITIONS

__all__ = [
    "ArtifactStatus",
    "AttemptStatus",
    "CheckpointStatus",
    "Condition",
    "EndpointsStatus",
    "MetricsStatus",
    "ModelOptimizationStatus",
    "Phase",
    "ProgressStatus",
    "ServedLevelStatus",
    "ServedTaskStatus",
    "SpeculationStatus",
    "StageStatus",
    "TaskResultStatus",
]

Phase = Literal["Pending", "Queued", "Optimizing", "Deploying", "Ready", "Failed"]
# Decimals kept in status: what a person compares, not float noise.
_DIGITS = {"degradation_percent": 2, "perplexity": 3, "baseline_perplexity": 3}
_DERIVED_METRICS = {"compression_ratio", "speedup"}
# Measured on the served revision by its check Job, not by the optimization Job.
_SERVED_METRICS = {"served", "performance"}


class Condition(KilnModel):
    """A Kubernetes condition (metav1.Condition)."""

    type: str = Field(
        max_length=316,
        description="; ".join(f"{kind}: {meaning}" for kind, meaning in CONDITIONS) + ".",
    )
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """One CamelCase word for machines, e.g. JobRunning or AccuracyGateFailed."""
    message: str = Field(default="", max_length=32768)
    """What happened and, on failure, what to change."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation this condition was computed from."""


class ProgressStatus(KilnModel):
    """Where the current run is."""

    stage: str | None = None
    """Stage now running, e.g. calibrate, qat, evaluate, export, engine, serve."""
    percent: int = Field(default=0, ge=0, le=100)
    """Percent of the whole run done."""
    message: str | None = None
    """Latest progress line of the stage."""

    @classmethod
    def from_progress(cls, progress: Progress) -> ProgressStatus:
        """The runner's latest progress line; percent is of the whole run when it says."""
        overall = progress.overall if progress.overall is not None else progress.percent
        return cls(stage=progress.stage, percent=int(overall), message=progress.message or None)


class StageStatus(KilnModel):
    """One stage of the run."""

    name: str
    """Stage name."""
    state: Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]
    """Pending, Running, Succeeded, Failed or Skipped."""
    seconds: float | None = None
    """Wall time of the stage."""
    message: str | None = None
    """Result or reason."""

    @classmethod
    def from_result(cls, stage: StageResult) -> StageStatus:
        """A stage as the runner recorded it (its detailed metrics stay in the manifest)."""
        return cls.model_validate(stage.model_dump(exclude={"metrics"}))


class TaskResultStatus(KilnModel):
    """One lm-evaluation-harness task, original against optimized on the same samples (the
    manifest's metrics.tasks)."""

    name: str
    """The task."""
    metric: str
    """The metric the threshold reads, e.g. acc."""
    baseline: float
    """Score of the original model, in the metric's units."""
    optimized: float
    """Score of the optimized model."""
    stderr: float | None = None
    """Standard error of the scores (the larger of the two runs')."""
    samples: int
    """Samples scored, the same for both models."""
    passed: bool
    """Whether the task let the gate pass."""
    reason: str | None = None
    """BelowMinRecovery, AboveMaxDrop or AnomalousImprovement (better than the original by more
    than the standard error: blocks unless allowImprovement is set or the task has no
    threshold)."""


class ServedTaskStatus(KilnModel):
    """One task scored again on the served revision (evaluation.served), against the published
    model's in-process score."""

    name: str
    """The task."""
    metric: str
    """The metric compared, e.g. exact_match."""
    in_process: float
    """The published model's score, measured by the optimization Job."""
    served: float | None = None
    """The score through the served endpoint; absent when the task cannot be scored there."""
    samples: int = 0
    """Samples scored through the served endpoint."""
    passed: bool
    """Whether the served score is within evaluation.served.maxDrop of the in-process one."""
    skipped: str | None = None
    """Why the task was not scored through the served endpoint."""

    @classmethod
    def from_task(cls, task: ServedTask) -> ServedTaskStatus:
        """The check Job's record of one task."""
        return cls.model_validate(task.model_dump())


class ServedLevelStatus(KilnModel):
    """Latency and throughput of the served revision at one concurrency level
    (evaluation.performance)."""

    concurrency: int
    """Requests in flight."""
    requests: int
    """Requests measured at this level."""
    ttft_p50_ms: float
    """Median time to first token, in milliseconds."""
    ttft_p95_ms: float
    """95th-percentile time to first token, in milliseconds."""
    itl_p50_ms: float | None = None
    """Median inter-token latency, in milliseconds."""
    latency_p50_ms: float | None = None
    """Median request latency, in milliseconds."""
    latency_p95_ms: float | None = None
    """95th-percentile request latency, in milliseconds."""
    output_tokens_per_second: float
    """Output tokens per second over all requests in flight."""
    requests_per_second: float
    """Requests completed per second."""

    @classmethod
    def from_level(cls, level: ServedLevel) -> ServedLevelStatus:
        """The check Job's record of one level."""
        return cls.model_validate(level.model_dump())


class MetricsStatus(KilnModel):
    """Baseline against optimized, as measured by the job."""

    baseline_perplexity: float | None = None
    """Perplexity of the original model on the evaluation text."""
    perplexity: float | None = None
    """Perplexity of the optimized model on the same text."""
    exported_perplexity: float | None = None
    """Perplexity of the published checkpoint reloaded with its exported scales, when the job
    can measure it (models up to a few billion parameters): what the served model computes."""
    degradation_percent: float | None = None
    """Perplexity increase over the original, in percent (negative is an improvement)."""
    baseline_size_bytes: int | None = None
    """Size of the original weights."""
    size_bytes: int | None = None
    """Size of the optimized checkpoint."""
    compression_ratio: float | None = None
    """baselineSizeBytes / sizeBytes."""
    params_before: int | None = None
    """Parameters before pruning."""
    params_after: int | None = None
    """Parameters after pruning."""
    acceptance_length: float | None = None
    """Mean tokens accepted per speculative-decoding step."""
    latency_ms: float | None = None
    """Median generation latency measured through Triton."""
    tokens_per_second: float | None = None
    """Output tokens per second measured through Triton."""
    speedup: float | None = None
    """Throughput relative to the original model, when measured."""
    tasks: list[TaskResultStatus] | None = None
    """lm-evaluation-harness tasks (spec.evaluation.tasks), original against optimized."""
    served: list[ServedTaskStatus] | None = None
    """The generative tasks scored again on the served revision (spec.evaluation.served)."""
    performance: list[ServedLevelStatus] | None = None
    """The served revision's latency and throughput per concurrency level
    (spec.evaluation.performance)."""

    @classmethod
    def from_metrics(cls, metrics: Metrics) -> MetricsStatus:
        """What the job measured, rounded to what a person compares, plus derived ratios."""
        values: dict[str, Any] = {
            name: round(value, _DIGITS.get(name, 4)) if isinstance(value, float) else value
            for name, value in metrics.model_dump(exclude_none=True).items()
        }
        base, size = metrics.baseline_size_bytes, metrics.size_bytes
        if base and size:
            values["compression_ratio"] = round(base / size, 3)
        return cls.model_validate(values)

    def to_metrics(self) -> Metrics:
        """The job's record of the measurements (derived ratios dropped)."""
        return Metrics.model_validate(self.model_dump(exclude=_DERIVED_METRICS | _SERVED_METRICS))


class AttemptStatus(KilnModel):
    """One technique stack tried against the accuracy gate."""

    techniques: str
    """The stack, e.g. ptq(int8_sq)+qat."""
    degradation_percent: float | None = None
    """Its measured degradation."""
    passed: bool
    """Whether it passed the gate."""
    tasks: list[TaskResultStatus] | None = None
    """Its task results."""

    @classmethod
    def from_attempt(cls, attempt: Attempt) -> AttemptStatus:
        """One escalation attempt as the runner recorded it."""
        return cls.model_validate(attempt.model_dump(include=set(cls.model_fields)))


class CheckpointStatus(KilnModel):
    """What the published checkpoint is."""

    producer: str | None = None
    """Tool that produced it (nvidia-modelopt)."""
    quant_algo: str | None = None
    """Quantization algorithm as written in hf_quant_config.json, e.g. FP8 or W4A16_AWQ."""
    kv_cache_quant_algo: str | None = None
    """KV-cache quantization, e.g. FP8."""
    group_size: int | None = None
    """Quantization group size (AWQ)."""
    calibration_digest: str | None = None
    """sha256 of the calibration token ids."""
    tools: dict[str, str] | None = None
    """Versions of the tools that produced it."""

    @classmethod
    def from_info(cls, info: CheckpointInfo) -> CheckpointStatus:
        """What the job says the checkpoint is."""
        return cls.model_validate(info.model_dump(exclude_none=True))

    def to_info(self) -> CheckpointInfo:
        """The job's record of the checkpoint."""
        return CheckpointInfo.model_validate(self.model_dump(exclude_none=True))


class SpeculationStatus(KilnModel):
    """The speculative-decoding draft the plan publishes, and whether it is served."""

    algorithm: str
    """eagle3 or medusa."""
    draft_path: str
    """Where the draft is, relative to the published plan (<store>/<planHash>/)."""
    max_draft_len: int
    """Tokens the draft proposes per step."""
    served: bool
    """Whether the serving runtime decodes with the draft."""
    reason: str | None = None
    """Why it is not served."""

    @classmethod
    def from_record(cls, record: Speculation) -> SpeculationStatus:
        """The job's record of the draft."""
        return cls(
            algorithm=record.algorithm,
            draft_path=record.draft_dir,
            max_draft_len=record.max_draft_len,
            served=record.served,
            reason=record.reason,
        )

    def to_record(self) -> Speculation:
        """Back to the job's record."""
        return Speculation(
            algorithm=self.algorithm,
            draft_dir=self.draft_path,
            max_draft_len=self.max_draft_len,
            served=self.served,
            reason=self.reason,
        )


class EndpointsStatus(KilnModel):
    """In-cluster addresses of the served model."""

    http: str
    """Triton's HTTP/REST endpoint (KServe v2 protocol, generate extension)."""
    grpc: str
    """Triton's gRPC endpoint."""
    openai: str | None = None
    """The OpenAI-compatible endpoint (base URL, ends in /v1)."""
    model: str
    """The served model's name (spec.serving.modelName), in Triton and as the OpenAI model."""


class ArtifactStatus(KilnModel):
    """A published artifact."""

    name: str
    """checkpoint, engine, triton, draft or report (report.md, plots beside it)."""
    uri: str
    """Where it is."""
    sha256: str | None = None
    """Digest of its manifest entry list."""


class ModelOptimizationStatus(KilnModel):
    """Observed state, written by Kiln (status subresource)."""

    phase: Phase | None = None
    """Pending, Queued, Optimizing, Deploying, Ready or Failed."""
    observed_generation: int | None = None
    """metadata.generation Kiln last acted on."""
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, Reconciling, Stalled and one condition per stage."""
    plan_hash: str | None = None
    """Digest of the compiled plan: the artifacts' cache key."""
    techniques: str | None = None
    """The technique stack in one line, e.g. ptq(fp8)+qad."""
    job_name: str | None = None
    """The optimization Job of the current plan."""
    progress: ProgressStatus | None = None
    """Where the current run is."""
    stages: list[StageStatus] | None = None
    """Per-stage state."""
    metrics: MetricsStatus | None = None
    """Measured numbers."""
    attempts: list[AttemptStatus] | None = None
    """Stacks tried by accuracy-gate escalation."""
    checkpoint: CheckpointStatus | None = None
    """What the published checkpoint is."""
    artifacts: list[ArtifactStatus] | None = None
    """Published artifacts."""
    manifest_digest: str | None = None
    """sha256 of the published manifest.json."""
    endpoint: str | None = None
    """In-cluster address of Triton, e.g. http://name.namespace.svc:8000."""
    endpoints: EndpointsStatus | None = None
    """Every endpoint of the served model: Triton HTTP and gRPC, OpenAI-compatible."""
    speculation: SpeculationStatus | None = None
    """The speculative-decoding draft and whether it is served."""
    serving_plan_hash: str | None = None
    """Plan hash of the revision clients are served now (lags planHash until a new revision
    has passed its checks and is promoted)."""
    smoke_tested_plan_hash: str | None = None
    """Plan hash of the revision that last passed the smoke test."""
    serving_runtime: Runtime | None = None
    """How Triton serves the plan: TensorRT-LLM engines, TensorRT-LLM's LLM API (PyTorch), or
    the Python backend on PyTorch."""

    model_config = ConfigDict(extra="ignore")

    def merge_patch(self) -> dict[str, Any]:
        """The whole status as a JSON merge patch: every field is present, None (JSON null)
        where unset, so a patch also removes what an earlier plan left behind. List items
        carry no nulls (a merge patch replaces lists whole)."""
        patch = self.model_dump(by_alias=True, mode="json")
        return {key: _without_nulls_in_lists(value) for key, value in patch.items()}


def _without_nulls_in_lists(value: Any, in_list: bool = False) -> Any:
    if isinstance(value, list):
        return [_without_nulls_in_lists(item, True) for item in value]
    if isinstance(value, dict):
        return {
            k: _without_nulls_in_lists(v, in_list)
            for k, v in value.items()
            if not (in_list and v is None)
        }
    return value
