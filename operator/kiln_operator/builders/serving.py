"""Triton Inference Server in front of a published plan: Deployments, Services, PDB, admin key.

Each plan is served by its own Deployment (a revision, named after the plan hash). Clients use
the Service, which selects the promoted revision's pods; the candidate Service selects the
current plan's. A new plan's revision starts beside the one serving, is smoke-tested (and, when
the spec asks, evaluated as served) through the candidate Service, and is promoted by moving the
Service's selector: the old model serves until the new one has passed, and keeps serving if it
does not.
"""

from __future__ import annotations

from typing import Any

# MODEL_MOUNT: the published plan directory (manifest.json, checkpoint/, engine/, triton/)
# inside the pod; the TensorRT-LLM repositories the job writes refer to files under it.
from kiln_jobs.contract import (
    CHECKPOINT_DIR,
    MODEL_MOUNT,
    RUNTIMES,
    TRITON_DIR,
    Runtime,
    runtime_for,
    triton_argv,
)
from kiln_jobs.manifest import CheckpointInfo
from kiln_jobs.plan import Plan
from kiln_operator.api import ModelOptimization
from kiln_operator.api.spec import ServiceSpec
from kiln_operator.api.status import EndpointsStatus
from kiln_operator.builders.common import (
    kiln_container,
    restricted_pod,
    scratch_volumes,
    split_store,
    store_env_from,
)
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import (
    admin_secret_name,
    candidate_service_name,
    child_labels,
    deployment_name,
    selector_labels,
    service_name,
    serving_selector,
)

__all__ = [
    "build_admin_secret",
    "build_candidate_service",
    "build_deployment",
    "build_pdb",
    "build_service",
    "candidate_http",
    "endpoints_of",
]

Obj = dict[str, Any]

TRITON_CONTAINER = "triton"
OPENAI_CONTAINER = "openai"
# Tokenizing and relaying requests is light, but importing transformers takes a few hundred MB.
_INIT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
_OPENAI_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
ADMIN_KEY_ENV = "KILN_TRITON_ADMIN_KEY"
# Triton waits this long for in-flight requests on SIGTERM; the pod's grace period is longer.
_EXIT_TIMEOUT_SECONDS = 30
_GPU = "nvidia.com/gpu"


def _checkpoint_labels(checkpoint: CheckpointInfo | None) -> dict[str, str]:
    """Labels that say what the served checkpoint is (label values: alphanumerics, -_.)."""
    if checkpoint is None:
        return {}
    labels = {"kiln.dev/producer": checkpoint.producer}
    if checkpoint.quant_algo:
        labels["kiln.dev/quant-algo"] = checkpoint.quant_algo
    if checkpoint.kv_cache_quant_algo:
        labels["kiln.dev/kv-cache-quant-algo"] = checkpoint.kv_cache_quant_algo
    if checkpoint.group_size:
        labels["kiln.dev/group-size"] = str(checkpoint.group_size)
    return labels


def _checkpoint_annotations(checkpoint: CheckpointInfo | None) -> dict[str, str]:
    if checkpoint is None:
        return {}
    annotations = {f"kiln.dev/tool-{tool}": v for tool, v in sorted(checkpoint.tools.items())}
    if checkpoint.calibration_digest:
        annotations["kiln.dev/calibration-digest"] = checkpoint.calibration_digest
    return annotations


def build_admin_secret(resource: ModelOptimization) -> Obj:
    """The Secret holding the key Triton's restricted admin APIs demand. Its random
    `admin-key` is added when it is created (once); the operator never reads it back."""
    name = resource.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": admin_secret_name(name),
            "namespace": resource.metadata.namespace,
            "labels": child_labels(name, "serving"),
        },
        "type": "Opaque",
    }


def _service(resource: ModelOptimization) -> ServiceSpec:
    return resource.spec.serving.service or ServiceSpec()


