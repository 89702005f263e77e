"""Small builders for the Kubernetes objects these tests create."""

from __future__ import annotations

from typing import Any

from tests.cluster.stages import FATE_LABEL

__all__ = ["RESTRICTED_SECURITY", "container", "deployment", "job", "pod"]

#: A container securityContext the ``restricted`` Pod Security Standard admits.
RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container(
    name: str = "main",
    command: list[str] | None = None,
    gpus: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A container; ``gpus`` requests and limits ``nvidia.com/gpu``."""
    c: dict[str, Any] = {
        "name": name,
        "image": "registry.invalid/kiln/test:1",
        "command": command or ["true"],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    }
    if gpus:
        c["resources"]["requests"]["nvidia.com/gpu"] = str(gpus)
        c["resources"]["limits"] = {"nvidia.com/gpu": str(gpus)}
    c.update(extra)
    return c


def _labels(name: str, fate: str | None, labels: dict[str, str] | None) -> dict[str, str]:
    out = {"app": name, **(labels or {})}
    if fate:
        out[FATE_LABEL] = fate
    return out


def job(
    name: str,
    *,
    gpus: int = 0,
    fate: str | None = None,
    annotations: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    backoff_limit: int = 6,
    pod_failure_policy: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    owner: dict[str, Any] | None = None,
    **pod_spec: Any,
) -> dict[str, Any]:
    """A batch/v1 Job with one ``restartPolicy: Never`` pod."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": containers or [container(gpus=gpus)],
        **pod_spec,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if volumes:
        spec["volumes"] = volumes
    obj: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {
                    "labels": _labels(name, fate, None),
                    "annotations": annotations or {},
                },
                "spec": spec,
            },
        },
    }
    if pod_failure_policy is not None:
        obj["spec"]["podFailurePolicy"] = {"rules": pod_failure_policy}
    if owner is not None:
        obj["metadata"]["ownerReferences"] = [owner]
    return obj


def deployment(
    name: str, *, replicas: int = 1, fate: str | None = None, progress_deadline: int = 600
) -> dict[str, Any]:
    """An apps/v1 Deployment of ``replicas`` pods labelled ``app=name``."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": progress_deadline,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": _labels(name, fate, None)},
                "spec": {"containers": [container(command=["serve"])]},
            },
        },
    }


def pod(name: str, *, security: dict[str, Any] | None = None, **pod_spec: Any) -> dict[str, Any]:
    """A bare v1 Pod with one container."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [container(securityContext=security or {})], **pod_spec},
    }
