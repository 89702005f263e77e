"""compile: a validated `ModelOptimization` spec → the Plan a job runs.

Pure and deterministic: every default is resolved here, so the Plan alone says what runs, and the
same spec with the same options always gives the same plan hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from kiln_jobs.contract import format_spec
from kiln_jobs.plan import (
    DataRef,
    EnginePlan,
    EvaluationPlan,
    ExportPlan,
    HardwarePlan,
    ModelRef,
    OutputPlan,
    PerformancePlan,
    Plan,
    PlanMetadata,
    PruneDistillPlan,
    PTQPlan,
    QADPlan,
    QATPlan,
    ServedEvaluationPlan,
    ServingPlan,
    SpeculativePlan,
    TaskPlan,
    Technique,
    TrainingPlan,
)
from kiln_operator.api.spec import (
    ESCALATION_RUNGS,
    EscalationSpec,
    EvaluationSpec,
    ModelOptimizationSpec,
    PerformanceSpec,
    TaskSpec,
)
from kiln_operator.api.techniques import (
    DataSpec,
    ModelRefSpec,
    PruneDistillSpec,
    PTQSpec,
    QADSpec,
    QATSpec,
    SpeculativeSpec,
    TechniqueSpec,
    TrainingSpec,
)
from kiln_operator.api.uris import EMBEDDED_MODEL, uri_scheme

__all__ = ["CompileError", "CompileOptions", "Defaults", "compile_plan", "spec_uris"]


# Why the default ladder leaves QAD off a gate that is perplexity only (measurements in the
# README, from bench.qad_vs_qat).
QAD_ON_PERPLEXITY = (
    "qad was not tried: the gate is perplexity only, and on the gate's text QAT reaches a lower "
    "perplexity than QAD at the same steps (QAT fits the training text, and can go below the "
    "original model's perplexity; QAD fits the original model's predictions, which keeps it "
    "closer to the original on other text but not below it on this one); add a task threshold "
    "(evaluation.tasks) or list qad in evaluation.escalation.rungs to try it"
)


class CompileError(ValueError):
    """The spec is valid on its own but cannot run where it was asked to (names the field)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class CompileOptions:
    """Where the Plan will run."""

    target: Literal["cluster", "local"] = "cluster"
    # The job image in the cluster; "local" for kiln run. Part of the plan hash (tool versions).
    runtime: str = "local"
    # Used when the spec names no artifact store.
    default_store: str | None = None
    # Serve with Triton's Python backend when TensorRT-LLM is missing; None: local runs only.
    engine_fallback: bool | None = None
    # Namespaces that share published plans; None: each namespace is its own cache scope.
    sharing_domain: str | None = None


class Defaults:
    """Values a spec leaves out. Documented on the API fields; keep both in step."""

    SEQ_LENGTH = 512
    CALIBRATION_SAMPLES = 128
    EVAL_SAMPLES = 16
    TRAIN_SAMPLES = 512
    IMPORTANCE_SAMPLES = 64
    STEPS = 100
    LEARNING_RATE = 1e-5
    BATCH_SIZE = 4
    CHECKPOINT_EVERY = 50
    DRAFT_STEPS = 200
    DRAFT_LEARNING_RATE = 1e-4
    DISTILL_STEPS = 200
    DISTILL_LEARNING_RATE = 5e-5
    EXCLUDE_MODULES = ("*lm_head*",)
    # The escalation ladder's samples rung calibrates on this many times the sequences.
    MORE_CALIBRATION = 4


def compile_plan(
    spec: ModelOptimizationSpec,
    *,
    name: str,
    namespace: str | None = None,
    generation: int | None = None,
    options: CompileOptions | None = None,
) -> Plan:
    """Resolve a spec into a Plan.

    Raises:
        CompileError: the spec cannot run on `options.target` (e.g. file:// in a cluster, or no
            artifact store anywhere).
    """
    options = options or CompileOptions()
    _check_target(spec, options)
    techniques = _techniques(spec.techniques)
    return Plan(
        metadata=PlanMetadata(name=name, namespace=namespace, generation=generation),
        model=ModelRef(
            source=_model_source(spec, options),
            revision=spec.model.revision,
            dtype=spec.model.dtype,
        ),
        techniques=techniques,
        evaluation=_evaluation(spec.evaluation, techniques, options),
        export=ExportPlan(tensorrt_llm_checkpoint=spec.engine.backend == "tensorrt-llm"),
        engine=EnginePlan(
            backend=spec.engine.backend,
            max_batch_size=spec.engine.max_batch_size,
            max_input_len=spec.engine.max_input_len,
            max_seq_len=spec.engine.max_seq_len,
            tensor_parallel=spec.engine.tensor_parallel,
            pipeline_parallel=spec.engine.pipeline_parallel,
            allow_fallback=(
                options.target == "local"
                if options.engine_fallback is None
                else options.engine_fallback
            ),
        ),
        serving=ServingPlan(
            model_name=spec.serving.model_name, max_new_tokens=spec.serving.max_new_tokens
        ),
        hardware=HardwarePlan(gpu_product=spec.resources.gpu_product, gpus=spec.resources.gpus),
        runtime=options.runtime,
        scope=_scope(namespace, options),
        output=OutputPlan(store=_store(spec, options)),
    )


