"""Simulated nodes, labelled the way the NVIDIA GPU Operator's GPU feature discovery labels them.

kwok manages every node carrying :data:`KWOK_ANNOTATION`; it fills in conditions, addresses and
heartbeats, and the controller manager's ``nodelifecycle`` controller lifts the ``not-ready``
taint once the node reports Ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.cluster.stages import LOCAL_EXEC_NODE_PREFIX

__all__ = [
    "DEFAULT_NODES",
    "GPU_PRODUCTS",
    "KWOK_ANNOTATION",
    "LOCAL_EXEC_LABEL",
    "LOCAL_EXEC_NODE_SELECTOR",
    "LOCAL_EXEC_TAINT",
    "LOCAL_EXEC_TOLERATION",
    "GpuProduct",
    "NodeSpec",
    "node_manifest",
]

KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
#: Pods on nodes with this label are run for real by the local executor.
LOCAL_EXEC_LABEL = "test.kiln.dev/local-exec"
#: Local-exec nodes carry this taint, so only pods that ask for local execution land there.
LOCAL_EXEC_TAINT = {"key": LOCAL_EXEC_LABEL, "value": "true", "effect": "NoSchedule"}
#: What a pod needs to run on a local-exec node: this nodeSelector and this toleration.
LOCAL_EXEC_NODE_SELECTOR = {LOCAL_EXEC_LABEL: "true"}
LOCAL_EXEC_TOLERATION = {"key": LOCAL_EXEC_LABEL, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class GpuProduct:
    """What GPU feature discovery reports for one GPU model."""

    product: str
    memory_mib: int
    family: str
    compute_major: int
    compute_minor: int


GPU_PRODUCTS = {
    "H100": GpuProduct("NVIDIA-H100-80GB-HBM3", 81559, "hopper", 9, 0),
    "H200": GpuProduct("NVIDIA-H200", 143771, "hopper", 9, 0),
    "B200": GpuProduct("NVIDIA-B200", 183359, "blackwell", 10, 0),
    "A100": GpuProduct("NVIDIA-A100-SXM4-80GB", 81920, "ampere", 8, 0),
    "L40S": GpuProduct("NVIDIA-L40S", 46068, "ada-lovelace", 8, 9),
}


@dataclass(frozen=True)
class NodeSpec:
    """A node to create.

    Attributes:
        name: Node name; local-exec nodes must start with ``local-exec-``.
        gpu: Key of :data:`GPU_PRODUCTS`, a :class:`GpuProduct`, or None for a CPU node.
        gpus: Number of GPUs (allocatable ``nvidia.com/gpu``).
        cpu: Allocatable CPU.
        memory: Allocatable memory.
        pods: Allocatable pod count.
        labels: Extra labels.
        taints: Taints, as Kubernetes dicts.
        local_exec: Mark the node for the local executor.
    """

    name: str
    gpu: str | GpuProduct | None = None
    gpus: int = 8
    cpu: str = "96"
    memory: str = "1Ti"
    pods: str = "110"
    labels: dict[str, str] | None = None
    taints: tuple[dict[str, str], ...] = ()
    local_exec: bool = False


DEFAULT_NODES = (
    NodeSpec("gpu-h100-0", gpu="H100"),
    NodeSpec("gpu-b200-0", gpu="B200"),
    NodeSpec("cpu-0", cpu="16", memory="64Gi"),
)


def _gpu_labels(gpu: GpuProduct, count: int) -> dict[str, str]:
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": gpu.product,
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.memory": str(gpu.memory_mib),
        "nvidia.com/gpu.family": gpu.family,
        "nvidia.com/gpu.compute.major": str(gpu.compute_major),
        "nvidia.com/gpu.compute.minor": str(gpu.compute_minor),
        "nvidia.com/gpu.machine": "kwok-simulated",
    }


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    """The Node object for ``spec``, with capacity and GPU feature discovery labels.

    Raises:
        ValueError: For an unknown GPU product or a badly named local-exec node.
    """
    if spec.local_exec and not spec.name.startswith(LOCAL_EXEC_NODE_PREFIX):
        raise ValueError(f"local-exec node names must start with {LOCAL_EXEC_NODE_PREFIX!r}")
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    resources = {"cpu": spec.cpu, "memory": spec.memory, "pods": spec.pods}
    gpu = GPU_PRODUCTS[spec.gpu] if isinstance(spec.gpu, str) else spec.gpu
    if gpu is not None:
        labels |= _gpu_labels(gpu, spec.gpus)
        resources["nvidia.com/gpu"] = str(spec.gpus)
    if spec.local_exec:
        labels[LOCAL_EXEC_LABEL] = "true"
    labels |= spec.labels or {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "annotations": dict(KWOK_ANNOTATION), "labels": labels},
        "spec": {"taints": [dict(t) for t in spec.taints]},
        "status": {"allocatable": resources, "capacity": dict(resources)},
    }
