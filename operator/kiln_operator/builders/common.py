"""Pieces every pod Kiln creates shares: the restricted container and pod, scratch volumes, the
store's credentials and storage mounts. The optimization Job, the Triton Deployment and the
cleanup Job are all assembled from these."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln_jobs.contract import PVC_ROOT, STORE_ENV_PREFIX
from kiln_jobs.plan import (
    DataRef,
    ModelRef,
    Plan,
    PruneDistillPlan,
    PTQPlan,
    QADPlan,
    QATPlan,
    SpeculativePlan,
    Technique,
)

__all__ = [
    "StoreLocation",
    "input_uris",
    "kiln_container",
    "pvc_mounts",
    "restricted_pod",
    "scratch_volumes",
    "split_store",
    "store_env_from",
]

Obj = dict[str, Any]


def _pod_security_context(uid: int) -> Obj:
    """Pod-level settings that meet the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> Obj:
    """Container-level settings that meet the restricted Pod Security Standard."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def kiln_container(
    name: str,
    *,
    image: str,
    command: Sequence[str],
    args: Sequence[str] = (),
    env: Iterable[Obj] = (),
    env_from: Iterable[Obj] = (),
    mounts: Iterable[Obj] = (),
    resources: Obj | None = None,
    **extra: Any,
) -> Obj:
    """A container that meets the restricted Pod Security Standard; HOME points at the writable
    /tmp (the root filesystem is read-only). `extra` adds fields such as ports or probes."""
    container: Obj = {
        "name": name,
        "image": image,
        "command": list(command),
        "args": list(args),
        "env": [{"name": "HOME", "value": "/tmp"}, *env],
        "envFrom": list(env_from),
        "volumeMounts": list(mounts),
        "securityContext": _container_security_context(),
        **extra,
    }
    if resources:
        container["resources"] = resources
    return container


def restricted_pod(uid: int, containers: list[Obj], volumes: list[Obj], **extra: Any) -> Obj:
    """A pod spec that meets the restricted Pod Security Standard and holds no API credentials
    (Kiln's pods never talk to the Kubernetes API)."""
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(uid),
        **extra,
        "containers": containers,
        "volumes": volumes,
    }


# NCCL and DataLoader workers use a few GiB of /dev/shm at most.
SHM_LIMIT = "8Gi"


def store_env_from(secret: str | None) -> list[Obj]:
    """The artifact store's credentials, by Secret reference, under `STORE_ENV_PREFIX`."""
    return [{"prefix": STORE_ENV_PREFIX, "secretRef": {"name": secret}}] if secret else []


def scratch_volumes(tmp_limit: str | None = None) -> tuple[list[Obj], list[Obj]]:
    """(volumes, mounts) for /tmp and shared memory: the root filesystem is read-only.

    /dev/shm is memory and counts against the container's memory, so it has a bound; /tmp
    holds downloads whose size only the resource knows (`tmp_limit`, from its
    ephemeral-storage request)."""
    volumes = [
        {"name": "tmp", "emptyDir": {"sizeLimit": tmp_limit} if tmp_limit else {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_LIMIT}},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    return volumes, mounts


@dataclass(frozen=True)
class StoreLocation:
    """An artifact store URI split into its parts."""

    scheme: str
    root: str  # claim (pvc) or bucket (s3) or path (file)
    prefix: str  # path inside it, no leading or trailing slash

    def plan_path(self, plan_hash: str) -> str:
        """Path of one plan's artifacts inside the claim or bucket."""
        return f"{self.prefix}/{plan_hash}" if self.prefix else plan_hash


def split_store(uri: str) -> StoreLocation:
    """`pvc://claim/a/b` → StoreLocation("pvc", "claim", "a/b")."""
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return StoreLocation(scheme, "/", rest.strip("/"))
    root, _, prefix = rest.partition("/")
    return StoreLocation(scheme, root, prefix.strip("/"))


def _technique_uris(technique: Technique) -> list[str]:
    data: list[DataRef | None] = []
    models: list[ModelRef | None] = []
    match technique:
        case PTQPlan():
            data.append(technique.calibration)
        case QATPlan():
            data.append(technique.training.data)
        case QADPlan():
            data.append(technique.training.data)
            models.append(technique.teacher)
        case SpeculativePlan():
            data.append(technique.training.data if technique.training else None)
            models.append(technique.draft)
        case PruneDistillPlan():
            data += [technique.importance, technique.distillation.data]
    return [ref.source for ref in [*data, *models] if ref is not None]


def input_uris(plan: Plan) -> list[str]:
    """Every model, data and task-source URI a Plan reads, each once."""
    uris = [plan.model.source, plan.evaluation.data.source]
    for technique in [*plan.techniques, *(t for rung in plan.evaluation.escalation for t in rung)]:
        uris += _technique_uris(technique)
    uris += [task.source for task in plan.evaluation.tasks if task.source]
    return list(dict.fromkeys(uris))


@dataclass
class _Claims:
    read_only: set[str] = field(default_factory=set)
    writable: set[str] = field(default_factory=set)


def pvc_mounts(plan: Plan, *, writable_store: bool = True) -> tuple[list[Obj], list[Obj]]:
    """(volumes, mounts) for every PVC a Plan touches; only the store's claim is writable, and
    only to the Job that publishes (`writable_store`)."""
    claims = _Claims()
    for uri in input_uris(plan):
        if uri.startswith("pvc://"):
            claims.read_only.add(split_store(uri).root)
    store = split_store(plan.output.store)
    if store.scheme == "pvc":
        (claims.writable if writable_store else claims.read_only).add(store.root)
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    for index, claim in enumerate(sorted(claims.read_only | claims.writable)):
        read_only = claim not in claims.writable
        name = f"pvc-{index}"
        volumes.append(
            {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        )
        mounts.append({"name": name, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": read_only})
    return volumes, mounts
