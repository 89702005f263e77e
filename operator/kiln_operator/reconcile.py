"""The reconcile decision: (resource, what exists) → (what should exist, status, events).

Pure: no API calls. The handler observes the cluster, calls `prepare` then `decide`, applies the
Decision, and calls again with a smoke-test result when the Decision asks for one. Everything that
matters for restarts lives in the cluster (children found by deterministic names and labels, the
record in `status`), never in the operator's memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from kiln_jobs.contract import CHECKPOINT_DIR, ENGINE_DIR, REPORT_DIR, REPORT_FILE, TRITON_DIR
from kiln_jobs.manifest import JobResult, Progress
from kiln_jobs.plan import Plan
from kiln_operator.api import ModelOptimization, ModelOptimizationStatus
from kiln_operator.api.status import (
    ArtifactStatus,
    AttemptStatus,
    CheckpointStatus,
    Condition,
    MetricsStatus,
    Phase,
    ProgressStatus,
    ServedLevelStatus,
    ServedTaskStatus,
    SpeculationStatus,
    StageStatus,
)
from kiln_operator.builders.job import build_job, build_plan_configmap
from kiln_operator.builders.serving import (
    build_admin_secret,
    build_candidate_service,
    build_deployment,
    build_pdb,
    build_service,
    candidate_http,
    endpoints_of,
)
from kiln_operator.builders.serving_check import (
    CHECK_DEADLINE_MESSAGE,
    build_serving_check_job,
    needs_serving_check,
)
from kiln_operator.compiler import CompileError, CompileOptions, compile_plan
from kiln_operator.conditions import (
    CONDITIONS,
    DEPLOYED,
    OPTIMIZED,
    READY,
    RECONCILING,
    SERVING_VALIDATED,
    SMOKE_TESTED,
    STALLED,
    ConditionStatus,
    find_condition,
    set_condition,
)
from kiln_operator.config import OperatorConfig
from kiln_operator.jobstate import JobView, view_job
from kiln_operator.naming import (
    APPLIED_ANNOTATION,
    HASH_LABEL,
    deployment_name,
    job_name,
    service_name,
    short_hash,
)
from kiln_operator.policy import policy_problems
from kiln_operator.published import Published
from kiln_operator.validation import Problem, parse_resource

__all__ = [
    "Decision",
    "Event",
    "Observed",
    "Prepared",
    "Published",
    "SmokeRequest",
    "SmokeResult",
    "decide",
    "decide_invalid",
    "decide_rejected",
    "prepare",
    "recorded_plan_hash",
]

Obj = dict[str, Any]
# Optimized=False while the current plan's Job has not published (not a failure: no Event).
_IN_PROGRESS = "NotPublishedYet"


@dataclass(frozen=True)
class SmokeResult:
    """The outcome of one real generation request against Triton."""

    plan_hash: str
    ok: bool
    message: str
    latency_ms: float | None = None


@dataclass(frozen=True)
class SmokeRequest:
    """Ask the handler to send one generation request, then decide again."""

    endpoint: str
    model_name: str
    prompt: str
    max_tokens: int
    plan_hash: str


@dataclass
class Observed:
    """What exists in the cluster (and the store) for one resource and its current plan."""

    job: Obj | None = None
    job_pods: list[Obj] = field(default_factory=list)
    progress: Progress | None = None
    published: Published | None = None
    # The current plan's Triton revision and its pods.
    deployment: Obj | None = None
    serving_pods: list[Obj] = field(default_factory=list)
    # Deployments of other plans' revisions (the promoted one among them until this replaces it).
    other_revisions: list[str] = field(default_factory=list)
    # The served-model evaluation Job of the current plan's revision, when the plan asks for one.
    check_job: Obj | None = None
    check_job_pods: list[Obj] = field(default_factory=list)
    # Its evaluations under earlier thresholds (evaluation.served/performance changed since).
    other_checks: list[str] = field(default_factory=list)
    stale_jobs: list[str] = field(default_factory=list)
    stale_configmaps: list[str] = field(default_factory=list)
    missing_claims: list[str] = field(default_factory=list)
    # The Job controller's latest FailedCreate message while the Job has no pod.
    job_create_failure: str | None = None
    # A periodic look rather than an event: write every child again, changed or not.
    resync: bool = False
    running_jobs: int = 0
    smoke: SmokeResult | None = None


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the resource."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Decision:
    """What the handler must do."""

    status: Obj
    create: list[Obj] = field(default_factory=list)  # create when absent, never patched
    secrets: list[Obj] = field(default_factory=list)  # created once with a random key
    apply: list[Obj] = field(default_factory=list)  # server-side apply
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    events: list[Event] = field(default_factory=list)
    smoke: SmokeRequest | None = None
    requeue_after: float | None = None


@dataclass(frozen=True)
class Prepared:
    """A resource that parsed and compiled."""

    body: Obj
    resource: ModelOptimization
    plan: Plan

    @property
    def plan_hash(self) -> str:
        """The plan's full hash."""
        return self.plan.hash()


