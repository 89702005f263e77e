"""The Job that deletes one published plan's artifacts (`artifacts.retention: delete`)."""

from __future__ import annotations

from typing import Any

from kiln_jobs.contract import PVC_ROOT, PVC_ROOT_ENV
from kiln_operator.builders.common import (
    kiln_container,
    restricted_pod,
    split_store,
    store_env_from,
)
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import child_labels, cleanup_job_name

__all__ = ["build_cleanup_job"]

Obj = dict[str, Any]

# Deleting files is light; a namespace's quota accepts only pods that say what they use.
_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def build_cleanup_job(body: Obj, plan_hash: str, store: str, config: OperatorConfig) -> Obj:
    """A Job that deletes `<store>/<plan_hash>`; not owned by the resource (which is going away),
    and removed by the TTL controller after it finishes."""
    name = body["metadata"]["name"]
    location = split_store(store)
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    mounts: list[Obj] = [{"name": "tmp", "mountPath": "/tmp"}]
    if location.scheme == "pvc":
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": location.root}})
        mounts.append({"name": "store", "mountPath": f"{PVC_ROOT}/{location.root}"})
    secret = ((body.get("spec") or {}).get("artifacts") or {}).get("credentialsSecret")
    container = kiln_container(
        "cleanup",
        image=config.job_image,
        command=config.job_command,
        args=["delete", "--store", store, "--plan-hash", plan_hash],
        env=[{"name": PVC_ROOT_ENV, "value": PVC_ROOT}],
        env_from=store_env_from(secret),
        mounts=mounts,
        resources=_RESOURCES,
    )
    labels = child_labels(name, "cleanup", plan_hash)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": cleanup_job_name(name, plan_hash),
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
        },
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 1800,
            "template": {
                "metadata": {"labels": labels},
                "spec": restricted_pod(config.uid, [container], volumes, restartPolicy="Never"),
            },
        },
    }
