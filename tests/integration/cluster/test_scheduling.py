"""The real scheduler places pods on kwok GPU nodes by allocatable GPUs and GFD labels."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.kube import Cluster
from tests.integration.cluster.manifests import job

pytestmark = pytest.mark.integration

H100 = "NVIDIA-H100-80GB-HBM3"


def _scheduled_condition(kube: Cluster, namespace: str, app: str) -> dict[str, Any]:
    """The PodScheduled condition of the Job's pod, once the scheduler has set it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for p in kube.pods(namespace, f"app={app}"):
            for cond in p["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason"):
                    return dict(cond)
        time.sleep(0.2)
    raise AssertionError(f"no PodScheduled verdict for {app} in {namespace}")


def test_default_nodes_carry_gpu_feature_discovery_labels(kube: Cluster) -> None:
    nodes = {
        n["metadata"]["name"]: n
        for n in json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    }
    h100, b200, cpu = nodes["gpu-h100-0"], nodes["gpu-b200-0"], nodes["cpu-0"]
    assert h100["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    assert h100["metadata"]["labels"]["nvidia.com/gpu.memory"] == "81559"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.family"] == "hopper"
    assert h100["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert b200["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-B200"
    assert b200["metadata"]["labels"]["nvidia.com/gpu.family"] == "blackwell"
    assert "nvidia.com/gpu" not in cpu["status"]["allocatable"]
    assert "nvidia.com/gpu.product" not in cpu["metadata"]["labels"]
    for node in (h100, b200, cpu):
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True"
        assert not node["spec"].get("taints")


def test_gpu_job_lands_on_the_h100_node_and_completes(kube: Cluster, namespace: str) -> None:
    selector = {"nvidia.com/gpu.product": H100}
    kube.apply(job("quantize", gpus=1, node_selector=selector), namespace=namespace)
    kube.wait_for("job/quantize", namespace, condition="Complete")
    (p,) = kube.pods(namespace, "app=quantize")
    assert p["spec"]["nodeName"] == "gpu-h100-0"
    assert p["status"]["phase"] == "Succeeded"
    done = kube.get("job", "quantize", namespace)
    assert done["status"]["succeeded"] == 1


def test_gpu_request_never_lands_on_the_cpu_node(kube: Cluster, namespace: str) -> None:
    for i in range(3):
        kube.apply(job(f"g{i}", gpus=2, fate="run-forever"), namespace=namespace)
    for i in range(3):
        kube.wait_for(f"job/g{i}", namespace, jsonpath="{.status.ready}=1")
    placed = {p["spec"]["nodeName"] for p in kube.pods(namespace, "batch.kubernetes.io/job-name")}
    assert placed <= {"gpu-h100-0", "gpu-b200-0"}


def test_more_gpus_than_any_node_has_stays_pending_unschedulable(
    kube: Cluster, namespace: str
) -> None:
    kube.apply(job("huge", gpus=9), namespace=namespace)
    cond = _scheduled_condition(kube, namespace, "huge")
    assert cond["status"] == "False"
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    (p,) = kube.pods(namespace, "app=huge")
    assert p["status"]["phase"] == "Pending"
    assert not p["spec"].get("nodeName")


def test_absent_gpu_product_stays_pending_with_the_selector_reason(
    kube: Cluster, namespace: str
) -> None:
    selector = {"nvidia.com/gpu.product": "NVIDIA-GB300"}
    kube.apply(job("gb300", gpus=1, node_selector=selector), namespace=namespace)
    cond = _scheduled_condition(kube, namespace, "gb300")
    assert cond["reason"] == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in cond["message"]


def test_added_node_makes_a_pending_job_schedulable(kube: Cluster, namespace: str) -> None:
    selector = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    kube.apply(job("a100", gpus=4, node_selector=selector), namespace=namespace)
    assert _scheduled_condition(kube, namespace, "a100")["reason"] == "Unschedulable"
    node = kube.add_node(f"gpu-a100-{namespace[-6:]}", gpu="A100", gpus=4)
    try:
        kube.wait_for("job/a100", namespace, condition="Complete")
        (p,) = kube.pods(namespace, "app=a100")
        assert p["spec"]["nodeName"] == node
    finally:
        kube.kubectl("delete", "node", node, "--wait=false")