def recorded_plan_hash(body: Obj) -> str | None:
    """The plan the resource's status names: None until Kiln's first reconcile wrote one."""
    return (body.get("status") or {}).get("planHash")


def compile_options(config: OperatorConfig) -> CompileOptions:
    """How the operator compiles: for the cluster, with the platform team's defaults."""
    return CompileOptions(
        target="cluster",
        runtime=config.job_image,
        default_store=config.default_store,
        engine_fallback=config.engine_fallback,
        sharing_domain=config.sharing_domain,
    )


def prepare(body: Obj, config: OperatorConfig) -> Prepared | list[Problem]:
    """Parse and compile, or the problems that stop it."""
    resource, problems = parse_resource(body)
    if resource is None:
        return problems
    try:
        plan = compile_plan(
            resource.spec,
            name=resource.metadata.name,
            namespace=resource.metadata.namespace,
            generation=resource.metadata.generation,
            options=compile_options(config),
        )
    except CompileError as error:
        return [Problem(error.path, error.message)]
    refused = policy_problems(resource, config)
    if refused:
        return refused
    return Prepared(body, resource, plan)


def owner_reference(body: Obj) -> Obj:
    """The controller reference that ties a child's life to the resource."""
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned(obj: Obj, body: Obj) -> Obj:
    obj["metadata"]["ownerReferences"] = [owner_reference(body)]
    return obj


def _parse_status(raw: Obj) -> ModelOptimizationStatus:
    """The previous status; a field this version cannot read is treated as absent."""
    try:
        return ModelOptimizationStatus.model_validate(raw)
    except ValidationError:
        readable = {}
        for key, value in raw.items():
            try:
                ModelOptimizationStatus.model_validate({key: value})
            except ValidationError:
                continue
            readable[key] = value
        return ModelOptimizationStatus.model_validate(readable)


