"""The reconcile decision, branch by branch, without any server."""

from __future__ import annotations

from typing import Any

import pytest

from kiln_jobs.manifest import CheckpointInfo, JobResult, Metrics, Progress
from kiln_operator.conditions import find_condition
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import HASH_LABEL, deployment_name, job_name, short_hash
from kiln_operator.published import Published
from kiln_operator.reconcile import (
    Decision,
    Observed,
    Prepared,
    SmokeResult,
    decide,
    decide_invalid,
    prepare,
)
from tests.unit.operator.conftest import (
    job_obj,
    make_body,
    pod_obj,
    succeeded_result,
)

pytestmark = pytest.mark.unit
NOW = "2026-11-25T12:00:00Z"
Obj = dict[str, Any]


def _prepared(config: OperatorConfig, **spec: Any) -> Prepared:
    prepared = prepare(make_body(**spec), config)
    assert isinstance(prepared, Prepared), prepared
    return prepared


def _cond(decision: Decision, kind: str) -> Obj:
    found = find_condition(decision.status["conditions"], kind)
    assert found is not None, f"no {kind} condition"
    return found


def _deployment(prepared: Prepared, *, available: int = 1, ready_hash: bool = True) -> Obj:
    hash_label = short_hash(prepared.plan_hash) if ready_hash else "0000000000"
    return {
        "metadata": {
            "name": deployment_name("smollm2", prepared.plan_hash),
            "generation": 2,
            "labels": {HASH_LABEL: hash_label},
        },
        "status": {
            "observedGeneration": 2,
            "replicas": 1,
            "updatedReplicas": 1,
            "availableReplicas": available,
        },
    }


