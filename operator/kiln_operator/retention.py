"""`artifacts.retention: delete`: remove a resource's published plan when it is deleted.

Artifacts are shared by plan hash, so a plan another resource still uses is kept. The operator
removes the directory itself when it can see the store (config `store_mounts`); otherwise a
short Job in the resource's namespace does it with the job image and the store's credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kiln_operator.builders.common import (
    PVC_ROOT,
    container_security_context,
    pod_security_context,
    split_store,
)
from kiln_operator.builders.job import STORE_ENV_PREFIX
from kiln_operator.config import OperatorConfig
from kiln_operator.naming import child_labels, cleanup_job_name

__all__ = ["CleanupPlan", "build_cleanup_job", "plan_cleanup"]

Obj = dict[str, Any]


@dataclass(frozen=True)
class CleanupPlan:
    """What to do about one deleted resource's artifacts."""

    action: Literal["nothing", "keep-shared", "remove"]
    plan_hash: str | None = None
    store: str | None = None
    shared_with: tuple[str, ...] = ()


def _hashes(body: Obj) -> set[str]:
    status = body.get("status") or {}
    return {h for h in (status.get("planHash"), status.get("servingPlanHash")) if h}


def _published(body: Obj) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Optimized" and c.get("status") == "True" for c in conditions)


def plan_cleanup(body: Obj, others: list[Obj], default_store: str | None) -> CleanupPlan:
    """Decide, from the deleted resource and every other ModelOptimization in the cluster."""
    plan_hash = (body.get("status") or {}).get("planHash")
    store = ((body.get("spec") or {}).get("artifacts") or {}).get("store") or default_store
    if not plan_hash or not store or not _published(body):
        return CleanupPlan("nothing")
    uid = body["metadata"].get("uid")
    users = tuple(
        f"{o['metadata'].get('namespace')}/{o['metadata']['name']}"
        for o in others
        if o["metadata"].get("uid") != uid and plan_hash in _hashes(o)
    )
    if users:
        return CleanupPlan("keep-shared", plan_hash, store, users)
    return CleanupPlan("remove", plan_hash, store)


def build_cleanup_job(body: Obj, plan_hash: str, store: str, config: OperatorConfig) -> Obj:
    """A Job that deletes `<store>/<plan_hash>`; not owned by the resource (which is going away),
    and removed by the TTL controller after it finishes."""
    name = body["metadata"]["name"]
    location = split_store(store)
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[Obj] = [{"name": "tmp", "mountPath": "/tmp"}]
    env_from: list[Obj] = []
    if location.scheme == "pvc":
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": location.root}})
        mounts.append({"name": "store", "mountPath": f"{PVC_ROOT}/{location.root}"})
    secret = ((body.get("spec") or {}).get("artifacts") or {}).get("credentialsSecret")
    if secret:
        env_from.append({"prefix": STORE_ENV_PREFIX, "secretRef": {"name": secret}})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": cleanup_job_name(name, plan_hash),
            "namespace": body["metadata"]["namespace"],
            "labels": child_labels(name, "cleanup", plan_hash),
        },
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 1800,
            "template": {
                "metadata": {"labels": child_labels(name, "cleanup", plan_hash)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(config.uid),
                    "containers": [
                        {
                            "name": "cleanup",
                            "image": config.job_image,
                            "command": list(config.job_command),
                            "args": ["delete", "--store", store, "--plan-hash", plan_hash],
                            "env": [
                                {"name": "KILN_PVC_ROOT", "value": PVC_ROOT},
                                {"name": "HOME", "value": "/tmp"},
                            ],
                            "envFrom": env_from,
                            "volumeMounts": mounts,
                            "securityContext": container_security_context(),
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }
