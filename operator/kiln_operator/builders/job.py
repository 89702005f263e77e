"""The optimization Job of one plan, and the ConfigMap that carries the plan into it."""

from __future__ import annotations

from typing import Any

from kiln_jobs.contract import (
    KERNEL_CACHE_ENV,
    PLAN_FILE,
    PLAN_HASH_ENV,
    PLAN_MOUNT,
    PVC_ROOT,
    PVC_ROOT_ENV,
    TERMINATION_LOG,
)
from kiln_jobs.errors import ExitCode
from kiln_jobs.plan import Plan
from kiln_operator.api import ModelOptimization
from kiln_operator.api.base import parse_duration_seconds
from kiln_operator.builders.common import (
    kiln_container,
    pvc_mounts,
    restricted_pod,
    scratch_volumes,
    split_store,
    store_env_from,
)
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import child_labels, job_name, plan_configmap_name

__all__ = [
    "QUEUE_LABEL",
    "build_job",
    "build_plan_configmap",
    "job_env",
    "plan_volume",
    "pod_failure_policy",
]

Obj = dict[str, Any]

JOB_CONTAINER = "optimize"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
_GPU = "nvidia.com/gpu"
_PRODUCT_LABEL = "nvidia.com/gpu.product"


def build_plan_configmap(resource: ModelOptimization, plan: Plan) -> Obj:
    """The plan as JSON: the only way user input reaches the Job (never through a shell)."""
    name = resource.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": plan_configmap_name(name, plan.hash()),
            "namespace": resource.metadata.namespace,
            "labels": child_labels(name, "optimize", plan.hash()),
        },
        "immutable": True,
        "data": {PLAN_FILE: plan.to_json()},
    }


def plan_volume(resource_name: str, plan_hash: str) -> tuple[Obj, Obj]:
    """(volume, mount) of the plan's ConfigMap: how a Job's command reads its Plan."""
    volume = {"name": "plan", "configMap": {"name": plan_configmap_name(resource_name, plan_hash)}}
    return volume, {"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True}


def _on_pvc_store(plan: Plan, relative: str) -> str | None:
    """The mounted path of `relative` under the plan's store prefix; None unless a PVC store."""
    store = split_store(plan.output.store)
    if store.scheme != "pvc":
        return None
    under = f"{store.prefix}/{relative}" if store.prefix else relative
    return f"{PVC_ROOT}/{store.root}/{under}"


def _workdir(plan: Plan, size_limit: str | None) -> tuple[str, list[Obj], list[Obj]]:
    """Scratch for checkpoints. On a PVC store it is persistent, so a preempted pod resumes."""
    work = _on_pvc_store(plan, f".work/{plan.hash()}")
    if work is not None:
        return work, [], []
    empty_dir = {"sizeLimit": size_limit} if size_limit else {}
    return (
        "/work",
        [{"name": "work", "emptyDir": empty_dir}],
        [{"name": "work", "mountPath": "/work"}],
    )


def job_env(resource: ModelOptimization, plan: Plan) -> tuple[list[Obj], list[Obj]]:
    """(env, envFrom): settings by value, credentials by Secret reference only."""
    env: list[Obj] = [
        {"name": PVC_ROOT_ENV, "value": PVC_ROOT},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": PLAN_HASH_ENV, "value": plan.hash()},
    ]
    kernel_cache = _on_pvc_store(plan, ".cache")
    if kernel_cache is not None:
        # Compiled CUDA kernels outlive the Job: every job on this store reuses them.
        env.append({"name": KERNEL_CACHE_ENV, "value": kernel_cache})
    env_from: list[Obj] = []
    model_secrets = [resource.spec.model.credentials_secret]
    for item in resource.spec.techniques:
        for field in ("teacher", "draft"):
            ref = getattr(item.body, field, None)
            model_secrets.append(ref.credentials_secret if ref else None)
    for secret in dict.fromkeys(s for s in model_secrets if s):
        env_from.append({"secretRef": {"name": secret}})
    env_from += store_env_from(resource.spec.artifacts.credentials_secret)
    return env, env_from


def _resources(resource: ModelOptimization) -> Obj:
    wanted = resource.spec.resources
    requests: Obj = {}
    limits: Obj = {}
    if wanted.gpus:
        requests[_GPU] = limits[_GPU] = str(wanted.gpus)
    if wanted.cpu:
        requests["cpu"] = wanted.cpu
    if wanted.memory:
        requests["memory"] = limits["memory"] = wanted.memory
    if wanted.ephemeral_storage:
        requests["ephemeral-storage"] = wanted.ephemeral_storage
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _scheduling(resource: ModelOptimization, config: OperatorConfig) -> Obj:
    spec = resource.spec
    # The platform's pool wins: a resource may narrow the placement, never leave the pool.
    node_selector = {**(spec.scheduling.node_selector or {}), **config.job_node_selector}
    if spec.resources.gpu_product:
        node_selector[_PRODUCT_LABEL] = spec.resources.gpu_product
    tolerations = [dict(t) for t in config.job_tolerations] + [
        t.model_dump(by_alias=True, exclude_none=True) for t in spec.scheduling.tolerations or []
    ]
    if spec.resources.gpus and not any(t.get("key") == _GPU for t in tolerations):
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule to keep CPU pods off.
        tolerations.append({"key": _GPU, "operator": "Exists", "effect": "NoSchedule"})
    pod: Obj = {"tolerations": tolerations}
    if node_selector:
        pod["nodeSelector"] = node_selector
    if spec.scheduling.priority_class_name:
        pod["priorityClassName"] = spec.scheduling.priority_class_name
    return pod


def pod_failure_policy(container: str) -> Obj:
    """Retry what the cluster did to a pod; fail at once on what the pod's own code says a
    retry cannot fix (ExitCode.permanent: a bad spec, a failed gate, missing credentials)."""
    return {
        "rules": [
            # Preemption, eviction, node drains: retry without counting against backoffLimit.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            # A bad spec, missing credentials, unsupported hardware or a failed accuracy gate
            # fail the same way on every retry.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": sorted(int(code) for code in ExitCode.permanent()),
                },
            },
        ]
    }