def _scope(namespace: str | None, options: CompileOptions) -> str:
    """Who may reuse what this plan publishes (part of the plan hash)."""
    if options.target == "local":
        return "local"
    if options.sharing_domain:
        return f"domain:{options.sharing_domain}"
    return f"namespace:{namespace or 'default'}"


def _check_target(spec: ModelOptimizationSpec, options: CompileOptions) -> None:
    if options.target != "cluster":
        return
    evaluation = spec.evaluation
    if not spec.serving.enabled:
        for field in ("served", "performance"):
            if getattr(evaluation, field) is not None:
                raise CompileError(
                    f"spec.evaluation.{field}",
                    f"evaluation.{field} is measured on the served model, and serving is off: "
                    "set serving.enabled: true, or remove it",
                )
    performance = evaluation.performance
    if performance is not None and (performance.min_speedup or _asks_for_baseline(performance)):
        raise CompileError(
            "spec.evaluation.performance.baseline",
            "the comparison with the original model (baseline, minSpeedup) is measured by kiln "
            "run only; in a cluster the served revision is measured alone: set baseline: false "
            "and remove minSpeedup",
        )
    for path, uri in spec_uris(spec):
        if uri_scheme(uri) == "file":
            raise CompileError(
                path,
                f"{uri} is a local path, usable with kiln run only; in a cluster use "
                "pvc://claim/path or s3://bucket/prefix",
            )


def _asks_for_baseline(performance: PerformanceSpec) -> bool:
    """baseline: true written in the spec (its default is for kiln run)."""
    return "baseline" in performance.model_fields_set and performance.baseline


def spec_uris(spec: ModelOptimizationSpec) -> list[tuple[str, str]]:
    """Every URI in the spec with its field path."""
    found = [("spec.model.source", spec.model.source)] if spec.model.source else []
    if spec.artifacts.store:
        found.append(("spec.artifacts.store", spec.artifacts.store))
    if spec.evaluation.data:
        found.append(("spec.evaluation.data.source", spec.evaluation.data.source))
    for index, task in enumerate(spec.evaluation.tasks or []):
        if task.source:
            found.append((f"spec.evaluation.tasks[{index}].source", task.source))
    for index, item in enumerate(spec.techniques):
        prefix = f"spec.techniques[{index}].{item.kind}"
        body = item.body
        for field in ("calibration", "importance", "data"):
            data = getattr(body, field, None)
            if isinstance(data, DataSpec):
                found.append((f"{prefix}.{field}.source", data.source))
        for field in ("training", "distillation"):
            training = getattr(body, field, None)
            if isinstance(training, TrainingSpec) and training.data:
                found.append((f"{prefix}.{field}.data.source", training.data.source))
        for field in ("teacher", "draft"):
            ref = getattr(body, field, None)
            if isinstance(ref, ModelRefSpec):
                found.append((f"{prefix}.{field}.source", ref.source))
    return found


def _model_source(spec: ModelOptimizationSpec, options: CompileOptions) -> str:
    """The model to optimize. Only kiln run falls back to the embedded one: in a cluster, a
    spec that forgot its model must not quietly serve another under the user's name."""
    if spec.model.source:
        return spec.model.source
    if options.target == "local":
        return EMBEDDED_MODEL
    raise CompileError(
        "spec.model.source",
        "no model: set it (hf://org/name, pvc://claim/path or s3://bucket/prefix), or "
        f"{EMBEDDED_MODEL} to try Kiln with the model it ships",
    )


