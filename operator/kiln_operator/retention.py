"""`artifacts.retention: delete`: remove a resource's published plan when it is deleted.

Artifacts are shared by plan hash within one store, so a plan another resource still uses from
the same store is kept. A `pvc://` store is a claim in the resource's own namespace, so the same
URI in two namespaces is two stores. The operator
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


def _store(body: Obj, default_store: str | None) -> str | None:
    return ((body.get("spec") or {}).get("artifacts") or {}).get("store") or default_store


def _store_identity(body: Obj, default_store: str | None) -> tuple[str, str | None]:
    """(namespace for a namespaced store, else "", store URI): equal means the same store."""
    store = _store(body, default_store)
    namespaced = bool(store and store.startswith("pvc://"))
    return (body["metadata"].get("namespace", "") if namespaced else "", store)


def _published(body: Obj) -> bool:
    optimized = find_condition((body.get("status") or {}).get("conditions") or [], OPTIMIZED)
    return optimized is not None and optimized.get("status") == "True"


def plan_cleanup(body: Obj, others: list[Obj], default_store: str | None) -> CleanupPlan:
    """Decide, from the deleted resource and every other ModelOptimization in the cluster."""
    plan_hash = (body.get("status") or {}).get("planHash")
    store = _store(body, default_store)
    if not plan_hash or not store or not _published(body):
        return CleanupPlan("nothing")
    uid = body["metadata"].get("uid")
    mine = _store_identity(body, default_store)
    users = tuple(
        f"{o['metadata'].get('namespace')}/{o['metadata']['name']}"
        for o in others
        if o["metadata"].get("uid") != uid
        and plan_hash in _hashes(o)
        and _store_identity(o, default_store) == mine
    )
    if users:
        return CleanupPlan("keep-shared", plan_hash, store, users)
    return CleanupPlan("remove", plan_hash, store)