def _ports(resource: ModelOptimization) -> list[Obj]:
    """Triton's ports."""
    service = _service(resource)
    return [
        {"name": "http", "containerPort": service.http_port, "protocol": "TCP"},
        {"name": "grpc", "containerPort": service.grpc_port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": service.metrics_port, "protocol": "TCP"},
    ]


def _openai_port(resource: ModelOptimization) -> Obj:
    return {"name": "openai", "containerPort": _service(resource).openai_port, "protocol": "TCP"}


def _openai_container(
    resource: ModelOptimization, mounts: list[Obj], image: str, config: OperatorConfig
) -> Obj:
    """The OpenAI-compatible endpoint beside Triton (same pod: it reaches Triton on loopback)."""
    service = _service(resource)
    port = _openai_port(resource)
    return kiln_container(
        OPENAI_CONTAINER,
        image=image,
        command=config.job_command,
        args=[
            *("openai", "--triton", f"127.0.0.1:{service.http_port}"),
            *("--model", resource.spec.serving.model_name),
            *("--tokenizer", f"{MODEL_MOUNT}/{CHECKPOINT_DIR}"),
            *("--port", str(port["containerPort"])),
        ],
        env=[{"name": "PYTHONUNBUFFERED", "value": "1"}],
        mounts=mounts,
        resources=_OPENAI_RESOURCES,
        ports=[port],
        readinessProbe={
            "httpGet": {"path": "/health/ready", "port": "openai"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
    )


def _hardening(resource: ModelOptimization, *, single_process: bool) -> list[str]:
    """Flags that make Triton safe to expose: a fixed, immutable repository, strict health,
    admin APIs behind a key only Kubernetes knows."""
    restricted = f"model-repository,shared-memory,logging,trace:admin-key=$({ADMIN_KEY_ENV})"
    flags = [
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={_EXIT_TIMEOUT_SECONDS}",
        "--allow-metrics=true",
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
    ]
    if single_process:
        # The repository is immutable and published atomically: no remote model loading.
        # (Under mpirun, the extra ranks load their shard explicitly; rank 0 keeps the default.)
        flags.insert(0, "--model-control-mode=none")
    return flags


def _triton_command(
    resource: ModelOptimization, plan: Plan, runtime: Runtime, config: OperatorConfig
) -> list[str]:
    """The container's whole command line for the runtime the job published (no shell)."""
    service = _service(resource)
    http, grpc, metrics = service.http_port, service.grpc_port, service.metrics_port
    world = plan.engine.tensor_parallel * plan.engine.pipeline_parallel
    single = runtime != "tensorrtllm-engine" or world == 1
    return triton_argv(
        runtime, world, repository=f"{MODEL_MOUNT}/{TRITON_DIR}", tritonserver=config.tritonserver,
        http_port=http, grpc_port=grpc, metrics_port=metrics,
        extra_args=_hardening(resource, single_process=single),
    )  # fmt: skip


def _model_volume(
    resource: ModelOptimization,
    store_uri: str,
    plan_hash: str,
    manifest_digest: str | None,
    config: OperatorConfig,
) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(volumes, mounts, init containers) that put the published plan at MODEL_MOUNT, checked
    against its manifest (pinned by `manifest_digest` when known) before Triton starts."""
    store = split_store(store_uri)
    mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
    pin = ["--manifest-sha256", manifest_digest] if manifest_digest else []
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    if store.scheme == "pvc":
        volume = {
            "name": "model",
            "persistentVolumeClaim": {"claimName": store.root, "readOnly": True},
        }
        mounted = {**mount, "subPath": store.plan_path(plan_hash)}
        verify = kiln_container(
            "verify-model",
            image=config.job_image,
            command=config.job_command,
            args=["verify", "--dir", MODEL_MOUNT, "--plan-hash", plan_hash, *pin],
            mounts=[mounted, tmp],
            resources=_INIT_RESOURCES,
            terminationMessagePolicy="FallbackToLogsOnError",
        )
        return [volume], [mounted], [verify]
    # s3: copy the published plan into the pod before Triton starts.
    fetch = kiln_container(
        "fetch-model",
        image=config.job_image,
        command=config.job_command,
        args=[
            *("fetch", "--store", store_uri, "--plan-hash", plan_hash, "--dest", MODEL_MOUNT),
            *pin,
        ],
        env_from=store_env_from(resource.spec.artifacts.credentials_secret),
        mounts=[{"name": "model", "mountPath": MODEL_MOUNT}, tmp],
        resources=_INIT_RESOURCES,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    return [{"name": "model", "emptyDir": {}}], [mount], [fetch]


def _serving_resources(resource: ModelOptimization, runtime: Runtime) -> Obj:
    spec = resource.spec
    wanted = spec.serving.resources
    requests = dict(wanted.requests or {}) if wanted else {}
    limits = dict(wanted.limits or {}) if wanted else {}
    if RUNTIMES[runtime].gpu:
        gpus = str(spec.engine.tensor_parallel * spec.engine.pipeline_parallel)
        requests[_GPU] = limits[_GPU] = gpus
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _probes() -> Obj:
    ready = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    return {
        "readinessProbe": {**ready, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        # Large engines take minutes to load: up to 30 minutes before liveness applies.
        "startupProbe": {**ready, "periodSeconds": 10, "failureThreshold": 180},
    }


def build_deployment(
    resource: ModelOptimization,
    plan: Plan,
    *,
    checkpoint: CheckpointInfo | None,
    runtime: Runtime | None,
    config: OperatorConfig,
    manifest_digest: str | None = None,
) -> Obj:
    """Triton serving the published `plan` with the runtime its job chose; the plan's files are
    checked against the manifest `manifest_digest` pins before Triton starts."""
    name = resource.metadata.name
    spec = resource.spec
    plan_hash = plan.hash()
    store_uri = plan.output.store
    # A job result always names its runtime; an older record may not.
    runtime = runtime or runtime_for(plan.engine.backend)
    command = _triton_command(resource, plan, runtime, config)
    volumes, mounts, init_containers = _model_volume(
        resource, store_uri, plan_hash, manifest_digest, config
    )
    scratch, scratch_mounts = scratch_volumes()
    labels = {**child_labels(name, "serving", plan_hash), **_checkpoint_labels(checkpoint)}
    pod_labels = {**(spec.scheduling.pod_labels or {}), **labels}
    image = spec.serving.image or config.triton_image
    container = kiln_container(
        TRITON_CONTAINER,
        image=image,
        command=command[:1],
        args=command[1:],
        env=[
            {
                "name": ADMIN_KEY_ENV,
                "valueFrom": {
                    "secretKeyRef": {"name": admin_secret_name(name), "key": "admin-key"}
                },
            },
        ],
        mounts=[*mounts, *scratch_mounts],
        resources=_serving_resources(resource, runtime),
        ports=_ports(resource),
        **_probes(),
    )
    containers = [container]
    if spec.serving.openai_endpoint:
        containers.append(_openai_container(resource, [*mounts, *scratch_mounts], image, config))
    pod_spec = restricted_pod(
        config.uid,
        containers,
        [*volumes, *scratch],
        terminationGracePeriodSeconds=_EXIT_TIMEOUT_SECONDS + 30,
        initContainers=init_containers,
    )
    tolerations = [dict(t) for t in config.serving_tolerations]
    node_selector = dict(config.serving_node_selector)
    if RUNTIMES[runtime].gpu:
        tolerations.append({"key": _GPU, "operator": "Exists", "effect": "NoSchedule"})
        if spec.resources.gpu_product:
            node_selector["nvidia.com/gpu.product"] = spec.resources.gpu_product
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name, plan_hash),
            "namespace": resource.metadata.namespace,
            "labels": labels,
            "annotations": _checkpoint_annotations(checkpoint),
        },
        "spec": {
            "replicas": spec.serving.replicas,
            "selector": {"matchLabels": serving_selector(name, plan_hash)},
            # A changed pod template (image, resources) of the same plan: never below the
            # desired count while the new pods start.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        **(spec.scheduling.pod_annotations or {}),
                        "kiln.dev/plan-hash": plan_hash,
                        "kiln.dev/serving-runtime": runtime,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _triton_service(resource: ModelOptimization, service_name_: str, plan_hash: str) -> Obj:
    name = resource.metadata.name
    service = _service(resource)
    ports = _ports(resource)
    if resource.spec.serving.openai_endpoint:
        ports.append(_openai_port(resource))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name_,
            "namespace": resource.metadata.namespace,
            "labels": child_labels(name, "serving"),
        },
        "spec": {
            "type": service.type,
            "selector": serving_selector(name, plan_hash),
            "ports": [
                {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                for p in ports
            ],
        },
    }


def build_service(resource: ModelOptimization, promoted_hash: str) -> Obj:
    """The Service clients use: the promoted revision's http, grpc and metrics ports, and
    openai when it runs."""
    return _triton_service(resource, service_name(resource.metadata.name), promoted_hash)


def build_candidate_service(resource: ModelOptimization, plan_hash: str) -> Obj:
    """The Service in front of the current plan's revision, for the checks before promotion
    (always ClusterIP: only the operator and its check Job use it)."""
    service = _triton_service(resource, candidate_service_name(resource.metadata.name), plan_hash)
    service["spec"]["type"] = "ClusterIP"
    return service


def build_pdb(resource: ModelOptimization) -> Obj | None:
    """Keep all but one replica serving through voluntary disruptions (replicas > 1 only)."""
    if resource.spec.serving.replicas <= 1:
        return None
    name = resource.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": service_name(name),
            "namespace": resource.metadata.namespace,
            "labels": child_labels(name, "serving"),
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name, "serving")},
        },
    }


def candidate_http(resource: ModelOptimization) -> str:
    """Triton's HTTP endpoint of the current plan's revision, promoted or not."""
    host = f"{candidate_service_name(resource.metadata.name)}.{resource.metadata.namespace}.svc"
    return f"http://{host}:{_service(resource).http_port}"


def endpoints_of(resource: ModelOptimization) -> EndpointsStatus:
    """In-cluster addresses of the Service's endpoints."""
    service = _service(resource)
    host = f"{service_name(resource.metadata.name)}.{resource.metadata.namespace}.svc"
    openai = f"http://{host}:{service.openai_port}/v1"
    return EndpointsStatus(
        http=f"http://{host}:{service.http_port}",
        grpc=f"{host}:{service.grpc_port}",
        openai=openai if resource.spec.serving.openai_endpoint else None,
        model=resource.spec.serving.model_name,
    )