class _Status:
    """The status being built, with the previous one for transition times and events."""

    def __init__(self, body: Obj, now: str) -> None:
        raw: Obj = body.get("status") or {}
        self.previous = _parse_status(raw)
        self.previous_conditions: list[Obj] = list(raw.get("conditions") or [])
        self.generation: int | None = body["metadata"].get("generation")
        self.now = now
        self.conditions: list[Obj] = list(self.previous_conditions)
        # Every field left unset here is cleared by the patch; only what Triton serves carries
        # over until a rollout replaces it.
        self.new = ModelOptimizationStatus(
            observed_generation=self.generation,
            serving_plan_hash=self.previous.serving_plan_hash,
            smoke_tested_plan_hash=self.previous.smoke_tested_plan_hash,
        )

    def condition(self, kind: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.conditions = set_condition(
            self.conditions,
            kind,
            status,
            reason,
            message,
            generation=self.generation,
            now=self.now,
        )

    def working(self, phase: Phase, reason: str, message: str) -> None:
        """Progress is being made: Reconciling, not Ready, not Stalled."""
        self.new.phase = phase
        self.condition(RECONCILING, "True", reason, message)
        self.condition(STALLED, "False", reason, message)
        self.condition(READY, "False", reason, message)

    def stalled(self, phase: Phase, reason: str, message: str) -> None:
        """Progress needs the user: Stalled, not Reconciling, not Ready."""
        self.new.phase = phase
        self.condition(STALLED, "True", reason, message)
        self.condition(RECONCILING, "False", reason, message)
        self.condition(READY, "False", reason, message)

    def ready(self, reason: str, message: str) -> None:
        self.new.phase = "Ready"
        self.condition(READY, "True", reason, message)
        self.condition(RECONCILING, "False", reason, message)
        self.condition(STALLED, "False", reason, message)

    def build(self) -> Obj:
        """The status as a merge patch (clears whatever this reconcile did not set)."""
        self.new.conditions = [Condition.model_validate(c) for c in self.conditions]
        return self.new.merge_patch()

    def events(self) -> list[Event]:
        """Events for what changed since the previous status."""
        found: list[Event] = []
        old_phase, new_phase = self.previous.phase, self.new.phase
        # The stages first, then the summary; Reconciling says what the phase change says.
        stages = [kind for kind, _ in CONDITIONS if kind not in (READY, RECONCILING)]
        for kind in [*stages, READY]:
            new = find_condition(self.conditions, kind)
            old = find_condition(self.previous_conditions, kind)
            if new is None or (
                old and (old["status"], old["reason"]) == (new["status"], new["reason"])
            ):
                continue
            if kind == STALLED and new["status"] == "False":
                continue
            if new["reason"] == _IN_PROGRESS:
                continue  # the phase change says it
            bad = (kind == STALLED) or new["status"] == "False"
            if kind == READY and new["status"] == "False":
                continue  # Ready=False mirrors other conditions; their events say why
            if any(event.reason == new["reason"] for event in found):
                continue  # a stage's failure and Stalled tell the same story once
            found.append(Event("Warning" if bad else "Normal", new["reason"], new["message"]))
        if old_phase != new_phase and not found:
            reconciling = find_condition(self.conditions, RECONCILING) or {}
            found.append(Event("Normal", new_phase or "Unknown", reconciling.get("message", "")))
        return found


def decide_invalid(body: Obj, problems: list[Problem], now: str) -> Decision:
    """A resource that cannot be compiled: Stalled with every problem, children untouched."""
    status = _Status(body, now)
    message = "; ".join(str(p) for p in problems)
    status.stalled("Failed", "InvalidSpec", f"fix the spec: {message}")
    return Decision(status=status.build(), events=status.events())


def decide_rejected(body: Obj, decision: Decision, message: str, now: str) -> Decision:
    """The API server refused one of the children `decision` wanted: Stalled with its reason,
    everything else the decision found kept (a retry of the same request cannot succeed)."""
    status = _Status(body, now)
    found = {k: v for k, v in decision.status.items() if v is not None and k != "conditions"}
    status.new = _parse_status(found)
    status.conditions = list(decision.status.get("conditions") or [])
    status.stalled("Failed", "ChildRejected", f"{message}; change the spec")
    return Decision(status=status.build(), events=status.events())


def _published_from_status(
    previous: ModelOptimizationStatus, conditions: list[Obj], plan_hash: str
) -> Published | None:
    """The record in status, when the Job that produced it is gone."""
    optimized = find_condition(conditions, OPTIMIZED)
    if previous.plan_hash != plan_hash or not optimized or optimized["status"] != "True":
        return None
    return Published.from_status(previous)


def _record_published(status: _Status, published: Published) -> None:
    new = status.new
    if published.metrics:
        new.metrics = MetricsStatus.from_metrics(published.metrics)
    if published.checkpoint:
        new.checkpoint = CheckpointStatus.from_info(published.checkpoint)
    if published.stages:
        new.stages = [StageStatus.from_result(stage) for stage in published.stages]
    if published.attempts:
        new.attempts = [AttemptStatus.from_attempt(attempt) for attempt in published.attempts]
    new.manifest_digest = published.manifest_digest
    new.serving_runtime = published.serving_runtime
    if published.speculation:
        new.speculation = SpeculationStatus.from_record(published.speculation)


def published_artifacts(store: str, published: Published) -> list[ArtifactStatus]:
    """Where a published plan's parts are: what `kiln report` and people look up."""
    root = f"{store.rstrip('/')}/{published.plan_hash}"
    parts = [("checkpoint", CHECKPOINT_DIR), ("triton", TRITON_DIR)]
    if published.serving_runtime == "tensorrtllm-engine":
        parts.append(("engine", ENGINE_DIR))
    if published.speculation is not None:
        parts.append(("draft", published.speculation.draft_dir))
    parts.append(("report", f"{REPORT_DIR}/{REPORT_FILE}"))
    return [ArtifactStatus(name=name, uri=f"{root}/{path}") for name, path in parts]


def _job_in_progress(
    status: _Status, prepared: Prepared, observed: Observed, config: OperatorConfig
) -> Decision:
    """No artifacts yet: create the Job, or report how it is doing."""
    body, resource, plan = prepared.body, prepared.resource, prepared.plan
    decision = Decision(status={}, requeue_after=config.poll_seconds)
    # Optimized speaks of the current plan: an earlier plan's True must not make this one count
    # as published (the Job may still be running).
    status.condition(
        OPTIMIZED,
        "False",
        _IN_PROGRESS,
        f"plan {short_hash(prepared.plan_hash)} is not published yet",
    )
    if observed.missing_claims:
        claims = ", ".join(observed.missing_claims)
        status.working(
            "Pending",
            "WaitingForVolume",
            f"waiting for PersistentVolumeClaim(s) {claims} in this namespace",
        )
        return decision
    if observed.job is None:
        if config.max_running_jobs and observed.running_jobs >= config.max_running_jobs:
            status.working(
                "Queued",
                "WaitingForSlot",
                f"{observed.running_jobs} optimization Jobs are running, the "
                f"installation's limit; this one starts when one finishes",
            )
            return decision
        decision.create += [
            _owned(build_plan_configmap(resource, plan), body),
            _owned(build_job(resource, plan, config), body),
        ]
        status.working("Pending", "JobCreated", f"created Job {status.new.job_name}")
        return decision
    view = view_job(observed.job, observed.job_pods, observed.job_create_failure)
    if view.state == "Failed":
        status.condition(OPTIMIZED, "False", view.reason, view.message)
        status.stalled("Failed", view.reason, view.message)
        if view.result and view.result.stages:
            status.new.stages = [StageStatus.from_result(stage) for stage in view.result.stages]
        if view.result and view.result.attempts:
            # A failed gate shows what each stack scored, perplexity and tasks.
            status.new.attempts = [AttemptStatus.from_attempt(a) for a in view.result.attempts]
        decision.requeue_after = None
        return decision
    if view.state == "Succeeded":
        # The exit code alone does not say that anything was published.
        name = observed.job["metadata"]["name"]
        message = (
            f"Job {name} succeeded but left no readable result, and the store shows no manifest "
            f"of plan {short_hash(prepared.plan_hash)}: nothing was published, so nothing is "
            f"served; see `kubectl logs job/{name}`"
        )
        status.condition(OPTIMIZED, "False", "ResultMissing", message)
        status.stalled("Failed", "ResultMissing", message)
        return decision
    if view.state == "Blocked":
        status.stalled("Pending", view.reason, view.message)
        return decision
    if view.state in ("Suspended", "Unschedulable"):
        status.working("Queued", view.reason, view.message)
        return decision
    if view.state == "Running":
        progress = observed.progress
        message = "optimizing"
        if progress:
            message = f"{progress.stage} {progress.percent:.0f}%: {progress.message or ''}"
            status.new.progress = ProgressStatus.from_progress(progress)
        status.working("Optimizing", "JobRunning", message)
        return decision
    status.working("Pending", view.reason, view.message)
    return decision


def _rollout(deployment: Obj | None, plan_hash: str, replicas: int) -> tuple[bool, str]:
    """(done, message) for the Triton Deployment serving `plan_hash`."""
    if deployment is None:
        return False, "creating the Triton Deployment"
    labels = deployment["metadata"].get("labels") or {}
    if labels.get(HASH_LABEL) != short_hash(plan_hash):
        return False, "rolling out the new model"
    meta_generation = deployment["metadata"].get("generation", 0)
    state = deployment.get("status") or {}
    if state.get("observedGeneration", 0) < meta_generation:
        return False, "rolling out the new model"
    for condition in state.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == (
            "ProgressDeadlineExceeded"
        ):
            return False, f"Triton did not become ready: {condition.get('message', '')}"
    updated = state.get("updatedReplicas", 0)
    available = state.get("availableReplicas", 0)
    total = state.get("replicas", 0)
    if updated >= replicas and available >= replicas and total == updated:
        return True, f"{available}/{replicas} Triton replicas ready"
    return False, f"{available}/{replicas} Triton replicas ready, {updated} updated"


def _unschedulable(pods: list[Obj]) -> str | None:
    """The scheduler's reason for a pending Triton pod, if one is stuck."""
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                return str(condition.get("message", "")).split(" preemption:")[0]
    return None


def _init_failure(pods: list[Obj]) -> str | None:
    """Why a Triton pod's init container (the model's check or fetch) failed, if one did: the
    pod cannot start until the user or the platform team acts (a changed store, missing
    credentials)."""
    for pod in pods:
        for init in (pod.get("status") or {}).get("initContainerStatuses") or []:
            state = init.get("state") or {}
            ended = state.get("terminated") or (init.get("lastState") or {}).get("terminated")
            if ended and ended.get("exitCode"):
                detail = (ended.get("message") or "").strip().splitlines()
                last = detail[-1] if detail else f"exit code {ended['exitCode']}"
                return f"init container {init.get('name')} failed: {last}"
    return None


def _serving_children(
    decision: Decision,
    prepared: Prepared,
    observed: Observed,
    config: OperatorConfig,
    published: Published,
    status: _Status,
    *,
    promoted: str | None,
    promoting: bool = False,
    revision: bool = True,
) -> None:
    """The admin Secret, the Services, the current plan's revision (unless `revision` is off)
    and the PDB, written unless the revision already carries the digest of exactly these (a
    child event then needs no writes; the periodic look writes them all again, which repairs
    what someone changed by hand). The clients' Service exists once a revision is `promoted`;
    the revision it selects is left out of the digest, so `promoting` rewrites the Service alone
    and the revision sees no change (and sends no event)."""
    body, resource = prepared.body, prepared.resource
    secret = _owned(build_admin_secret(resource), body)
    candidate = _owned(build_candidate_service(resource, prepared.plan_hash), body)
    service = _owned(build_service(resource, promoted), body) if promoted else None
    deployment = _owned(
        build_deployment(
            resource, prepared.plan, checkpoint=published.checkpoint,
            runtime=published.serving_runtime or status.previous.serving_runtime, config=config,
            manifest_digest=published.manifest_digest or status.previous.manifest_digest,
        ),
        body,
    )  # fmt: skip
    pdb = build_pdb(resource)
    # The clients' Service as written for any revision: its type and ports count, not which
    # revision it selects.
    desired = [secret, candidate, build_service(resource, ""), deployment, pdb]
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]
    deployment["metadata"].setdefault("annotations", {})[APPLIED_ANNOTATION] = digest
    applied = ((observed.deployment or {}).get("metadata") or {}).get("annotations") or {}
    if revision and applied.get(APPLIED_ANNOTATION) == digest and not observed.resync:
        if promoting and service:
            decision.apply.append(service)
        return
    decision.secrets.append(secret)
    decision.apply += [candidate, *([service] if service else [])]
    if revision:
        decision.apply.append(deployment)
    if pdb:
        decision.apply.append(_owned(pdb, body))
    else:
        decision.delete.append(("PodDisruptionBudget", service_name(resource.metadata.name)))


