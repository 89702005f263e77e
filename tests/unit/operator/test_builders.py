"""The Job, Deployment and Service Kiln builds, checked field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiln_jobs.errors import ExitCode
from kiln_jobs.plan import Plan
from kiln_jobs.serving.repository import Runtime
from kiln_operator.builders.job import build_job, build_plan_configmap
from kiln_operator.builders.serving import (
    build_candidate_service,
    build_deployment,
    build_pdb,
    build_service,
    candidate_http,
)
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import HASH_LABEL, short_hash
from kiln_operator.reconcile import Prepared, prepare
from tests.unit.operator.conftest import make_body

pytestmark = pytest.mark.unit
Obj = dict[str, Any]
_ALLOWED_VOLUMES = {
    "configMap",
    "emptyDir",
    "persistentVolumeClaim",
    "secret",
    "projected",
    "downwardAPI",
    "csi",
    "ephemeral",
}


def _prepared(config: OperatorConfig, **spec: Any) -> Prepared:
    prepared = prepare(make_body(**spec), config)
    assert isinstance(prepared, Prepared), prepared
    return prepared


def _job(config: OperatorConfig, **spec: Any) -> Obj:
    prepared = _prepared(config, **spec)
    return build_job(prepared.resource, prepared.plan, config)


def assert_restricted(pod_spec: Obj) -> None:
    """The restricted Pod Security Standard, as the PodSecurity admission plugin checks it."""
    pod_ctx = pod_spec["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0
    assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault"
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID")
    for volume in pod_spec["volumes"]:
        assert set(volume) - {"name"} <= _ALLOWED_VOLUMES, volume
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert not ctx.get("privileged")


def test_job_meets_restricted_pss(config: OperatorConfig) -> None:
    job = _job(config)
    pod = job["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"


def test_scratch_is_bounded_by_the_disk_the_resource_asks_for(config: OperatorConfig) -> None:
    volumes = {v["name"]: v for v in _job(config)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"]  # memory: always bounded
    sized = _job(config, resources={"ephemeralStorage": "200Gi"})["spec"]["template"]["spec"]
    for volume in sized["volumes"]:
        if volume["name"] in ("tmp", "work"):
            assert volume["emptyDir"]["sizeLimit"] == "200Gi", volume


def test_job_args_are_fixed_and_plan_comes_from_a_configmap(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    job = build_job(prepared.resource, prepared.plan, config)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kiln_jobs"]
    assert container["args"][:3] == ["run", "--plan", "/etc/kiln/plan/plan.json"]
    configmap = build_plan_configmap(prepared.resource, prepared.plan)
    assert Plan.from_json(configmap["data"]["plan.json"]) == prepared.plan
    assert configmap["immutable"] is True
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "plan")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]


def test_user_text_never_reaches_the_command_line(config: OperatorConfig) -> None:
    prompt = "'; rm -rf / #"
    job = _job(
        config,
        serving={"smokeTest": {"prompt": prompt}},
        techniques=[{"ptq": {"format": "fp8", "excludeModules": ["$(whoami)"]}}],
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert not any("$(" in a or prompt in a for a in container["args"])


def test_pod_failure_policy(config: OperatorConfig) -> None:
    policy = _job(config)["spec"]["podFailurePolicy"]["rules"]
    assert policy[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert policy[1]["action"] == "FailJob"
    assert policy[1]["onExitCodes"]["values"] == sorted(int(c) for c in ExitCode.permanent())
    assert ExitCode.BUG not in policy[1]["onExitCodes"]["values"]


def test_gpu_request_node_selector_and_toleration(config: OperatorConfig) -> None:
    config = config.model_copy(update={"allowed_priority_classes": ["batch-low"]})
    job = _job(
        config,
        resources={"gpus": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "memory": "64Gi"},
        scheduling={"nodeSelector": {"pool": "a"}, "priorityClassName": "batch-low"},
    )
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["limits"]["memory"] == "64Gi"
    assert pod["nodeSelector"] == {"pool": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["priorityClassName"] == "batch-low"


def test_timeout_and_retries(config: OperatorConfig) -> None:
    spec = _job(config, scheduling={"timeout": "1h30m", "retries": 4})["spec"]
    assert spec["activeDeadlineSeconds"] == 5400 and spec["backoffLimit"] == 4


def test_kueue_queue_creates_the_job_suspended(config: OperatorConfig) -> None:
    job = _job(config, scheduling={"queueName": "gpu-queue"})
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "suspend" not in _job(config)["spec"]


def test_secrets_are_referenced_never_copied(config: OperatorConfig) -> None:
    job = _job(
        config,
        model={"source": "hf://org/model", "credentialsSecret": "hf-token"},
        artifacts={"store": "s3://bucket/kiln", "credentialsSecret": "s3-creds"},
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "hf-token"}} in container["envFrom"]
    assert {"prefix": "KILN_STORE_", "secretRef": {"name": "s3-creds"}} in container["envFrom"]
    assert all("value" not in e or "token" not in e["value"].lower() for e in container["env"])


def test_pvc_store_is_the_persistent_workdir(config: OperatorConfig) -> None:
    prepared = _prepared(config, model={"source": "pvc://models/llama"})
    job = build_job(prepared.resource, prepared.plan, config)
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert (
        args[args.index("--workdir") + 1] == f"/mnt/pvc/artifacts/kiln/.work/{prepared.plan_hash}"
    )
    mounts = {
        m["mountPath"]: m.get("readOnly", False) for m in pod["containers"][0]["volumeMounts"]
    }
    assert mounts["/mnt/pvc/artifacts"] is False and mounts["/mnt/pvc/models"] is True
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KILN_KERNEL_CACHE"] == "/mnt/pvc/artifacts/kiln/.cache"


def test_an_object_store_job_keeps_kernels_in_its_own_scratch(config: OperatorConfig) -> None:
    job = _job(config, artifacts={"store": "s3://bucket/kiln"})
    env = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KILN_KERNEL_CACHE" not in env


def test_pod_labels_and_annotations_reach_the_pods(config: OperatorConfig) -> None:
    job = _job(
        config,
        scheduling={"podLabels": {"cost-center": "ml"}, "podAnnotations": {"example.com/a": "b"}},
    )
    template = job["spec"]["template"]["metadata"]
    assert template["labels"]["cost-center"] == "ml"
    assert template["labels"]["kiln.dev/model-optimization"] == "smollm2"
    assert template["annotations"] == {"example.com/a": "b"}


def _deployment(config: OperatorConfig, runtime: Runtime | None = None, **spec: Any) -> Obj:
    prepared = _prepared(config, **spec)
    return build_deployment(
        prepared.resource, prepared.plan, checkpoint=None, runtime=runtime, config=config
    )


def test_deployment_runs_triton_safely(config: OperatorConfig) -> None:
    deployment = _deployment(config)
    pod = deployment["spec"]["template"]["spec"]
    assert_restricted(pod)
    args = pod["containers"][0]["args"]
    for flag in (
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
    ):
        assert flag in args
    assert any(a.startswith("--http-restricted-api=") for a in args)
    exit_timeout = int(next(a for a in args if a.startswith("--exit-timeout-secs=")).split("=")[1])
    assert pod["terminationGracePeriodSeconds"] > exit_timeout
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert (
        container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
        >= 1800
    )
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_mounts_the_plan_read_only(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    deployment = _deployment(config)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert mount == {
        "name": "model",
        "mountPath": "/kiln/model",
        "readOnly": True,
        "subPath": f"kiln/{prepared.plan_hash}",
    }


def test_s3_store_is_fetched_by_an_init_container(config: OperatorConfig) -> None:
    deployment = _deployment(
        config, artifacts={"store": "s3://bucket/kiln", "credentialsSecret": "s3"}
    )
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][:3] == ["fetch", "--store", "s3://bucket/kiln"]
    assert init["envFrom"] == [{"prefix": "KILN_STORE_", "secretRef": {"name": "s3"}}]


def test_gpus_follow_tensor_parallelism(config: OperatorConfig) -> None:
    deployment = _deployment(
        config, engine={"tensorParallel": 2, "pipelineParallel": 2}, resources={"gpus": 4}
    )
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "4"
    cpu_only = _deployment(config, runtime="python", engine={"backend": "none"})
    assert "nvidia.com/gpu" not in json.dumps(cpu_only["spec"]["template"]["spec"]["containers"])


def test_a_new_plan_is_a_new_revision_beside_the_one_serving(config: OperatorConfig) -> None:
    a = _deployment(config)
    b = _deployment(config, techniques=[{"ptq": {"format": "int8_sq"}}])
    hash_a, hash_b = (d["metadata"]["labels"][HASH_LABEL] for d in (a, b))
    assert hash_a != hash_b
    assert a["metadata"]["name"] == f"smollm2-triton-{hash_a}"
    assert b["metadata"]["name"] == f"smollm2-triton-{hash_b}"
    # Each revision selects only its own pods, so two run side by side without fighting.
    assert a["spec"]["selector"]["matchLabels"][HASH_LABEL] == hash_a
    assert b["spec"]["template"]["metadata"]["labels"][HASH_LABEL] == hash_b


def test_the_clients_service_selects_the_promoted_revision(config: OperatorConfig) -> None:
    config = config.model_copy(update={"allowed_service_types": ["ClusterIP", "NodePort"]})
    prepared = _prepared(config, serving={"service": {"type": "NodePort"}})
    service = build_service(prepared.resource, "a" * 16)
    candidate = build_candidate_service(prepared.resource, prepared.plan_hash)
    assert service["metadata"]["name"] == "smollm2-triton"
    assert service["spec"]["selector"][HASH_LABEL] == "a" * 10
    assert service["spec"]["type"] == "NodePort"
    assert candidate["metadata"]["name"] == "smollm2-triton-candidate"
    assert candidate["spec"]["selector"][HASH_LABEL] == short_hash(prepared.plan_hash)
    assert candidate["spec"]["type"] == "ClusterIP"  # only the operator and its Job use it
    assert candidate["spec"]["ports"] == service["spec"]["ports"]
    assert candidate_http(prepared.resource) == "http://smollm2-triton-candidate.team-a.svc:8000"


def test_service_and_pdb(config: OperatorConfig) -> None:
    config = config.model_copy(update={"allowed_service_types": ["ClusterIP", "LoadBalancer"]})
    prepared = _prepared(config, serving={"replicas": 2, "service": {"type": "LoadBalancer"}})
    service = build_service(prepared.resource, prepared.plan_hash)
    assert service["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "grpc", "metrics", "openai"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, 8001, 8002, 9000]
    assert build_pdb(prepared.resource)["spec"]["maxUnavailable"] == 1  # type: ignore[index]
    single = _prepared(config)
    assert build_pdb(single.resource) is None


def test_the_openai_endpoint_runs_beside_triton(config: OperatorConfig) -> None:
    prepared = _prepared(
        config, serving={"modelName": "assistant", "service": {"openaiPort": 9100}}
    )
    pod = build_deployment(
        prepared.resource, prepared.plan, checkpoint=None, runtime="tensorrtllm-pytorch",
        config=config,
    )["spec"]["template"]["spec"]  # fmt: skip
    triton, openai = pod["containers"]
    assert openai["name"] == "openai" and openai["image"] == triton["image"]
    assert openai["command"] + openai["args"] == [
        *config.job_command, "openai", "--triton", "127.0.0.1:8000", "--model", "assistant",
        "--tokenizer", "/kiln/model/checkpoint", "--port", "9100",
    ]  # fmt: skip
    assert openai["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "openai"}
    assert openai["resources"]["limits"]["memory"]
    assert {m["mountPath"] for m in openai["volumeMounts"]} >= {"/kiln/model", "/tmp"}
    assert_restricted(pod)
    without = _prepared(config, serving={"openaiEndpoint": False})
    service = build_service(without.resource, without.plan_hash)
    assert "openai" not in [p["name"] for p in service["spec"]["ports"]]
    lone = build_deployment(
        without.resource, without.plan, checkpoint=None, runtime="python", config=config
    )
    assert [c["name"] for c in lone["spec"]["template"]["spec"]["containers"]] == ["triton"]


def test_platform_defaults_for_job_placement(config: OperatorConfig) -> None:
    pool = config.model_copy(
        update={
            "job_node_selector": {"pool": "gpu-batch", "zone": "a"},
            "job_tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        }
    )
    prepared = _prepared(pool, scheduling={"nodeSelector": {"disk": "nvme", "zone": "a"}})
    pod = build_job(prepared.resource, prepared.plan, pool)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu-batch", "zone": "a", "disk": "nvme"}
    assert {"key": "batch", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # A resource cannot leave the platform's pool: refused, and the pool wins in the Job anyway.
    refused = prepare(make_body(scheduling={"nodeSelector": {"zone": "b"}}), pool)
    assert isinstance(refused, list) and "contradicts the platform's zone=a" in str(refused[0])
    resource = prepared.resource.model_copy(deep=True)
    resource.spec.scheduling.node_selector = {"zone": "b"}
    pod = build_job(resource, prepared.plan, pool)["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["zone"] == "a"


def test_the_platform_decides_what_a_resource_may_ask_for(config: OperatorConfig) -> None:
    def refused(**spec: Any) -> str:
        problems = prepare(make_body(**spec), config)
        assert isinstance(problems, list), f"admitted: {spec}"
        return "; ".join(str(p) for p in problems)

    assert "spec.serving.image: evil.example/triton:latest is not an image" in refused(
        serving={"image": "evil.example/triton:latest"}
    )
    assert "spec.serving.service.type: LoadBalancer" in refused(
        serving={"service": {"type": "LoadBalancer"}}
    )
    assert "spec.scheduling.priorityClassName: system-cluster-critical" in refused(
        scheduling={"priorityClassName": "system-cluster-critical"}
    )
    toleration = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    assert "spec.scheduling.tolerations[0].key: tolerating dedicated" in refused(
        scheduling={"tolerations": [toleration]}
    )
    queued = config.model_copy(update={"allowed_queues": ["team-queue"]})
    problems = prepare(make_body(), queued)
    assert isinstance(problems, list) and "go through Kueue" in str(problems[0])
    allowed = config.model_copy(
        update={"allowed_images": ["registry.example/triton:*"], "default_queue": "team-queue",
                "allowed_queues": ["team-queue"]}
    )  # fmt: skip
    prepared = _prepared(allowed, serving={"image": "registry.example/triton:25.10"})
    job = build_job(prepared.resource, prepared.plan, allowed)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    assert job["spec"]["suspend"] is True


def test_triton_command_follows_the_published_runtime(config: OperatorConfig) -> None:
    engine = _deployment(
        config,
        runtime="tensorrtllm-engine",
        resources={"gpus": 2},
        engine={"backend": "tensorrt-llm", "tensorParallel": 2},
    )
    container = engine["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mpirun"]
    ranks = " ".join(container["args"]).split(" : ")
    assert len(ranks) == 2
    assert all("--strict-readiness=true" in rank for rank in ranks)
    assert "--model-control-mode=none" not in ranks[1]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    llmapi = _deployment(config, runtime="tensorrtllm-pytorch")
    assert llmapi["spec"]["template"]["spec"]["containers"][0]["command"] == ["tritonserver"]
    # A job that did not say: the plan decides (pytorch backend, no fallback in the cluster).
    unknown = _deployment(config)
    assert unknown["spec"]["template"]["metadata"]["annotations"]["kiln.dev/serving-runtime"] == (
        "tensorrtllm-pytorch"
    )
