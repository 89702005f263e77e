"""`manifest.json`: what a finished job published, with digests and measured numbers.

A present manifest under `<store>/<plan hash>/` means the work is done; the operator serves from
it without running a Job and `kiln run` skips straight to serving. The termination message is a
compact `JobResult` that fits Kubernetes' 4 KiB limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kiln_jobs.contract import Runtime
from kiln_jobs.plan import Plan

__all__ = [
    "MANIFEST_FILE",
    "Attempt",
    "CheckpointInfo",
    "EngineBuild",
    "FileDigest",
    "JobResult",
    "Manifest",
    "Metrics",
    "Progress",
    "ServedLevel",
    "ServedTask",
    "ServingMeasurements",
    "Speculation",
    "StageResult",
    "TaskResult",
]

MANIFEST_API_VERSION: Final = "kiln.dev/manifest-v1"
MANIFEST_FILE = "manifest.json"
# Kubernetes truncates a container's termination message beyond 4096 bytes.
TERMINATION_MESSAGE_LIMIT = 4096

StageState = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileDigest(_Model):
    """One published file, relative to the plan-hash directory."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _inside(cls, path: str) -> str:
        """A relative path that stays inside the plan directory (a reader writes it there)."""
        parts = path.split("/")
        if (
            not path
            or path.startswith("/")
            or "\\" in path
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise ValueError(f"{path!r} is not a relative path inside the plan directory")
        return path


class TaskResult(_Model):
    """One lm-evaluation-harness task, baseline against optimized, as the gate judged it.

    The same shape in the manifest's `metrics.tasks`, in each attempt and in the resource's
    `status.metrics.tasks`. Scores are in the metric's own units (acc runs 0-1).
    """

    name: str
    metric: str
    baseline: float
    optimized: float
    # The larger of the two runs' standard errors; None when lm-eval reports none.
    stderr: float | None = None
    # Samples scored, the same for the baseline and the optimized model.
    samples: int = Field(ge=0)
    passed: bool
    # Why it failed or was flagged (`kiln_jobs.gate`): BelowMinRecovery, AboveMaxDrop or
    # AnomalousImprovement (which blocks unless the task allows improvement or has no
    # threshold); None when there is nothing to say.
    reason: str | None = None

    def summary(self, arrow: str = "->") -> str:
        """`arc_easy acc 0.520 -> 0.510 (±0.079, 40 samples) passed`, for reports."""
        stderr = f"±{self.stderr:.3f}, " if self.stderr is not None else ""
        verdict = "passed" if self.passed else "failed"
        reason = f" ({self.reason})" if self.reason else ""
        return (
            f"{self.name} {self.metric} {self.baseline:.3f} {arrow} {self.optimized:.3f} "
            f"({stderr}{self.samples} samples) {verdict}{reason}"
        )


class Metrics(_Model):
    """Measured numbers; a field is None when the stage that measures it did not run."""

    baseline_perplexity: float | None = None
    perplexity: float | None = None
    # The published checkpoint itself, reloaded with its exported scales (the gate checks it too).
    exported_perplexity: float | None = None
    degradation_percent: float | None = None
    baseline_size_bytes: int | None = None
    size_bytes: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    acceptance_length: float | None = None
    latency_ms: float | None = None
    tokens_per_second: float | None = None
    # The Plan's tasks, scored on the published model (or, when the gate failed, the last try).
    tasks: list[TaskResult] | None = None


class CheckpointInfo(_Model):
    """What the checkpoint is, so runtimes and people recognise it without guessing."""

    producer: str = "nvidia-modelopt"
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    group_size: int | None = None
    calibration_digest: str | None = None
    tools: dict[str, str] = Field(default_factory=dict)


class EngineBuild(_Model):
    """How TensorRT-LLM engines were built (the legacy engine runtime), and what they are tied
    to: an engine runs only on the GPU model and with the TensorRT-LLM version that built it."""

    gpu: str
    tensorrt_llm_version: str
    method: str  # "trtllm-build" or "python-api"
    command: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class Speculation(_Model):
    """The draft a plan publishes, and whether the runtime that serves the plan uses it."""

    algorithm: str
    draft_dir: str  # relative to the plan-hash directory
    max_draft_len: int
    served: bool
    # Why the runtime serves the model without its draft.
    reason: str | None = None


class StageResult(_Model):
    """How one stage went."""

    name: str
    state: StageState
    seconds: float | None = None
    message: str | None = None
    metrics: dict[str, float | int | str] = Field(default_factory=dict)


class Attempt(_Model):
    """One technique stack tried against the accuracy gate."""

    techniques: str
    perplexity: float | None = None
    degradation_percent: float | None = None
    passed: bool
    seconds: float | None = None
    tasks: list[TaskResult] | None = None


class Manifest(_Model):
    """The record written last, atomically, beside the published artifacts."""

    api_version: Literal["kiln.dev/manifest-v1"] = MANIFEST_API_VERSION
    plan_hash: str
    plan: Plan
    created_at: str
    stages: list[StageResult]
    attempts: list[Attempt] = Field(default_factory=list)
    metrics: Metrics
    checkpoint: CheckpointInfo
    # Relative paths of the main artifacts inside the plan-hash directory.
    checkpoint_dir: str = "checkpoint"
    triton_repository: str | None = "triton"
    engine_dir: str | None = None
    engine_build: EngineBuild | None = None
    serving_runtime: Runtime | None = None
    speculation: Speculation | None = None
    # The run report (Markdown, plots beside it), relative to the plan-hash directory.
    report: str | None = None
    files: list[FileDigest]
    # Object stores only: the folder under the plan-hash prefix that holds the files, one per
    # publishing attempt, so two publishers of one plan never overwrite each other's files.
    # None: the files sit beside the manifest.
    objects_dir: str | None = None

    def text(self) -> str:
        """manifest.json as written (its sha256 is the manifest digest)."""
        return self.model_dump_json(indent=2)

    def digest(self) -> str:
        """sha256 of manifest.json: pins a published plan (status, the Triton pod checks it)."""
        return hashlib.sha256(self.text().encode()).hexdigest()

    def scope_problem(self, plan_hash: str, scope: str) -> str | None:
        """Why this manifest is not the plan `plan_hash` of `scope`, or None when it is."""
        if self.plan_hash != plan_hash or self.plan.hash() != plan_hash:
            return f"its manifest describes plan {self.plan.hash()}, not {plan_hash}"
        if self.plan.scope != scope:
            return (
                f"it was published for {self.plan.scope} (by {self.plan.metadata.namespace}/"
                f"{self.plan.metadata.name}), not for {scope}"
            )
        return None


class Progress(_Model):
    """A progress report: printed as a log line, written to the progress file.

    `percent` is within the stage; `overall` is of the whole run (stages weighted by their
    usual share of the time), never going backwards."""

    stage: str
    percent: float = Field(ge=0, le=100)
    message: str = ""
    overall: float | None = Field(default=None, ge=0, le=100)


class ServedTask(_Model):
    """One task scored again on the served endpoint, against the published model's in-process
    score (evaluation.served)."""

    name: str
    metric: str
    in_process: float
    # None when the task cannot be scored through the serving contract (`skipped` says why).
    served: float | None = None
    samples: int = Field(default=0, ge=0)
    passed: bool
    skipped: str | None = None


class ServedLevel(_Model):
    """The served model's latency and throughput at one concurrency level
    (evaluation.performance), in the units people read."""

    concurrency: int = Field(ge=1)
    requests: int = Field(ge=0)
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    output_tokens_per_second: float
    requests_per_second: float


class ServingMeasurements(_Model):
    """What the served-model evaluation measured on a rolled-out, not yet promoted model."""

    tasks: list[ServedTask] = Field(default_factory=list)
    performance: list[ServedLevel] = Field(default_factory=list)

    def slimmer(self) -> Iterator[ServingMeasurements]:
        """Ever smaller copies, for a termination message that must fit 4 KiB: first the levels
        without their optional numbers, then without the tasks that measured nothing, then with
        entries cut from the ends of both lists, the failed tasks kept longest (they are why the
        Job failed). The last copy is empty."""
        levels = [
            level.model_copy(
                update={"itl_p50_ms": None, "latency_p50_ms": None, "latency_p95_ms": None}
            )
            for level in self.performance
        ]
        yield self.model_copy(update={"performance": levels})
        measured = [task for task in self.tasks if task.served is not None]
        # Indices, failed tasks first; a kept subset is shown in the original order.
        priority = sorted(range(len(measured)), key=lambda i: measured[i].passed)
        tasks, count = len(measured), len(levels)
        while True:
            kept = [measured[i] for i in sorted(priority[:tasks])]
            yield ServingMeasurements(tasks=kept, performance=levels[:count])
            if tasks == count == 0:
                return
            if tasks >= count:
                tasks -= 1
            else:
                count -= 1


class JobResult(_Model):
    """The runner's last word, written to the container's termination message path."""

    ok: bool
    plan_hash: str
    reason: str | None = None
    message: str | None = None
    metrics: Metrics | None = None
    checkpoint: CheckpointInfo | None = None
    stages: list[StageResult] = Field(default_factory=list)
    # Every stack tried against the accuracy gate; kept when the gate failed (nothing published).
    attempts: list[Attempt] = Field(default_factory=list)
    # How the published plan is served, so the operator starts Triton the right way.
    serving_runtime: Runtime | None = None
    speculation: Speculation | None = None
    # sha256 of the published manifest.json, so the operator pins what Triton may serve.
    manifest_digest: str | None = None
    # The served-model evaluation Job's measurements (that Job publishes nothing).
    serving: ServingMeasurements | None = None

    def to_termination_message(self) -> str:
        """Compact JSON under Kubernetes' limit (see `_slimmer` for what goes first)."""
        for slim in self._slimmer():
            text = slim.model_dump_json(exclude_none=True)
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                return text
        short = (self.message or "")[:1000]
        return JobResult(
            ok=self.ok, plan_hash=self.plan_hash, reason=self.reason, message=short
        ).model_dump_json(exclude_none=True)

    def _slimmer(self) -> Iterator[JobResult]:
        """This result, then ever smaller copies: stage details, the attempts' task results, the
        attempts and the published task results go first (the manifest keeps them all), then the
        serving measurements' detail, then everything but the verdict, a message cut to 1000
        characters and as much of the serving measurements as fits (only that Job has them)."""
        yield self
        attempts = [a.model_copy(update={"tasks": None}) for a in self.attempts]
        metrics = self.metrics and self.metrics.model_copy(update={"tasks": None})
        yield self.model_copy(update={"stages": []})
        yield self.model_copy(update={"stages": [], "attempts": attempts})
        lean = self.model_copy(update={"stages": [], "attempts": []})
        yield lean
        lean = lean.model_copy(update={"metrics": metrics})
        yield lean
        if self.serving is None:
            return
        yield lean.model_copy(update={"serving": next(self.serving.slimmer())})
        short = (self.message or "")[:1000]
        bare = JobResult(ok=self.ok, plan_hash=self.plan_hash, reason=self.reason, message=short)
        for serving in self.serving.slimmer():
            yield bare.model_copy(update={"serving": serving})
