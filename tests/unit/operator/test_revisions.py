"""Serving revisions: a new plan's Triton starts beside the one serving, is checked through the
candidate Service (smoke test, then the served-model evaluation when the spec asks) and only then
promoted; a revision that fails its evaluation is taken down and the promoted one keeps serving."""

from __future__ import annotations

from typing import Any

import pytest

from kiln_jobs.errors import ExitCode
from kiln_jobs.manifest import JobResult, ServedLevel, ServedTask, ServingMeasurements
from kiln_operator.builders.serving_check import build_serving_check_job, check_job_name
from kiln_operator.conditions import find_condition
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import HASH_LABEL, deployment_name, short_hash
from kiln_operator.published import Published
from kiln_operator.reconcile import Decision, Observed, Prepared, SmokeResult, decide, prepare
from tests.unit.operator.conftest import job_obj, make_body, pod_obj
from tests.unit.operator.test_builders import assert_restricted

pytestmark = pytest.mark.unit
NOW = "2026-12-01T12:00:00Z"
Obj = dict[str, Any]
SERVING = "0123456789abcdef"  # the plan whose revision clients get now
TASKS = [{"name": "cloze", "source": "pvc://tasks/cloze", "metric": "exact_match"}]
CHECKED = {"tasks": TASKS, "served": {"maxDrop": 0.05}, "performance": {"concurrency": [1, 4]}}


def _prepared(config: OperatorConfig, **spec: Any) -> Prepared:
    prepared = prepare(make_body(**spec), config)
    assert isinstance(prepared, Prepared), prepared
    return prepared


def _serving_before(prepared: Prepared, **status: Any) -> None:
    """Status as it was with plan SERVING promoted, the new plan just recorded."""
    prepared.body["status"] = {
        "planHash": prepared.plan_hash,
        "servingPlanHash": SERVING,
        "smokeTestedPlanHash": SERVING,
        **status,
    }


def _rolled_out(prepared: Prepared) -> Obj:
    return {
        "metadata": {
            "name": deployment_name("smollm2", prepared.plan_hash),
            "generation": 1,
            "labels": {HASH_LABEL: short_hash(prepared.plan_hash)},
        },
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "availableReplicas": 1},
    }  # fmt: skip


def _observed(prepared: Prepared, **fields: Any) -> Observed:
    return Observed(
        published=Published(prepared.plan_hash),
        deployment=_rolled_out(prepared),
        other_revisions=[deployment_name("smollm2", SERVING)],
        **fields,
    )


def _cond(decision: Decision, kind: str) -> Obj:
    found = find_condition(decision.status["conditions"], kind)
    assert found is not None, f"no {kind} condition"
    return found


def _clients_service(decision: Decision) -> Obj | None:
    return next((o for o in decision.apply if o["metadata"]["name"] == "smollm2-triton"), None)


def _check_job(prepared: Prepared, config: OperatorConfig, result: JobResult | None) -> Observed:
    if result is None:
        return _observed(prepared, check_job=job_obj(check_job_name("smollm2", prepared.plan)))
    kind, code = ("Complete", 0) if result.ok else ("Failed", int(ExitCode.SERVING_REGRESSION))
    job = job_obj(
        check_job_name("smollm2", prepared.plan),
        conditions=[{"type": kind, "status": "True"}],
    )
    pod = pod_obj(
        phase="Succeeded" if result.ok else "Failed",
        terminated={"exitCode": code, "message": result.to_termination_message()},
    )
    return _observed(prepared, check_job=job, check_job_pods=[pod])


def _measured(prepared: Prepared, *, served: float) -> JobResult:
    passed = served >= 0.40 - 0.05
    task = ServedTask(name="cloze", metric="exact_match", in_process=0.40, served=served,
                      samples=40, passed=passed)  # fmt: skip
    level = ServedLevel(
        concurrency=4, requests=8, ttft_p50_ms=120.0, ttft_p95_ms=300.0, itl_p50_ms=40.0,
        output_tokens_per_second=95.5, requests_per_second=2.9,
    )  # fmt: skip
    return JobResult(
        ok=passed,
        plan_hash=prepared.plan_hash,
        reason=None if passed else "ServingRegression",
        message=None if passed else "the served model scores below the published one",
        serving=ServingMeasurements(tasks=[task], performance=[level]),
    )


