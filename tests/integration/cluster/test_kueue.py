"""Real Kueue admission in the test cluster: quota, suspension, flavor node selectors."""

from __future__ import annotations

import time

import pytest

from tests.cluster.kube import Cluster
from tests.cluster.kueue import QUEUE_LABEL
from tests.integration.cluster.manifests import job

pytestmark = pytest.mark.integration

H100 = "NVIDIA-H100-80GB-HBM3"
KUEUE_API = "kueue.x-k8s.io/v1beta2"


def _queues(kube: Cluster, namespace: str, gpus: int) -> str:
    cq = f"cq-{namespace}"[:63]
    quota = [{"name": "cpu", "nominalQuota": "100"}, {"name": "memory", "nominalQuota": "100Gi"},
             {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)}]  # fmt: skip
    kube.apply(
        {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": "h100"},
         "spec": {"nodeLabels": {"nvidia.com/gpu.product": H100}}},
        {"apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": cq},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                      "flavors": [{"name": "h100", "resources": quota}]}]}},
        {"apiVersion": KUEUE_API, "kind": "LocalQueue",
         "metadata": {"name": "lq", "namespace": namespace}, "spec": {"clusterQueue": cq}},
    )  # fmt: skip
    kube.wait_for(f"clusterqueue/{cq}", None, condition="Active")
    return cq


def _queued_job(name: str, gpus: int, fate: str | None = None) -> dict[str, object]:
    manifest = job(name, gpus=gpus, fate=fate)
    manifest["metadata"]["labels"] = {QUEUE_LABEL: "lq"}  # type: ignore[index]
    return manifest


def _suspended(kube: Cluster, namespace: str, name: str) -> bool:
    return bool(kube.get("job", name, namespace)["spec"].get("suspend"))


def test_kueue_admits_within_quota_and_holds_the_rest(kueue: Cluster, namespace: str) -> None:
    cq = _queues(kueue, namespace, gpus=8)
    try:
        kueue.apply(_queued_job("first", gpus=8, fate="run-forever"), namespace=namespace)
        kueue.wait_for("job/first", namespace, jsonpath="{.status.ready}=1", timeout=60)
        (pod,) = kueue.pods(namespace, "app=first")
        # Kueue injected the flavor's node labels; the scheduler honoured them.
        assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == H100
        assert pod["spec"]["nodeName"] == "gpu-h100-0"

        kueue.apply(_queued_job("second", gpus=1), namespace=namespace)
        time.sleep(2)  # give Kueue a chance to (wrongly) admit it
        assert _suspended(kueue, namespace, "second")
        assert kueue.pods(namespace, "app=second") == []
        messages = "jsonpath={.items[*].status.conditions[*].message}"
        workloads = kueue.kubectl("get", "workloads", "-n", namespace, "-o", messages).stdout
        assert "insufficient quota" in workloads.lower() or "couldn't assign flavors" in workloads

        kueue.set_fate(namespace, pod["metadata"]["name"], "succeed")
        kueue.wait_for("job/first", namespace, condition="Complete")
        kueue.wait_for("job/second", namespace, condition="Complete", timeout=60)
        assert not _suspended(kueue, namespace, "second")
    finally:
        kueue.kubectl("delete", "clusterqueue", cq, "--wait=false", check=False)
