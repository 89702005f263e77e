"""The controller: one level-triggered `Reconciler.reconcile` that every trigger runs.

It reads the resource and its children fresh, calls the pure `prepare` / `decide`
(`kiln_operator.reconcile`), applies the Decision through `KubeApi`, and when the Decision asks
for one, sends the smoke request and decides again. Nothing is remembered between calls that the
cluster does not also hold, so a restarted operator continues where the previous one stopped.
`remove_artifacts` is the deletion flow of `artifacts.retention: delete`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kiln_operator.builders.cleanup import build_cleanup_job
from kiln_operator.conditions import now_rfc3339
from kiln_operator.config import OperatorConfig
from kiln_operator.jobstate import view_job
from kiln_operator.kube import ChildRejected, KubeApi, namespace_terminating
from kiln_operator.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES, PhaseClock
from kiln_operator.reconcile import (
    Decision,
    Event,
    Prepared,
    decide,
    decide_invalid,
    decide_rejected,
    prepare,
    recorded_plan_hash,
)
from kiln_operator.retention import plan_cleanup
from kiln_operator.smoke import SmokeScheduler
from kiln_operator.store import remove_published

__all__ = ["Reconciler", "artifacts_given_up", "outcome", "remove_artifacts"]

# Ready resources are re-examined this often even when nothing about them changed.
_RESYNC_READY_SECONDS = 300.0
# Phases that events move (the Deployment's rollout, the smoke test's answer): a look this often
# is the safety net for an event that never came. Other phases wait on what no watch shows (a
# log's progress, a claim or Secret appearing, a free Job slot) and are looked at every poll.
_EVENT_DRIVEN_PHASES = ("Deploying",)
_RESYNC_WAITING_SECONDS = 60.0
_POLLED_PHASES = ("Pending", "Queued", "Optimizing")
# Periodic looks at polled phases, across all resources: with more of them waiting than
# poll_seconds x this, each is looked at less often, so background work stays bounded instead
# of crowding out the reconciles that events ask for (a new resource's first among them).
_POLLED_LOOKS_PER_SECOND = 5.0


class Reconciler:
    """Converges one ModelOptimization at a time; safe to call from any trigger, any thread."""

    def __init__(self, api: KubeApi, config: OperatorConfig) -> None:
        self.api = api
        self.config = config
        self.clock = PhaseClock()
        self._locks: dict[str, threading.Lock] = {}
        # Resources with a reconcile waiting for their lock: it will read everything that
        # happened before it starts, so a further trigger meanwhile adds nothing.
        self._waiting: set[str] = set()
        self._guard = threading.Lock()
        self._last_done: dict[str, float] = {}
        # Reconciles under way of resources that have no plan recorded yet (their Job comes
        # out of this reconcile): follow-up work waits for them.
        self._first_looks = 0
        self.smoke = SmokeScheduler(config.smoke_timeout_seconds, self._after_smoke)

    def _after_smoke(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        self.reconcile(namespace, name)

    def _forget(self, key: str) -> None:
        """The resource is gone: drop everything kept for it."""
        self.clock.observe(key, None)
        self.smoke.forget(key)
        with self._guard:
            self._locks.pop(key, None)
            self._last_done.pop(key, None)

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def reconcile(
        self,
        namespace: str,
        name: str,
        *,
        periodic: bool = False,
        seen: dict[str, Any] | None = None,
    ) -> Decision | None:
        """Read the resource and its children, decide, apply. Returns what was decided.

        `seen` is the resource as the watch last delivered it: a periodic look at a settled
        resource then costs no API request at all."""
        key = f"{namespace}/{name}"
        if periodic and (self.busy_with_new() or (seen is not None and self._settled(key, seen))):
            return None  # the next tick looks again
        with self._guard:
            if key in self._waiting:
                return None  # coalesced into the reconcile already waiting
            self._waiting.add(key)
        with self._lock(key):
            with self._guard:
                self._waiting.discard(key)
            body = self.api.get_resource(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                self._forget(key)
                return None
            if periodic and self._settled(key, body):
                return None
            started = time.monotonic()
            try:
                decision = self._decide(body, resync=periodic)
                try:
                    self.api.execute(decision, body)
                except ChildRejected as rejected:
                    decision = decide_rejected(body, decision, rejected.message, now_rfc3339())
                    self.api.patch_status(body, decision.status)
                    for event in decision.events:
                        self.api.post_event(body, event)
            except ApiException as error:
                if namespace_terminating(error):
                    # Its namespace is going, and the resource with it: nothing left to converge.
                    self.api.log.info("%s: namespace is being deleted; not reconciling", key)
                    self._forget(key)
                    return None
                RECONCILE_ERRORS.labels(f"http_{error.status}").inc()
                raise
            RECONCILE_SECONDS.observe(time.monotonic() - started)
            RECONCILES.labels(decision.status.get("phase") or "Unknown").inc()
            self._log_outcome(key, body, decision)
            self.clock.observe(key, decision.status.get("phase"))
            self._last_done[key] = time.monotonic()
            return decision

    @contextmanager
    def first_look(self, body: dict[str, Any]) -> Iterator[None]:
        """Marks the reconcile run inside as a new resource's first (no plan recorded yet)."""
        first = not recorded_plan_hash(body)
        if first:
            with self._guard:
                self._first_looks += 1
        try:
            yield
        finally:
            if first:
                with self._guard:
                    self._first_looks -= 1

    def busy_with_new(self) -> bool:
        """Whether a new resource's first reconcile is under way: a burst of new resources gets
        their Jobs before anyone's follow-ups and periodic looks take the CPU."""
        return self._first_looks > 0

    def _log_outcome(self, key: str, body: dict[str, Any], decision: Decision) -> None:
        """One line whenever a resource's story changes, so the log tells it (Stalled reasons
        first: they are what someone must act on)."""
        summary = outcome(decision.status)
        if summary != outcome(body.get("status") or {}):
            level = logging.WARNING if summary.startswith("Stalled") else logging.INFO
            self.api.log.log(level, "%s: %s", key, summary)

    def _settled(self, key: str, body: dict[str, Any]) -> bool:
        """Whether a periodic look would learn nothing: the resource was examined recently
        enough for its phase (Ready and Failed rarely, phases that events move now and then,
        the rest every poll)."""
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"].get("generation"):
            return False
        phase = status.get("phase")
        age = time.monotonic() - self._last_done.get(key, 0.0)
        if phase in ("Ready", "Failed"):
            return age < _RESYNC_READY_SECONDS
        if phase in _EVENT_DRIVEN_PHASES:
            return age < _RESYNC_WAITING_SECONDS
        spread = self.clock.count(_POLLED_PHASES) / _POLLED_LOOKS_PER_SECOND
        return spread > self.config.poll_seconds and age < spread

    def _decide(self, body: dict[str, Any], *, resync: bool = False) -> Decision:
        prepared = prepare(body, self.config)
        now = now_rfc3339()
        if not isinstance(prepared, Prepared):
            return decide_invalid(body, prepared, now)
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        observed = self.api.observe(prepared, self.config, resync=resync)
        if observed.job is not None:
            self.clock.observe_job(key, view_job(observed.job, observed.job_pods).state)
        decision = decide(prepared, observed, self.config, now)
        if decision.smoke is not None:
            latest = self.smoke.latest(key, decision.smoke.plan_hash)
            if latest is None or not latest.ok:
                # The first test, or a retry once a failed one waited out its delay.
                self.smoke.ask(key, decision.smoke)
            if latest is not None:
                observed.smoke = latest
                decision = decide(prepared, observed, self.config, now)
                if latest.ok:
                    self.smoke.forget(key)
        return decision