def test_the_new_revision_starts_beside_the_one_serving(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    _serving_before(prepared)
    observed = Observed(published=Published(prepared.plan_hash))
    decision = decide(prepared, observed, config, NOW)
    deployment = next(o for o in decision.apply if o["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == deployment_name("smollm2", prepared.plan_hash)
    # Clients stay on the promoted revision; the candidate Service points at the new one.
    service = _clients_service(decision)
    assert service is not None and service["spec"]["selector"][HASH_LABEL] == short_hash(SERVING)
    candidate = next(o for o in decision.apply if o["metadata"]["name"].endswith("-candidate"))
    assert candidate["spec"]["selector"][HASH_LABEL] == short_hash(prepared.plan_hash)
    assert not decision.delete or all(kind != "Deployment" for kind, _ in decision.delete)
    assert decision.status["servingPlanHash"] == SERVING
    assert decision.status["endpoint"] == "http://smollm2-triton.team-a.svc:8000"
    assert "keeps serving" in _cond(decision, "Reconciling")["message"]


def test_a_smoke_tested_revision_is_promoted_and_the_old_one_goes(
    config: OperatorConfig,
) -> None:
    prepared = _prepared(config)
    _serving_before(prepared)
    observed = _observed(prepared)
    asked = decide(prepared, observed, config, NOW)
    assert asked.smoke is not None and "candidate" in asked.smoke.endpoint
    observed.smoke = SmokeResult(prepared.plan_hash, True, "ok", latency_ms=80.0)
    decision = decide(prepared, observed, config, NOW)
    service = _clients_service(decision)
    assert service is not None
    assert service["spec"]["selector"][HASH_LABEL] == short_hash(prepared.plan_hash)
    assert ("Deployment", deployment_name("smollm2", SERVING)) in decision.delete
    assert decision.status["servingPlanHash"] == prepared.plan_hash
    assert decision.status["phase"] == "Ready"
    assert find_condition(decision.status["conditions"], "ServingValidated") is None


def test_promotion_moves_the_service_alone(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    _serving_before(prepared)
    observed = _observed(prepared)
    written = decide(prepared, Observed(published=Published(prepared.plan_hash)), config, NOW)
    revision = next(o for o in written.apply if o["kind"] == "Deployment")
    # The rolled-out revision carries what was written; its smoke test passes.
    observed.deployment["metadata"]["annotations"] = revision["metadata"]["annotations"]
    observed.smoke = SmokeResult(prepared.plan_hash, True, "ok")
    decision = decide(prepared, observed, config, NOW)
    assert [o["metadata"]["name"] for o in decision.apply] == ["smollm2-triton"]
    assert not decision.secrets
    assert decision.status["servingPlanHash"] == prepared.plan_hash


def test_a_checked_revision_waits_for_its_evaluation_job(config: OperatorConfig) -> None:
    prepared = _prepared(config, evaluation=CHECKED)
    _serving_before(prepared)
    observed = _observed(prepared, smoke=SmokeResult(prepared.plan_hash, True, "ok"))
    decision = decide(prepared, observed, config, NOW)
    assert [o["kind"] for o in decision.create] == ["ConfigMap", "Job"]
    job = decision.create[1]
    assert job["metadata"]["name"] == check_job_name("smollm2", prepared.plan)
    assert decision.status["smokeTestedPlanHash"] == prepared.plan_hash
    assert decision.status["servingPlanHash"] == SERVING
    assert _cond(decision, "Reconciling")["reason"] == "EvaluatingServing"
    evaluating = _cond(decision, "ServingValidated")
    assert (evaluating["status"], evaluating["reason"]) == ("Unknown", "Evaluating")
    assert all(e.type == "Normal" for e in decision.events)
    service = _clients_service(decision)
    assert service is not None and service["spec"]["selector"][HASH_LABEL] == short_hash(SERVING)
    # The next look (a Job event) neither smoke-tests again nor creates a second Job.
    prepared.body["status"] = decision.status
    running = decide(prepared, _check_job(prepared, config, None), config, NOW)
    assert running.smoke is None and not running.create
    assert running.status["phase"] == "Deploying"


def test_a_passed_evaluation_promotes_with_its_measurements(config: OperatorConfig) -> None:
    prepared = _prepared(config, evaluation=CHECKED)
    _serving_before(prepared, smokeTestedPlanHash=None)
    prepared.body["status"]["smokeTestedPlanHash"] = prepared.plan_hash
    observed = _check_job(prepared, config, _measured(prepared, served=0.375))
    decision = decide(prepared, observed, config, NOW)
    assert decision.status["servingPlanHash"] == prepared.plan_hash
    assert decision.status["phase"] == "Ready"
    validated = _cond(decision, "ServingValidated")
    assert validated["status"] == "True"
    assert "cloze exact_match 0.375 served, 0.400 in process" in validated["message"]
    assert "95.5 tok/s at concurrency 4" in validated["message"]
    served = decision.status["metrics"]["served"]
    assert served == [{"name": "cloze", "metric": "exact_match", "inProcess": 0.4,
                       "served": 0.375, "samples": 40, "passed": True}]  # fmt: skip
    assert decision.status["metrics"]["performance"][0]["outputTokensPerSecond"] == 95.5
    assert ("Deployment", deployment_name("smollm2", SERVING)) in decision.delete
    # Kept on later reconciles, when the Job is no longer looked at.
    prepared.body["status"] = decision.status
    later = decide(prepared, Observed(published=Published(prepared.plan_hash),
                                      deployment=_rolled_out(prepared)), config, NOW)  # fmt: skip
    assert later.status["metrics"]["served"] == served
    assert later.status["phase"] == "Ready"


def test_a_serving_regression_keeps_the_previous_revision_serving(
    config: OperatorConfig,
) -> None:
    prepared = _prepared(config, evaluation=CHECKED)
    _serving_before(prepared)
    prepared.body["status"]["smokeTestedPlanHash"] = prepared.plan_hash
    observed = _check_job(prepared, config, _measured(prepared, served=0.20))
    decision = decide(prepared, observed, config, NOW)
    stalled = _cond(decision, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ServingRegression"
    assert f"plan {short_hash(SERVING)} keeps serving" in stalled["message"]
    assert "delete Job" in stalled["message"]
    assert _cond(decision, "ServingValidated")["reason"] == "ServingRegression"
    assert decision.status["phase"] == "Failed"
    assert decision.status["servingPlanHash"] == SERVING
    assert decision.status["endpoint"] == "http://smollm2-triton.team-a.svc:8000"
    assert decision.status["metrics"]["served"][0]["passed"] is False
    # The refused revision holds no GPU and takes no traffic; the serving one is untouched.
    assert ("Deployment", deployment_name("smollm2", prepared.plan_hash)) in decision.delete
    assert ("Deployment", deployment_name("smollm2", SERVING)) not in decision.delete
    assert not any(o["kind"] == "Deployment" for o in decision.apply)
    service = _clients_service(decision)
    assert service is None or service["spec"]["selector"][HASH_LABEL] == short_hash(SERVING)
    assert not decision.create and decision.smoke is None
    assert [e.reason for e in decision.events if e.type == "Warning"] == ["ServingRegression"]


def test_changed_thresholds_are_a_new_evaluation(config: OperatorConfig) -> None:
    strict = _prepared(config, evaluation=CHECKED)
    loose = _prepared(config, evaluation={**CHECKED, "served": {"maxDrop": 0.2}})
    assert strict.plan_hash == loose.plan_hash  # the artifacts are the same
    assert check_job_name("smollm2", strict.plan) != check_job_name("smollm2", loose.plan)
    assert check_job_name("smollm2", strict.plan).startswith(
        f"smollm2-check-{short_hash(strict.plan_hash)}-"
    )
    # The revision is evaluated again under the new thresholds; the earlier evaluation goes.
    _serving_before(loose, smokeTestedPlanHash=None)
    loose.body["status"]["smokeTestedPlanHash"] = loose.plan_hash
    earlier = check_job_name("smollm2", strict.plan)
    decision = decide(loose, _observed(loose, other_checks=[earlier]), config, NOW)
    assert [o["metadata"]["name"] for o in decision.create if o["kind"] == "Job"] == [
        check_job_name("smollm2", loose.plan)
    ]
    assert ("Job", earlier) in decision.delete


def test_the_evaluation_job_is_a_restricted_cpu_client(config: OperatorConfig) -> None:
    prepared = _prepared(config, evaluation=CHECKED)
    job = build_serving_check_job(prepared.resource, prepared.plan, config)
    pod = job["spec"]["template"]["spec"]
    assert_restricted(pod)
    (container,) = pod["containers"]
    assert container["command"] + container["args"] == [
        *config.job_command, "validate-serving", "--plan", "/etc/kiln/plan/plan.json",
        "--http", "http://smollm2-triton-candidate.team-a.svc:8000",
        "--workdir", "/tmp/work", "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    assert "nvidia.com/gpu" not in str(container["resources"])
    # The store is read, never written; the task's own claim is mounted too.
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims["tasks"] is True
    assert all(claims.values())
    assert job["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"]
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "validate"