def _store(spec: ModelOptimizationSpec, options: CompileOptions) -> str:
    store = spec.artifacts.store or options.default_store
    if store is None:
        raise CompileError(
            "spec.artifacts.store",
            "no artifact store: set it (pvc://claim/prefix or s3://bucket/prefix) or ask the "
            "platform team to configure the operator's default store",
        )
    return store


def _data(data: DataSpec | None, samples: int) -> DataRef:
    data = data or DataSpec()
    return DataRef(
        source=data.source,
        text_field=data.text_field,
        samples=data.samples or samples,
        seq_length=data.seq_length or Defaults.SEQ_LENGTH,
    )


def _training(
    training: TrainingSpec | None,
    *,
    steps: int = Defaults.STEPS,
    learning_rate: float = Defaults.LEARNING_RATE,
) -> TrainingPlan:
    training = training or TrainingSpec()
    return TrainingPlan(
        steps=training.steps or steps,
        learning_rate=training.learning_rate or learning_rate,
        batch_size=training.batch_size or Defaults.BATCH_SIZE,
        data=_data(training.data, Defaults.TRAIN_SAMPLES),
        checkpoint_every=training.checkpoint_every or Defaults.CHECKPOINT_EVERY,
        warmup_steps=training.warmup_steps or 0,
    )


def _model_ref(ref: ModelRefSpec | None) -> ModelRef | None:
    return None if ref is None else ModelRef(source=ref.source, revision=ref.revision)


def _ptq(spec: PTQSpec) -> PTQPlan:
    return PTQPlan(
        format=spec.format,
        kv_cache=spec.kv_cache,
        block_size=spec.block_size,
        calibration=_data(spec.calibration, Defaults.CALIBRATION_SAMPLES),
        exclude_modules=tuple(spec.exclude_modules or Defaults.EXCLUDE_MODULES),
        algorithm=spec.calibration_algorithm,
        keep_sensitive_layers=spec.keep_sensitive_layers,
    )


def _qad(spec: QADSpec) -> QADPlan:
    return QADPlan(
        training=_training(spec),
        teacher=_model_ref(spec.teacher),
        temperature=spec.temperature or QADPlan.model_fields["temperature"].default,
        kd_weight=1.0 if spec.kd_weight is None else spec.kd_weight,
    )


def _speculative(spec: SpeculativeSpec) -> SpeculativePlan:
    training = None
    if spec.draft is None:
        training = _training(
            spec.training, steps=Defaults.DRAFT_STEPS, learning_rate=Defaults.DRAFT_LEARNING_RATE
        )
    return SpeculativePlan(
        algorithm=spec.algorithm,
        draft=_model_ref(spec.draft),
        training=training,
        num_layers=spec.num_layers or 1,
        medusa_heads=spec.medusa_heads or 4,
    )


def _prune_distill(spec: PruneDistillSpec) -> PruneDistillPlan:
    return PruneDistillPlan(
        target_layers=spec.target_layers,
        target_ffn_hidden_size=spec.target_ffn_hidden_size,
        target_params=_count(spec.target_params) if spec.target_params else None,
        importance=_data(spec.importance, Defaults.IMPORTANCE_SAMPLES),
        distillation=_training(
            spec.distillation,
            steps=Defaults.DISTILL_STEPS,
            learning_rate=Defaults.DISTILL_LEARNING_RATE,
        ),
        temperature=spec.temperature or 1.0,
    )


def _count(text: str) -> int:
    """`100M` → 100_000_000."""
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}.get(text[-1], 1)
    number = text[:-1] if text[-1] in "KMB" else text
    return round(float(number) * scale)


def _techniques(items: list[TechniqueSpec]) -> tuple[Technique, ...]:
    """Plan techniques in order; a qat/qad with its own format gets the PTQ it implies."""
    plan: list[Technique] = []
    quantized = False
    for item in items:
        body = item.body
        if isinstance(body, QATSpec) and not quantized and body.format is not None:
            plan.append(_ptq(PTQSpec(format=body.format)))
        match body:
            case PTQSpec():
                plan.append(_ptq(body))
            case QADSpec():  # before QATSpec: a QADSpec is a QATSpec
                plan.append(_qad(body))
            case QATSpec():
                plan.append(QATPlan(training=_training(body)))
            case SpeculativeSpec():
                plan.append(_speculative(body))
            case PruneDistillSpec():
                plan.append(_prune_distill(body))
        quantized = quantized or isinstance(body, PTQSpec | QATSpec)
    return tuple(plan)


