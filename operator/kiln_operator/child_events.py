"""Which child events are worth a reconcile.

A Job's pod changes many times on its way (scheduled, image pulled, IP assigned, labels
written, conditions probed), and each change is a watch event. Kiln acts on only a few of its
facts: the phase, why a container waits or ended, whether it can be scheduled. Reconciling on
every event multiplies the API requests per resource; reconciling on changes of these facts
only is what the decision needs (the periodic look and the resource's own events catch the
rest).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["ChildChanges", "Debouncer", "signature"]


def _conditions(status: Mapping[str, Any]) -> tuple[tuple[Any, ...], ...]:
    return tuple(
        sorted(
            (c.get("type"), c.get("status"), c.get("reason"))
            for c in status.get("conditions") or []
        )
    )


def _containers(status: Mapping[str, Any]) -> tuple[tuple[Any, ...], ...]:
    found = []
    for container in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        state = container.get("state") or {}
        for phase, detail in state.items():
            found.append(
                (container.get("name"), phase, (detail or {}).get("reason"), container.get("ready"))
            )
    return tuple(sorted(found))


def signature(kind: str, body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The facts of a child that Kiln's decision reads; equal signatures, same decision."""
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    if kind == "Pod":
        return (status.get("phase"), _conditions(status), _containers(status))
    if kind == "Job":
        counts = tuple(status.get(k) for k in ("active", "succeeded", "failed", "ready"))
        return (spec.get("suspend"), counts, _conditions(status))
    counts = tuple(
        status.get(k)
        for k in ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas")
    )
    return (body.get("metadata", {}).get("generation"), counts, _conditions(status))


class ChildChanges:
    """The last signature seen per child (by uid), so a repeat is recognised; thread-safe."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def changed(self, event_type: str, kind: str, body: Mapping[str, Any]) -> bool:
        """Whether this event changes a fact Kiln acts on (deletions always do)."""
        uid = (body.get("metadata") or {}).get("uid") or ""
        with self._lock:
            if event_type == "DELETED":
                self._seen.pop(uid, None)
                return True
            new = signature(kind, body)
            if self._seen.get(uid) == new:
                return False
            self._seen[uid] = new
            return True


class Debouncer:
    """Runs `action(key)` once per burst of triggers: the first trigger schedules it `delay`
    seconds later and the triggers until then join it. A Job's pod and a rollout each change
    several facts within a second; one reconcile then reads them all.

    One scheduler thread and a small pool run the actions, however many keys are waiting.
    While `hold()` is true, due actions wait (up to `max_hold` seconds each): what holds them
    has priority for the CPU.
    """

    def __init__(
        self,
        action: Callable[[str], None],
        delay: float = 0.5,
        workers: int = 4,
        on_error: Callable[[str, BaseException], None] | None = None,
        hold: Callable[[], bool] = lambda: False,
        max_hold: float = 5.0,
    ) -> None:
        self._action, self._delay, self._on_error = action, delay, on_error
        self._hold, self._max_hold = hold, max_hold
        self._due: list[tuple[float, str]] = []
        self._pending: set[str] = set()
        self._wake = threading.Condition()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="kiln-child-events")
        threading.Thread(target=self._schedule, name="kiln-debouncer", daemon=True).start()

    def trigger(self, key: str) -> None:
        with self._wake:
            if key in self._pending:
                return
            self._pending.add(key)
            heapq.heappush(self._due, (time.monotonic() + self._delay, key))
            self._wake.notify()

    def _schedule(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._wake.wait(timeout)
                due, key = heapq.heappop(self._due)
                self._pending.discard(key)
            while self._hold() and time.monotonic() - due < self._max_hold:
                time.sleep(0.05)
            self._pool.submit(self._run, key)

    def _run(self, key: str) -> None:
        try:
            self._action(key)
        except Exception as error:  # the next event or the periodic look tries again
            if self._on_error is not None:
                self._on_error(key, error)