def _keep_previous_endpoint(status: _Status, prepared: Prepared) -> str:
    """While a new revision is checked (or was refused), clients keep the promoted one: its
    endpoints stay in status. Returns a clause that says so, or ''."""
    serving = status.previous.serving_plan_hash
    if not serving:
        return ""
    endpoints = endpoints_of(prepared.resource)
    status.new.endpoint, status.new.endpoints = endpoints.http, endpoints
    return f"; plan {short_hash(serving)} keeps serving"


def _carry_serving_metrics(status: _Status, plan_hash: str) -> None:
    """What the smoke test and the served-model evaluation measured on this plan's revision:
    kept while the plan stays (the published metrics hold neither)."""
    previous = status.previous.metrics
    if previous is None or status.previous.plan_hash != plan_hash:
        return
    metrics = status.new.metrics or MetricsStatus()
    metrics.latency_ms = metrics.latency_ms or previous.latency_ms
    metrics.served = previous.served
    metrics.performance = previous.performance
    status.new.metrics = metrics


def _check_failed(
    status: _Status, prepared: Prepared, job: Obj | None, check: JobView | None
) -> bool:
    """Whether the current plan's revision failed its served-model evaluation (`check`, the
    view of `job`); if so it is taken down, never promoted, and status says why. The failed
    check Job is the record."""
    if job is None or check is None or check.state != "Failed":
        return False
    _record_check(status, check.result)
    why = check.message
    if check.reason == "DeadlineExceeded":
        why = CHECK_DEADLINE_MESSAGE
    message = (
        f"plan {short_hash(prepared.plan_hash)} was not promoted: {why}"
        f"{_keep_previous_endpoint(status, prepared)}; change the spec, or delete Job "
        f"{job['metadata']['name']} to evaluate it again"
    )
    status.condition(SERVING_VALIDATED, "False", check.reason, message)
    status.stalled("Failed", check.reason, message)
    return True