def outcome(status: dict[str, Any]) -> str:
    """A resource's state in one line: `Stalled Failed (InvalidSpec): ...`, `Ready (...)`."""
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("Stalled", "Ready", "Reconciling"):
        condition = conditions.get(kind)
        if condition and condition.get("status") == "True":
            return (
                f"{kind if kind == 'Stalled' else ''} {status.get('phase')} "
                f"({condition.get('reason')}): {condition.get('message')}"
            ).strip()
    return f"{status.get('phase') or 'Pending'}"


def artifacts_given_up(
    reconciler: Reconciler, body: dict[str, Any], tries: int, error: Exception
) -> None:
    """The last try to remove a deleted resource's artifacts failed: an Event says they stay."""
    status = body.get("status") or {}
    reason = getattr(error, "message", None) or str(error) or type(error).__name__
    reconciler.api.post_event(
        body,
        Event(
            "Warning",
            "ArtifactsNotRemoved",
            f"gave up removing the artifacts of plan {status.get('planHash')} after {tries} "
            f"tries ({reason}); they stay in the store: remove them by hand",
        ),
    )


def remove_artifacts(reconciler: Reconciler, body: dict[str, Any], logger: logging.Logger) -> None:
    """Delete the resource's published plan unless another resource uses it.

    Raises:
        kopf.TemporaryError: the cleanup Job is still running (kopf calls again).
        kopf.PermanentError: the cleanup Job failed; the artifacts stay, an Event says so.
    """
    api, config = reconciler.api, reconciler.config
    cleanup = plan_cleanup(body, api.list_resources(), config.default_store)
    if cleanup.action == "nothing" or cleanup.plan_hash is None or cleanup.store is None:
        return
    if cleanup.action == "keep-shared":
        api.post_event(
            body,
            Event(
                "Normal",
                "ArtifactsKept",
                f"plan {cleanup.plan_hash} is still used by "
                f"{', '.join(cleanup.shared_with)}; its artifacts stay",
            ),
        )
        return
    namespace = body["metadata"]["namespace"]
    if remove_published(cleanup.store, cleanup.plan_hash, config.store_mounts, namespace):
        logger.info("removed artifacts of plan %s", cleanup.plan_hash)
        return
    job = build_cleanup_job(body, cleanup.plan_hash, cleanup.store, config)
    state = api.run_once(job)
    if state == "Failed":
        api.post_event(
            body,
            Event(
                "Warning",
                "ArtifactsNotRemoved",
                f"Job {job['metadata']['name']} could not remove "
                f"{cleanup.store}/{cleanup.plan_hash}; remove it by hand",
            ),
        )
        raise kopf.PermanentError("artifact cleanup failed")
    if state != "Succeeded":
        raise kopf.TemporaryError("waiting for the artifact cleanup Job", delay=5)