def _evaluation(
    spec: EvaluationSpec, techniques: tuple[Technique, ...], options: CompileOptions
) -> EvaluationPlan:
    data = _data(spec.data, Defaults.EVAL_SAMPLES)
    escalation: tuple[tuple[Technique, ...], ...] = ()
    notes: tuple[str, ...] = ()
    if spec.on_gate_failure == "escalate":
        escalation, notes = _escalation_ladder(spec, techniques)
    return EvaluationPlan(
        metric=spec.metric,
        data=data,
        stride=spec.stride or data.seq_length,
        max_degradation_percent=spec.max_degradation_percent,
        on_gate_failure=spec.on_gate_failure,
        escalation=escalation,
        tasks=tuple(_task(task) for task in spec.tasks or []),
        served=ServedEvaluationPlan(max_drop=spec.served.max_drop) if spec.served else None,
        performance=_performance(spec.performance, options) if spec.performance else None,
        ladder_notes=notes,
    )


def _performance(spec: PerformanceSpec, options: CompileOptions) -> PerformancePlan:
    return PerformancePlan(
        concurrency=tuple(spec.concurrency),
        requests=spec.requests,
        max_tokens=spec.max_tokens,
        # In a cluster the revision is measured alone (_check_target refuses an explicit ask).
        baseline=spec.baseline and options.target == "local",
        min_speedup=spec.min_speedup,
    )


def _task(spec: TaskSpec) -> TaskPlan:
    return TaskPlan(
        name=spec.name,
        source=spec.source,
        limit=spec.limit,
        metric=spec.metric,
        min_recovery=spec.min_recovery,
        max_drop=spec.max_drop,
        allow_improvement=spec.allow_improvement,
    )


def _escalation_ladder(
    spec: EvaluationSpec, techniques: tuple[Technique, ...]
) -> tuple[tuple[tuple[Technique, ...], ...], tuple[str, ...]]:
    """The stacks tried after the requested one fails the gate, cheapest first, and notes on
    the rungs left off. Each PTQ rung is the requested stack with one change to its
    quantization (so the report shows what each fix buys alone); the training rungs add QAT,
    then QAD, right after the quantization (anything before it, pruning or a draft, stays as
    it was)."""
    escalation = spec.escalation or EscalationSpec()
    kinds = [t.kind for t in techniques]
    if "qad" in kinds or "ptq" not in kinds:
        return (), ()
    at = kinds.index("ptq")
    ptq = cast(PTQPlan, techniques[at])

    def with_ptq(**changes: Any) -> tuple[Technique, ...]:
        return (*techniques[:at], ptq.model_copy(update=changes), *techniques[at + 1 :])

    training = _training(
        TrainingSpec(steps=escalation.steps, learning_rate=escalation.learning_rate)
    )
    base = [t for t in techniques if t.kind != "qat"]
    better = format_spec(ptq.format).better_algorithm
    more = ptq.calibration.model_copy(
        update={"samples": ptq.calibration.samples * Defaults.MORE_CALIBRATION}
    )
    candidates: dict[str, tuple[Technique, ...] | None] = {
        "calibration": with_ptq(algorithm=better) if better and not ptq.algorithm else None,
        "samples": with_ptq(calibration=more),
        "sensitiveLayers": None
        if ptq.keep_sensitive_layers
        else with_ptq(keep_sensitive_layers=True),
        "qat": None
        if "qat" in kinds
        else (*base[: at + 1], QATPlan(training=training), *base[at + 1 :]),
        "qad": (*base[: at + 1], QADPlan(training=training), *base[at + 1 :]),
    }
    allowed = escalation.rungs or _default_rungs(spec)
    notes = (QAD_ON_PERPLEXITY,) if "qad" not in allowed and not escalation.rungs else ()
    rungs = [stack for name, stack in candidates.items() if name in allowed and stack]
    max_extra = (escalation.max_attempts or len(rungs) + 1) - 1
    return tuple(rungs[:max_extra]), notes


def _default_rungs(spec: EvaluationSpec) -> tuple[str, ...]:
    """Every rung, but QAD only when a task gates: it cannot win on perplexity alone."""
    if spec.task_gated():
        return ESCALATION_RUNGS
    return tuple(rung for rung in ESCALATION_RUNGS if rung != "qad")