def _record_check(status: _Status, result: JobResult | None) -> None:
    if result is None or result.serving is None:
        return
    metrics = status.new.metrics or MetricsStatus()
    metrics.served = [ServedTaskStatus.from_task(t) for t in result.serving.tasks] or None
    metrics.performance = [
        ServedLevelStatus.from_level(level) for level in result.serving.performance
    ] or None
    status.new.metrics = metrics


def _serving_check(
    decision: Decision, status: _Status, prepared: Prepared, observed: Observed,
    config: OperatorConfig, check: JobView | None,
) -> bool:  # fmt: skip
    """Run the served-model evaluation of the current plan's revision (`check`: the view of its
    Job, once there is one); True once it passed."""
    resource, plan = prepared.resource, prepared.plan
    job = observed.check_job
    if job is None or check is None:
        decision.create += [
            # Absent when the plan was published before (no optimization Job made it).
            _owned(build_plan_configmap(resource, plan), prepared.body),
            _owned(build_serving_check_job(resource, plan, config), prepared.body),
        ]
        decision.delete += [("Job", name) for name in observed.other_checks]
        message = "evaluating the new revision as served"
    else:
        view = check
        if view.state == "Succeeded" and view.result is None:
            # Exit 0 alone is not a verdict (a wrong image or command exits 0 too).
            message = (
                f"Job {job['metadata']['name']} succeeded but left no readable result: the "
                "new revision is not promoted; check the job image"
                + _keep_previous_endpoint(status, prepared)
            )
            status.condition(SERVING_VALIDATED, "False", "ResultMissing", message)
            status.stalled("Failed", "ResultMissing", message)
            return False
        if view.state == "Succeeded":
            _record_check(status, view.result)
            status.condition(
                SERVING_VALIDATED, "True", "ServingValidated", _validated_message(view.result)
            )
            return True
        message = "evaluating the new revision as served"
        if view.state != "Running":
            message = f"{message}: {view.message}"
        if view.state == "Blocked":
            status.stalled("Deploying", view.reason, message + _keep_previous_endpoint(
                status, prepared))  # fmt: skip
            return False
    status.condition(SERVING_VALIDATED, "Unknown", "Evaluating", message)
    status.working("Deploying", "EvaluatingServing", message + _keep_previous_endpoint(
        status, prepared))  # fmt: skip
    decision.requeue_after = config.poll_seconds
    return False


