"""The Job that evaluates a plan's Triton revision as served, before clients see it.

`evaluation.served` scores the Plan's generative tasks again through the served endpoint and
`evaluation.performance` measures latency and throughput; both read what a runtime does to the
published model (fused scales, kernels, KV-cache precision), which the optimization Job cannot
see. The Job is a client: no GPU, the job image, the plan's ConfigMap for its input, the store
mounted read-only (or its credentials) for the published manifest and tokenizer. It reaches the
revision through the candidate Service and says what it measured in its termination message.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kiln_jobs.contract import PLAN_FILE, PLAN_MOUNT, TERMINATION_LOG
from kiln_jobs.plan import Plan
from kiln_operator.api import ModelOptimization
from kiln_operator.builders.common import (
    kiln_container,
    pvc_mounts,
    restricted_pod,
    scratch_volumes,
)
from kiln_operator.builders.job import job_env, plan_volume, pod_failure_policy
from kiln_operator.builders.serving import candidate_http
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import child_labels, serving_check_job_name

__all__ = [
    "CHECK_COMPONENT",
    "CHECK_DEADLINE_MESSAGE",
    "build_serving_check_job",
    "check_job_name",
    "needs_serving_check",
]

Obj = dict[str, Any]

CHECK_COMPONENT = "validate"
CHECK_CONTAINER = "validate"
# lm-eval, a tokenizer and the load generator; the model runs in Triton.
_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
# Tasks of a few hundred samples and a short concurrency ladder take minutes, not hours.
_DEADLINE_SECONDS = 2 * 3600
CHECK_DEADLINE_MESSAGE = (
    "the served-model evaluation ran past its 2 hours: lower the tasks' limit or "
    "evaluation.performance.requests"
)
_SCRATCH = "8Gi"


def needs_serving_check(plan: Plan) -> bool:
    """Whether a revision of `plan` is evaluated as served before it is promoted."""
    return plan.evaluation.served is not None or plan.evaluation.performance is not None


def check_job_name(resource_name: str, plan: Plan) -> str:
    """The check Job of `plan`'s revision under the evaluation the plan asks for now."""
    asked = plan.evaluation.model_dump_json(include={"served", "performance"})
    digest = hashlib.sha256(asked.encode()).hexdigest()
    return serving_check_job_name(resource_name, plan.hash(), digest)


def build_serving_check_job(resource: ModelOptimization, plan: Plan, config: OperatorConfig) -> Obj:
    """The batch/v1 Job that evaluates `plan`'s revision through the candidate Service."""
    name = resource.metadata.name
    plan_hash = plan.hash()
    scratch, scratch_mounts = scratch_volumes(_SCRATCH)
    claims, claim_mounts = pvc_mounts(plan, writable_store=False)
    env, env_from = job_env(resource, plan)
    plan_source, plan_mount = plan_volume(name, plan_hash)
    container = kiln_container(
        CHECK_CONTAINER,
        image=config.job_image,
        command=config.job_command,
        args=[
            *("validate-serving", "--plan", f"{PLAN_MOUNT}/{PLAN_FILE}"),
            *("--http", candidate_http(resource)),
            *("--workdir", "/tmp/work", "--termination-log", TERMINATION_LOG),
        ],
        env=env,
        env_from=env_from,
        mounts=[
            plan_mount,
            *scratch_mounts,
            *claim_mounts,
        ],
        resources=_RESOURCES,
        terminationMessagePath=TERMINATION_LOG,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    pod_spec = restricted_pod(
        config.uid,
        [container],
        [
            plan_source,
            *scratch,
            *claims,
        ],
        restartPolicy="Never",
        # The platform's pool for Kiln's Jobs: its nodes already hold the job image.
        tolerations=[dict(t) for t in config.job_tolerations],
    )
    if config.job_node_selector:
        pod_spec["nodeSelector"] = dict(config.job_node_selector)
    if config.job_service_account:
        pod_spec["serviceAccountName"] = config.job_service_account
    labels = child_labels(name, CHECK_COMPONENT, plan_hash)
    scheduling = resource.spec.scheduling
    pod_labels = {**(scheduling.pod_labels or {}), **labels}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": check_job_name(name, plan),
            "namespace": resource.metadata.namespace,
            "labels": labels,
        },
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": _DEADLINE_SECONDS,
            # A measured regression is the same on every retry: it fails the Job at once.
            "podFailurePolicy": pod_failure_policy(CHECK_CONTAINER),
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": dict(scheduling.pod_annotations or {}),
                },
                "spec": pod_spec,
            },
        },
    }