def _labels(resource: ModelOptimization, plan: Plan, config: OperatorConfig) -> tuple[Obj, Obj]:
    """(job labels, pod labels)."""
    name = resource.metadata.name
    ours = child_labels(name, "optimize", plan.hash())
    pod_labels = {**(resource.spec.scheduling.pod_labels or {}), **ours}
    job_labels = dict(ours)
    queue = resource.spec.scheduling.queue_name or config.default_queue
    if queue:
        job_labels[QUEUE_LABEL] = queue
    return job_labels, pod_labels


def build_job(resource: ModelOptimization, plan: Plan, config: OperatorConfig) -> Obj:
    """The batch/v1 Job that runs `plan` once, to completion, on a GPU node."""
    name = resource.metadata.name
    plan_hash = plan.hash()
    wanted_disk = resource.spec.resources.ephemeral_storage
    disk = None if wanted_disk is None else str(wanted_disk)
    workdir, work_volumes, work_mounts = _workdir(plan, disk)
    scratch, scratch_mounts = scratch_volumes(disk)
    claims, claim_mounts = pvc_mounts(plan)
    env, env_from = job_env(resource, plan)
    job_labels, pod_labels = _labels(resource, plan, config)
    plan_source, plan_mount = plan_volume(name, plan_hash)
    container = kiln_container(
        JOB_CONTAINER,
        image=config.job_image,
        command=config.job_command,
        args=[
            "run",
            "--plan",
            f"{PLAN_MOUNT}/{PLAN_FILE}",
            "--workdir",
            workdir,
            "--termination-log",
            TERMINATION_LOG,
        ],
        env=env,
        env_from=env_from,
        mounts=[
            plan_mount,
            *scratch_mounts,
            *work_mounts,
            *claim_mounts,
        ],
        resources=_resources(resource),
        terminationMessagePath=TERMINATION_LOG,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    pod_spec = restricted_pod(
        config.uid,
        [container],
        [
            plan_source,
            *scratch,
            *work_volumes,
            *claims,
        ],
        restartPolicy="Never",
        **_scheduling(resource, config),
    )
    if config.job_service_account:
        pod_spec["serviceAccountName"] = config.job_service_account
    job_spec: Obj = {
        "backoffLimit": resource.spec.scheduling.retries,
        "activeDeadlineSeconds": parse_duration_seconds(resource.spec.scheduling.timeout),
        "podFailurePolicy": pod_failure_policy(JOB_CONTAINER),
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": dict(resource.spec.scheduling.pod_annotations or {}),
            },
            "spec": pod_spec,
        },
    }
    if QUEUE_LABEL in job_labels:
        job_spec["suspend"] = True  # Kueue admits the Job by unsuspending it.
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, plan_hash),
            "namespace": resource.metadata.namespace,
            "labels": job_labels,
            "annotations": {"kiln.dev/techniques": plan.summary()},
        },
        "spec": job_spec,
    }
