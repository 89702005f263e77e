"""Prometheus metrics of the operator."""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = ["RECONCILES", "RECONCILE_ERRORS", "RECONCILE_SECONDS", "PhaseClock", "serve_metrics"]

RECONCILES = Counter("kiln_reconciles_total", "Reconciles by outcome", ["outcome"])
RECONCILE_ERRORS = Counter("kiln_reconcile_errors_total", "Reconciles that raised", ["error"])
RECONCILE_SECONDS = Histogram("kiln_reconcile_seconds", "Time spent in one reconcile")
PHASES = Gauge("kiln_model_optimizations", "ModelOptimizations by phase", ["phase"])
JOBS = Gauge("kiln_optimization_jobs", "Optimization Jobs by state", ["state"])
PHASE_SECONDS = Histogram(
    "kiln_phase_seconds",
    "Time a ModelOptimization spent in a phase before leaving it",
    ["phase"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 48 * 3600),
)


def serve_metrics(port: int) -> None:
    """Expose /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port)


class PhaseClock:
    """Tracks each resource's phase to observe time per phase and the per-phase gauges."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, float]] = {}
        self._counts: dict[str, int] = {}
        self._jobs: dict[str, str] = {}
        # Reconciles of different resources run on different threads.
        self._lock = threading.Lock()

    def observe(self, key: str, phase: str | None) -> None:
        """`phase` is the one just written to the resource's status (None: the resource is gone)."""
        with self._lock:
            now = time.monotonic()
            previous = self._since.get(key)
            if previous is not None and previous[0] == phase:
                return
            if previous is not None:
                PHASE_SECONDS.labels(previous[0]).observe(now - previous[1])
                self._counts[previous[0]] -= 1
            if phase is None:
                self._since.pop(key, None)
                self._jobs.pop(key, None)
            else:
                self._since[key] = (phase, now)
                self._counts[phase] = self._counts.get(phase, 0) + 1
            self._publish()

    def count(self, phases: tuple[str, ...]) -> int:
        """How many resources are in one of `phases` now."""
        with self._lock:
            return sum(self._counts.get(phase, 0) for phase in phases)

    def observe_job(self, key: str, job_state: str) -> None:
        """The state of the resource's optimization Job, as last read; its phase is untouched
        (the status being read may be older than the one last written)."""
        with self._lock:
            self._jobs[key] = job_state
            self._publish()

    def _publish(self) -> None:
        # Phases in the order a resource passes them: a scrape that lands mid-publish sees a
        # resource moving forward leave its old phase before it reaches the next.
        for phase in ("Pending", "Queued", "Optimizing", "Deploying", "Ready", "Failed"):
            PHASES.labels(phase).set(self._counts.get(phase, 0))
        job_counts: dict[str, int] = {}
        for state in self._jobs.values():
            job_counts[state] = job_counts.get(state, 0) + 1
        for state in (
            "Suspended",
            "Pending",
            "Unschedulable",
            "Blocked",
            "Running",
            "Succeeded",
            "Failed",
        ):
            JOBS.labels(state).set(job_counts.get(state, 0))
