"""`artifacts.retention: delete`: remove a resource's published plan when it is deleted.

Artifacts are shared by plan hash, so a plan another resource still uses is kept. The operator
removes the directory itself when it can see the store (config `store_mounts`); otherwise a
short Job in the resource's namespace does it with the job image and the store's credentials
(`builders.cleanup`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kiln_operator.conditions import OPTIMIZED, find_condition

__all__ = ["CleanupPlan", "plan_cleanup"]

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
    optimized = find_condition((body.get("status") or {}).get("conditions") or [], OPTIMIZED)
    return optimized is not None and optimized.get("status") == "True"


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
