"""Kubernetes-style conditions (metav1.Condition) kept the way controllers keep them.

`lastTransitionTime` changes only when a condition's status changes, so watchers (kstatus,
Argo CD, `kubectl wait`) see real transitions, not every reconcile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "CONDITIONS",
    "DEPLOYED",
    "OPTIMIZED",
    "READY",
    "RECONCILING",
    "SERVING_VALIDATED",
    "SMOKE_TESTED",
    "STALLED",
    "find_condition",
    "now_rfc3339",
    "set_condition",
]

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
OPTIMIZED = "Optimized"
DEPLOYED = "Deployed"
SMOKE_TESTED = "SmokeTested"
SERVING_VALIDATED = "ServingValidated"

#: Every condition a ModelOptimization carries, in the order people read them, with what it
#: means when True. kstatus and Argo CD read the first three; the rest are Kiln's stages.
CONDITIONS: tuple[tuple[str, str], ...] = (
    (READY, "the optimized model is published and, unless serving is off, served and answering"),
    (RECONCILING, "Kiln is making progress towards Ready"),
    (STALLED, "progress needs the user; the message says what to change"),
    (OPTIMIZED, "the current plan's artifacts are published"),
    (DEPLOYED, "Triton serves the current plan"),
    (SMOKE_TESTED, "a real generation request to the served model succeeded"),
    (
        SERVING_VALIDATED,
        "the current plan's revision passed the served-model evaluation (evaluation.served, "
        "evaluation.performance) and was promoted; absent when the spec asks for none",
    ),
)

ConditionStatus = Literal["True", "False", "Unknown"]
# Kubernetes caps condition messages at 32768 bytes; keep them readable well below that.
_MAX_MESSAGE = 4096


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The condition of a type, if present."""
    return next((c for c in conditions if c.get("type") == kind), None)


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """A new list with one condition set; its transition time kept when status is unchanged."""
    previous = find_condition(conditions, kind)
    transition = now
    if previous is not None and previous.get("status") == status:
        transition = previous.get("lastTransitionTime", now)
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:_MAX_MESSAGE],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    kept = [c for c in conditions if c.get("type") != kind]
    return [*kept, condition]
