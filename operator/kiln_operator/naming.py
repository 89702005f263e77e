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
    "candidate_service_name",
    "child_labels",
    "cleanup_job_name",
    "deployment_name",
    "job_name",
    "plan_configmap_name",
    "selector_labels",
    "service_name",
    "serving_check_job_name",
    "serving_selector",
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


def deployment_name(name: str, plan_hash: str) -> str:
    """The Triton Deployment serving one plan (a revision): a new plan gets its own, so the
    one serving keeps serving until the new one is validated."""
    return _fit(name, f"triton-{short_hash(plan_hash)}")


def service_name(name: str) -> str:
    """The Service clients use, in front of the promoted revision (and the PDB)."""
    return _fit(name, "triton")


def candidate_service_name(name: str) -> str:
    """The Service in front of the current plan's revision, promoted or not: the smoke test
    and the served-model evaluation reach a new revision through it before clients do."""
    return _fit(name, "triton-candidate")


def serving_check_job_name(name: str, plan_hash: str, check_digest: str) -> str:
    """The Job that evaluates one plan's revision as served (evaluation.served/performance):
    changed thresholds (not part of the plan hash) are a new evaluation."""
    return _fit(name, f"check-{short_hash(plan_hash)}-{check_digest[:6]}")


def admin_secret_name(name: str) -> str:
    """The Secret holding the key of Triton's restricted admin APIs."""
    return _fit(name, "triton-admin")


def selector_labels(name: str, component: str) -> dict[str, str]:
    """Labels that select one resource's pods of one component (immutable in a Deployment)."""
    return {OWNER_LABEL: name, COMPONENT_LABEL: component}


def serving_selector(name: str, plan_hash: str) -> dict[str, str]:
    """Labels that select the Triton pods of one resource's revision."""
    return {**selector_labels(name, "serving"), HASH_LABEL: short_hash(plan_hash)}


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