def _validated_message(result: JobResult | None) -> str:
    serving = result.serving if result else None
    if serving is None:
        return "the served-model evaluation passed"
    parts = [
        f"{t.name} {t.metric} {t.served:.3f} served, {t.in_process:.3f} in process"
        for t in serving.tasks
        if t.served is not None
    ]
    if serving.performance:
        best = max(serving.performance, key=lambda level: level.output_tokens_per_second)
        parts.append(f"{best.output_tokens_per_second:.1f} tok/s at concurrency {best.concurrency}")
    return "served-model evaluation passed: " + ("; ".join(parts) or "nothing to score")


def _serve(
    status: _Status,
    prepared: Prepared,
    observed: Observed,
    config: OperatorConfig,
    published: Published,
) -> Decision:
    """Artifacts are published: roll out the plan's Triton revision, check it through the
    candidate Service (smoke test, then the served-model evaluation when the spec asks), and
    promote it to the clients' Service. Until then the promoted revision keeps serving; a
    revision that fails its evaluation is taken down and the promoted one keeps serving."""
    resource, plan_hash = prepared.resource, prepared.plan_hash
    serving = resource.spec.serving
    decision = Decision(status={})
    promoted = status.previous.serving_plan_hash
    _carry_serving_metrics(status, plan_hash)
    if promoted == plan_hash or serving.replicas == 0:
        _serving_children(
            decision, prepared, observed, config, published, status, promoted=plan_hash
        )
        if serving.replicas == 0:
            status.condition(DEPLOYED, "True", "ScaledToZero", "serving is scaled to 0 replicas")
            status.ready("ScaledToZero", "published; serving is scaled to 0 replicas")
            return decision
        return _serving_promoted(decision, status, prepared, observed, config)
    job = observed.check_job
    check = view_job(job, observed.check_job_pods) if job else None
    if _check_failed(status, prepared, job, check):
        _serving_children(
            decision, prepared, observed, config, published, status,
            promoted=promoted, revision=False,
        )  # fmt: skip
        decision.delete.append(("Deployment", deployment_name(resource.metadata.name, plan_hash)))
        return decision
    passed = (
        _revision_ready(decision, status, prepared, observed, config)
        and (
            status.new.smoke_tested_plan_hash == plan_hash
            or _smoke_tested(decision, status, prepared, observed, config)
        )
        and (
            not needs_serving_check(prepared.plan)
            or _serving_check(decision, status, prepared, observed, config, check)
        )
    )
    # Promotion: the clients' Service selects this revision, and the others go.
    _serving_children(
        decision, prepared, observed, config, published, status,
        promoted=plan_hash if passed else promoted, promoting=passed,
    )  # fmt: skip
    if not passed:
        return decision
    status.new.serving_plan_hash = plan_hash
    return _ready(decision, status, prepared, observed)


