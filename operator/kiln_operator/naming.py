"""Deterministic names and labels of everything Kiln creates for a ModelOptimization.

A child's name depends only on the resource's name and the plan hash, so a handler that runs
twice, or an operator that restarts mid-flight, finds the child it already created.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "APPLIED_ANNOTATION",
    "COMPONENT_LABEL",
    "HASH_LABEL",
    "MANAGED_BY_LABEL",
    "OWNER_LABEL",
    "admin_secret_name",
    "child_labels",
    "cleanup_job_name",
    "deployment_name",
    "job_name",
    "plan_configmap_name",
    "selector_labels",
    "service_name",
    "short_hash",
]

OWNER_LABEL = "kiln.dev/model-optimization"
HASH_LABEL = "kiln.dev/plan-hash"
# On the Triton Deployment: the digest of the serving children as last written.
APPLIED_ANNOTATION = "kiln.dev/applied-digest"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY = "kiln"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

_HASH_CHARS = 10
# Jobs put their name into a pod label (max 63); Services into DNS labels (max 63).
_MAX_NAME = 63


def short_hash(plan_hash: str) -> str:
    """The plan hash as it appears in names."""
    return plan_hash[:_HASH_CHARS]


def _fit(base: str, suffix: str) -> str:
    """`base-suffix` within 63 characters; a long base is cut and made unique by a digest."""
    name = f"{base}-{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:6]
    keep = _MAX_NAME - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-.')}-{digest}-{suffix}"


def job_name(name: str, plan_hash: str) -> str:
    """The optimization Job of one plan."""
    return _fit(name, f"opt-{short_hash(plan_hash)}")


def plan_configmap_name(name: str, plan_hash: str) -> str:
    """The ConfigMap holding one plan's JSON."""
    return _fit(name, f"plan-{short_hash(plan_hash)}")


def cleanup_job_name(name: str, plan_hash: str) -> str:
    """The Job that deletes one plan's artifacts (retention: delete)."""
    return _fit(name, f"rm-{short_hash(plan_hash)}")


def deployment_name(name: str) -> str:
    """The Triton Deployment; stable across plans so a new plan rolls out in place."""
    return _fit(name, "triton")


def service_name(name: str) -> str:
    """The Service in front of Triton (and the PodDisruptionBudget)."""
    return _fit(name, "triton")


def admin_secret_name(name: str) -> str:
    """The Secret holding the key of Triton's restricted admin APIs."""
    return _fit(name, "triton-admin")


def selector_labels(name: str, component: str) -> dict[str, str]:
    """Labels that select one resource's pods of one component (immutable in a Deployment)."""
    return {OWNER_LABEL: name, COMPONENT_LABEL: component}


def child_labels(name: str, component: str, plan_hash: str | None = None) -> dict[str, str]:
    """Labels on every child: recommended app.kubernetes.io labels plus Kiln's own."""
    labels = {
        "app.kubernetes.io/name": "kiln",
        INSTANCE_LABEL: name,
        MANAGED_BY_LABEL: MANAGED_BY,
        **selector_labels(name, component),
    }
    if plan_hash:
        labels[HASH_LABEL] = short_hash(plan_hash)
    return labels