def test_invalid_spec_is_stalled_with_every_problem(config: OperatorConfig) -> None:
    body = make_body(techniques=[{"ptq": {"format": "fp3"}}], engine={"tensorParallel": 0})
    problems = prepare(body, config)
    assert isinstance(problems, list)
    decision = decide_invalid(body, problems, NOW)
    stalled = _cond(decision, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "spec.techniques[0].ptq.format" in stalled["message"]
    assert "spec.engine.tensorParallel" in stalled["message"]
    assert decision.status["phase"] == "Failed"
    assert decision.status["observedGeneration"] == 3
    assert not decision.create and not decision.apply
    assert [e.type for e in decision.events] == ["Warning"]


def test_file_uri_in_cluster_is_a_stalled_compile_error(config: OperatorConfig) -> None:
    problems = prepare(make_body(model={"source": "file:///models/x"}), config)
    assert isinstance(problems, list) and problems[0].path == "spec.model.source"


def test_first_reconcile_creates_plan_configmap_and_job(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    decision = decide(prepared, Observed(), config, NOW)
    kinds = [o["kind"] for o in decision.create]
    assert kinds == ["ConfigMap", "Job"]
    job = decision.create[1]
    assert job["metadata"]["name"] == job_name("smollm2", prepared.plan_hash)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert decision.status["phase"] == "Pending"
    assert decision.status["planHash"] == prepared.plan_hash
    assert decision.status["techniques"] == "ptq(fp8)"
    assert _cond(decision, "Reconciling")["status"] == "True"
    assert _cond(decision, "Ready")["status"] == "False"
    assert decision.requeue_after == config.poll_seconds


def test_same_inputs_same_decision(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    first = decide(prepared, Observed(), config, NOW)
    second = decide(prepared, Observed(), config, NOW)
    assert first.create == second.create and first.status == second.status


def test_missing_claim_waits_without_a_job(config: OperatorConfig) -> None:
    decision = decide(_prepared(config), Observed(missing_claims=["artifacts"]), config, NOW)
    assert not decision.create
    assert _cond(decision, "Reconciling")["reason"] == "WaitingForVolume"
    assert "artifacts" in _cond(decision, "Reconciling")["message"]


def test_concurrency_limit_queues(config: OperatorConfig) -> None:
    limited = config.model_copy(update={"max_running_jobs": 2})
    decision = decide(_prepared(limited), Observed(running_jobs=2), limited, NOW)
    assert not decision.create and decision.status["phase"] == "Queued"
    assert _cond(decision, "Reconciling")["reason"] == "WaitingForSlot"


def test_kueue_suspended_job_is_queued(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = Observed(job=job_obj("j", suspend=True))
    decision = decide(prepared, observed, config, NOW)
    assert decision.status["phase"] == "Queued"
    assert _cond(decision, "Reconciling")["reason"] == "Queued"
    assert not decision.create


def test_unschedulable_pod_says_why(config: OperatorConfig) -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    observed = Observed(
        job=job_obj("j"), job_pods=[pod_obj(phase="Pending", unschedulable=message)]
    )
    decision = decide(_prepared(config), observed, config, NOW)
    assert decision.status["phase"] == "Queued"
    reconciling = _cond(decision, "Reconciling")
    assert (
        reconciling["reason"] == "Unschedulable"
        and "Insufficient nvidia.com/gpu" in reconciling["message"]
    )


def test_missing_secret_is_stalled_until_it_appears(config: OperatorConfig) -> None:
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}
    observed = Observed(job=job_obj("j"), job_pods=[pod_obj(phase="Pending", waiting=waiting)])
    decision = decide(_prepared(config), observed, config, NOW)
    stalled = _cond(decision, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "CreateContainerConfigError"
    assert 'secret "hf-token" not found' in stalled["message"]
    assert decision.requeue_after is not None  # it may heal when the Secret is created


def test_running_job_reports_progress(config: OperatorConfig) -> None:
    progress = Progress(stage="calibrate", percent=42.4, message="batch 27/64", overall=18.6)
    observed = Observed(job=job_obj("j"), job_pods=[pod_obj()], progress=progress)
    decision = decide(_prepared(config), observed, config, NOW)
    assert decision.status["phase"] == "Optimizing"
    assert decision.status["progress"] == {
        "stage": "calibrate",
        "percent": 18,
        "message": "batch 27/64",
    }
    assert "calibrate" in _cond(decision, "Reconciling")["message"]


def test_failed_job_carries_the_runner_reason(config: OperatorConfig) -> None:
    result = JobResult(
        ok=False,
        plan_hash="h",
        reason="AccuracyGateFailed",
        message="perplexity rose 57.4%, more than the 5% allowed",
    )
    failed = job_obj(
        "j", conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
    )
    pod = pod_obj(
        phase="Failed", terminated={"exitCode": 5, "message": result.to_termination_message()}
    )
    decision = decide(_prepared(config), Observed(job=failed, job_pods=[pod]), config, NOW)
    assert decision.status["phase"] == "Failed"
    stalled = _cond(decision, "Stalled")
    assert stalled["reason"] == "AccuracyGateFailed" and "57.4%" in stalled["message"]
    assert _cond(decision, "Optimized")["status"] == "False"
    assert _cond(decision, "Reconciling")["status"] == "False"
    assert any(e.type == "Warning" and e.reason == "AccuracyGateFailed" for e in decision.events)


def test_deadline_exceeded_says_what_to_change(config: OperatorConfig) -> None:
    failed = job_obj(
        "j", conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
    )
    decision = decide(_prepared(config), Observed(job=failed), config, NOW)
    assert "spec.scheduling.timeout" in _cond(decision, "Stalled")["message"]


def test_oom_killed_pod_says_what_to_change(config: OperatorConfig) -> None:
    failed = job_obj(
        "j", conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    )
    pod = pod_obj(phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    decision = decide(_prepared(config), Observed(job=failed, job_pods=[pod]), config, NOW)
    stalled = _cond(decision, "Stalled")
    assert stalled["reason"] == "OOMKilled" and "spec.resources.memory" in stalled["message"]


def _succeeded(prepared: Prepared) -> Observed:
    done = job_obj(
        job_name("smollm2", prepared.plan_hash), conditions=[{"type": "Complete", "status": "True"}]
    )
    result = succeeded_result(prepared.plan_hash)
    pod = pod_obj(phase="Succeeded", terminated={"exitCode": 0, "message": result})
    return Observed(job=done, job_pods=[pod])


def test_succeeded_job_rolls_out_triton(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    decision = decide(prepared, _succeeded(prepared), config, NOW)
    assert [o["kind"] for o in decision.apply] == ["Service", "Deployment"]
    assert [o["kind"] for o in decision.secrets] == ["Secret"]
    assert ("PodDisruptionBudget", "smollm2-triton") in decision.delete
    assert decision.status["phase"] == "Deploying"
    assert decision.status["metrics"]["degradationPercent"] == 1.85
    assert decision.status["metrics"]["compressionRatio"] == 1.5
    assert _cond(decision, "Optimized")["reason"] == "JobSucceeded"
    assert "23.76 → 24.20" in _cond(decision, "Optimized")["message"]
    assert not decision.create


def test_cache_hit_serves_without_a_job(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    published = Published(prepared.plan_hash, metrics=Metrics(degradation_percent=2.0))
    decision = decide(prepared, Observed(published=published), config, NOW)
    assert not decision.create
    assert _cond(decision, "Optimized")["reason"] == "CacheHit"
    assert any(o["kind"] == "Deployment" for o in decision.apply)


def test_checkpoint_is_described_on_the_deployment(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    checkpoint = CheckpointInfo(
        quant_algo="FP8", kv_cache_quant_algo="FP8", tools={"modelopt": "0.47.0"}
    )
    observed = Observed(published=Published(prepared.plan_hash, checkpoint=checkpoint))
    decision = decide(prepared, observed, config, NOW)
    deployment = next(o for o in decision.apply if o["kind"] == "Deployment")
    assert deployment["metadata"]["labels"]["kiln.dev/quant-algo"] == "FP8"
    assert deployment["metadata"]["annotations"]["kiln.dev/tool-modelopt"] == "0.47.0"
    assert decision.status["checkpoint"]["quantAlgo"] == "FP8"


@pytest.mark.parametrize("backend", ["pytorch", "tensorrt-llm", "none"])
def test_the_smoke_test_asks_for_the_resources_model_on_every_backend(
    config: OperatorConfig, backend: str
) -> None:
    prepared = _prepared(config, engine={"backend": backend}, serving={"modelName": "assistant"})
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared)
    decision = decide(prepared, observed, config, NOW)
    assert decision.smoke is not None
    # The new revision is tested before clients see it: through the candidate Service.
    assert decision.smoke.endpoint == "http://smollm2-triton-candidate.team-a.svc:8000"
    assert decision.smoke.model_name == "assistant"
    assert _cond(decision, "Deployed")["status"] == "True"
    assert decision.status["phase"] == "Deploying"
    assert decision.status["endpoints"] is None  # nothing is promoted yet
    observed.smoke = SmokeResult(prepared.plan_hash, True, "ok", latency_ms=90.0)
    assert decide(prepared, observed, config, NOW).status["endpoints"] == {
        "http": "http://smollm2-triton.team-a.svc:8000",
        "grpc": "smollm2-triton.team-a.svc:8001",
        "openai": "http://smollm2-triton.team-a.svc:9000/v1",
        "model": "assistant",
    }


def test_a_job_that_succeeded_without_a_result_publishes_nothing(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = _succeeded(prepared)
    for pod in observed.job_pods:  # exit 0, no termination message (e.g. a wrong image)
        pod["status"]["containerStatuses"][0]["state"]["terminated"].pop("message")
    decision = decide(prepared, observed, config, NOW)
    assert not decision.apply and not decision.secrets
    optimized = _cond(decision, "Optimized")
    assert optimized["status"] == "False" and optimized["reason"] == "ResultMissing"
    assert "nothing was published" in optimized["message"]
    assert _cond(decision, "Stalled")["status"] == "True"
    assert decision.status["phase"] == "Failed"
    # A result for another plan is not this plan's either.
    observed = _succeeded(prepared)
    other = succeeded_result("another-plan")
    observed.job_pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = other
    assert _cond(decide(prepared, observed, config, NOW), "Optimized")["reason"] == "ResultMissing"


def test_the_served_draft_is_in_status(config: OperatorConfig) -> None:
    from kiln_jobs.manifest import Speculation

    prepared = _prepared(config)
    draft = Speculation(algorithm="eagle3", draft_dir="draft", max_draft_len=3, served=True)
    decision = decide(
        prepared, Observed(published=Published(prepared.plan_hash, speculation=draft)), config, NOW
    )
    assert decision.status["speculation"] == {
        "algorithm": "eagle3", "draftPath": "draft", "maxDraftLen": 3, "served": True,
        "reason": None,  # a merge patch: clears a reason an earlier plan left
    }  # fmt: skip


def test_smoke_endpoint_override(config: OperatorConfig) -> None:
    overridden = config.model_copy(update={"smoke_endpoint": "http://127.0.0.1:18000"})
    prepared = _prepared(overridden)
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared)
    assert decide(prepared, observed, overridden, NOW).smoke.endpoint == "http://127.0.0.1:18000"  # type: ignore[union-attr]


def test_passed_smoke_test_is_ready(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared)
    observed.smoke = SmokeResult(prepared.plan_hash, True, "'Hi' → 'there'", latency_ms=812.3)
    decision = decide(prepared, observed, config, NOW)
    assert decision.status["phase"] == "Ready"
    ready = _cond(decision, "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 3
    assert _cond(decision, "Reconciling")["status"] == "False"
    assert _cond(decision, "Stalled")["status"] == "False"
    assert decision.status["servingPlanHash"] == prepared.plan_hash
    assert decision.status["endpoint"] == "http://smollm2-triton.team-a.svc:8000"
    assert decision.status["metrics"]["latencyMs"] == 812.3
    assert decision.smoke is None


def test_ready_resource_is_not_smoke_tested_again(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    prepared.body["status"] = {"servingPlanHash": prepared.plan_hash}
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared)
    decision = decide(prepared, observed, config, NOW)
    assert decision.smoke is None and decision.status["phase"] == "Ready"


def test_failed_smoke_test_is_retried(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared)
    observed.smoke = SmokeResult(prepared.plan_hash, False, "connection refused")
    decision = decide(prepared, observed, config, NOW)
    assert _cond(decision, "SmokeTested")["status"] == "False"
    assert _cond(decision, "Ready")["status"] == "False"
    assert decision.requeue_after and decision.requeue_after >= 30


def test_rollout_of_a_new_plan_is_not_ready(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared, ready_hash=False)
    decision = decide(prepared, observed, config, NOW)
    assert decision.status["phase"] == "Deploying" and decision.smoke is None
    assert _cond(decision, "Deployed")["reason"] == "RollingOut"


def test_triton_that_never_gets_ready_is_stalled(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = _succeeded(prepared)
    deployment = _deployment(prepared, available=0)
    deployment["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "x" has timed out progressing.',
        }
    ]
    observed.deployment = deployment
    decision = decide(prepared, observed, config, NOW)
    assert _cond(decision, "Stalled")["reason"] == "TritonNotReady"


def test_serving_disabled_is_ready_once_published(config: OperatorConfig) -> None:
    prepared = _prepared(config, serving={"enabled": False})
    decision = decide(prepared, _succeeded(prepared), config, NOW)
    assert decision.status["phase"] == "Ready" and not decision.apply
    assert _cond(decision, "Ready")["reason"] == "Published"


def test_scaled_to_zero(config: OperatorConfig) -> None:
    prepared = _prepared(config, serving={"replicas": 0})
    decision = decide(prepared, _succeeded(prepared), config, NOW)
    assert decision.status["phase"] == "Ready" and decision.smoke is None


def test_replicas_above_one_get_a_pdb(config: OperatorConfig) -> None:
    prepared = _prepared(config, serving={"replicas": 3})
    decision = decide(prepared, _succeeded(prepared), config, NOW)
    pdb = next(o for o in decision.apply if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert not any(kind == "PodDisruptionBudget" for kind, _ in decision.delete)


def test_stale_children_of_an_old_plan_are_deleted(config: OperatorConfig) -> None:
    observed = Observed(stale_jobs=["smollm2-opt-old"], stale_configmaps=["smollm2-plan-old"])
    decision = decide(_prepared(config), observed, config, NOW)
    assert ("Job", "smollm2-opt-old") in decision.delete
    assert ("ConfigMap", "smollm2-plan-old") in decision.delete


def test_record_in_status_survives_a_deleted_job(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    first = decide(prepared, _succeeded(prepared), config, NOW)
    prepared.body["status"] = first.status
    again = decide(prepared, Observed(), config, NOW)
    assert not again.create, "the Job is gone but status says the plan is published"
    assert again.status["metrics"]["degradationPercent"] == 1.85


def test_transition_time_is_kept_while_status_holds(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    first = decide(prepared, Observed(), config, "2026-11-25T10:00:00Z")
    prepared.body["status"] = first.status
    second = decide(
        prepared,
        Observed(job=job_obj("j"), job_pods=[pod_obj(phase="Pending")]),
        config,
        "2026-11-25T11:00:00Z",
    )
    assert _cond(second, "Reconciling")["lastTransitionTime"] == "2026-11-25T10:00:00Z"
    assert second.events == [] or all(e.type == "Normal" for e in second.events)


def test_plan_change_is_a_new_job_serving_only_change_is_not(config: OperatorConfig) -> None:
    base = _prepared(config)
    more_replicas = _prepared(config, serving={"replicas": 4})
    new_format = _prepared(config, techniques=[{"ptq": {"format": "int8_sq"}}])
    assert more_replicas.plan_hash == base.plan_hash
    assert new_format.plan_hash != base.plan_hash


def test_rollout_stuck_on_scheduling_says_why(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared, available=0)
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes"
    observed.serving_pods = [pod_obj(phase="Pending", unschedulable=message)]
    decision = decide(prepared, observed, config, NOW)
    reconciling = _cond(decision, "Reconciling")
    assert "Triton cannot be scheduled: 0/3 nodes are available" in reconciling["message"]
    assert "preemption" not in reconciling["message"]


def test_a_new_plan_is_not_published_while_its_job_runs(config: OperatorConfig) -> None:
    from kiln_operator.kube import merge_patched

    # Plan H1: published, served, Ready.
    first = _prepared(config)
    served = _succeeded(first)
    served.deployment = _deployment(first)
    served.smoke = SmokeResult(first.plan_hash, True, "'Hi' → 'there'")
    ready = decide(first, served, config, NOW)
    assert ready.status["phase"] == "Ready"
    # The recipe changes (plan H2) while the status still tells H1's story; H2's Job runs.
    body = make_body(techniques=[{"ptq": {"format": "int8_sq"}}])
    body["status"] = merge_patched({}, ready.status)
    running = Observed(job=job_obj("j"), job_pods=[pod_obj()], deployment=_deployment(first))
    for _ in range(2):  # the reconcile that writes the new planHash, and the one after it
        second = prepare(body, config)
        assert isinstance(second, Prepared) and second.plan_hash != first.plan_hash
        decision = decide(second, running, config, NOW)
        assert _cond(decision, "Optimized")["status"] == "False"
        assert not decision.apply and not decision.smoke  # Triton keeps serving H1, untouched
        assert _cond(decision, "Ready")["status"] == "False"
        assert decision.status["phase"] == "Optimizing"
        assert decision.status["servingPlanHash"] == first.plan_hash
        body["status"] = merge_patched(body["status"], decision.status)


def test_a_child_the_api_server_refuses_is_stalled_with_its_message(
    config: OperatorConfig,
) -> None:
    from kiln_operator.reconcile import decide_rejected

    prepared = _prepared(config)
    decision = decide(prepared, Observed(), config, NOW)
    message = "the API server refused Job smollm2-opt-1: spec.activeDeadlineSeconds: Invalid"
    rejected = decide_rejected(prepared.body, decision, message, NOW)
    stalled = _cond(rejected, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ChildRejected"
    assert message in stalled["message"] and "change the spec" in stalled["message"]
    assert rejected.status["phase"] == "Failed"
    assert rejected.status["planHash"] == prepared.plan_hash  # what decide found is kept
    assert [e.reason for e in rejected.events] == ["ChildRejected"]


def test_a_model_that_fails_its_check_before_serving_is_stalled(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    observed = _succeeded(prepared)
    observed.deployment = _deployment(prepared, available=0)
    message = (
        "kiln: UserError: checkpoint/model.safetensors: its sha256 does not match the manifest;"
        " the published plan was changed after publishing, so it is not served"
    )
    observed.serving_pods = [
        {
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": "verify-model",
                        "state": {"terminated": {"exitCode": 2, "message": message}},
                    }
                ],
            }
        }
    ]
    decision = decide(prepared, observed, config, NOW)
    stalled = _cond(decision, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "TritonInitFailed"
    assert "verify-model failed" in stalled["message"] and "does not match" in stalled["message"]
    assert decision.smoke is None