def _serving_promoted(
    decision: Decision, status: _Status, prepared: Prepared, observed: Observed,
    config: OperatorConfig,
) -> Decision:  # fmt: skip
    """The current plan's revision is what clients get: Ready once it is rolled out."""
    if not _revision_ready(decision, status, prepared, observed, config):
        return decision
    return _ready(decision, status, prepared, observed)


def _ready(decision: Decision, status: _Status, prepared: Prepared, observed: Observed) -> Decision:
    """The promoted revision is rolled out: Ready, with its endpoints."""
    endpoints = endpoints_of(prepared.resource)
    status.new.endpoint, status.new.endpoints = endpoints.http, endpoints
    # A revision promoted before a restart, or a rollout of a changed pod template.
    decision.delete += [("Deployment", name) for name in observed.other_revisions]
    smoke = prepared.resource.spec.serving.smoke_test
    reason = "Deployed" if smoke is not None and not smoke.enabled else "SmokeTestPassed"
    detail = " (smoke test disabled)" if reason == "Deployed" else ""
    status.ready(reason, f"serving at {endpoints.http}{detail}")
    return decision


def _revision_ready(
    decision: Decision, status: _Status, prepared: Prepared, observed: Observed,
    config: OperatorConfig,
) -> bool:  # fmt: skip
    """Whether the current plan's revision is rolled out; if not, say why in status."""
    replicas = prepared.resource.spec.serving.replicas
    done, message = _rollout(observed.deployment, prepared.plan_hash, replicas)
    if done:
        status.condition(DEPLOYED, "True", "RolledOut", message)
        return True
    decision.requeue_after = config.poll_seconds
    failed = _init_failure(observed.serving_pods)
    if failed:
        message = f"Triton cannot start: {failed}" + _keep_previous_endpoint(status, prepared)
        status.condition(DEPLOYED, "False", "TritonInitFailed", message)
        status.stalled("Deploying", "TritonInitFailed", message)
        return False
    waiting = _unschedulable(observed.serving_pods)
    if waiting:
        message = f"{message}; Triton cannot be scheduled: {waiting}"
    message += _keep_previous_endpoint(status, prepared)
    status.condition(DEPLOYED, "False", "RollingOut", message)
    if message.startswith("Triton did not become ready"):
        status.stalled("Deploying", "TritonNotReady", message)
    else:
        status.working("Deploying", "RollingOut", message)
    return False


def _smoke_tested(
    decision: Decision, status: _Status, prepared: Prepared, observed: Observed,
    config: OperatorConfig,
) -> bool:  # fmt: skip
    """Send the smoke request to the new revision (through the candidate Service), or read its
    answer; True once it passed (or the spec turned it off)."""
    resource, plan_hash = prepared.resource, prepared.plan_hash
    serving = resource.spec.serving
    smoke = serving.smoke_test
    if smoke is not None and not smoke.enabled:
        return True
    if observed.smoke is None or observed.smoke.plan_hash != plan_hash:
        decision.smoke = SmokeRequest(
            endpoint=config.smoke_endpoint or candidate_http(resource),
            model_name=serving.model_name,
            prompt=smoke.prompt if smoke else "The capital of France is",
            max_tokens=smoke.max_tokens if smoke else 16,
            plan_hash=plan_hash,
        )
        status.working(
            "Deploying",
            "SmokeTesting",
            "sending a generation request to the new revision"
            + _keep_previous_endpoint(status, prepared),
        )
        return False
    if not observed.smoke.ok:
        message = f"Triton is up but the smoke test failed: {observed.smoke.message}"
        status.condition(SMOKE_TESTED, "False", "SmokeTestFailed", observed.smoke.message)
        status.working(
            "Deploying", "SmokeTestFailed", message + _keep_previous_endpoint(status, prepared)
        )
        decision.requeue_after = max(config.poll_seconds, 30.0)
        return False
    status.condition(SMOKE_TESTED, "True", "SmokeTestPassed", observed.smoke.message)
    status.new.smoke_tested_plan_hash = plan_hash
    if observed.smoke.latency_ms is not None:
        metrics = status.new.metrics or MetricsStatus()
        metrics.latency_ms = round(observed.smoke.latency_ms, 1)
        status.new.metrics = metrics
    return True


def decide(prepared: Prepared, observed: Observed, config: OperatorConfig, now: str) -> Decision:
    """The whole reconcile decision for a resource that compiled."""
    body, plan = prepared.body, prepared.plan
    plan_hash = prepared.plan_hash
    status = _Status(body, now)
    new = status.new
    new.plan_hash = plan_hash
    new.techniques = plan.summary()
    new.job_name = observed.job["metadata"]["name"] if observed.job else None
    if new.job_name is None and observed.published is None:
        new.job_name = job_name(prepared.resource.metadata.name, plan_hash)
    published = observed.published
    view = (
        view_job(observed.job, observed.job_pods, observed.job_create_failure)
        if observed.job
        else None
    )
    if published is None and view is not None and view.state == "Succeeded":
        published = Published.from_result(plan_hash, view.result)
    if published is None:
        published = _published_from_status(status.previous, status.previous_conditions, plan_hash)
    if published is None:
        decision = _job_in_progress(status, prepared, observed, config)
    else:
        _record_published(status, published)
        new.artifacts = published_artifacts(plan.output.store, published)
        reason = "CacheHit" if observed.job is None else "JobSucceeded"
        status.condition(OPTIMIZED, "True", reason, _optimized_message(published, plan_hash))
        new.progress = ProgressStatus(stage="done", percent=100)
        if prepared.resource.spec.serving.enabled:
            decision = _serve(status, prepared, observed, config, published)
        else:
            status.ready("Published", f"artifacts published under {plan.output.store}/{plan_hash}")
            decision = Decision(status={})
    decision.delete += [("Job", name) for name in observed.stale_jobs]
    decision.delete += [("ConfigMap", name) for name in observed.stale_configmaps]
    decision.status = status.build()
    decision.events = status.events()
    return decision


def _optimized_message(published: Published, plan_hash: str) -> str:
    metrics = published.metrics
    if metrics and metrics.degradation_percent is not None and metrics.perplexity is not None:
        return (
            f"plan {short_hash(plan_hash)} published: perplexity {metrics.baseline_perplexity:.2f}"
            f" → {metrics.perplexity:.2f} ({metrics.degradation_percent:+.1f}%)"
        )
    return f"plan {short_hash(plan_hash)} published"
