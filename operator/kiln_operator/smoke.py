"""Smoke tests: one real generation request against a served model, off kopf's workers.

A smoke test can take as long as its timeout (a model warming up, a hung Triton); run on kopf's
worker threads, a few of them would stall every reconcile and the admission webhook behind
them. `SmokeScheduler` runs them on a small pool of its own: the reconcile that asks for one
returns at once (the resource says SmokeTesting), the finished test triggers a reconcile that
picks its result up, and a failed one is retried with a growing delay. Its threads are daemons:
an operator told to stop exits at once instead of waiting out a hung request (results are
not kept across restarts anyway; the next operator asks again).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

from kiln_jobs.serving.client import InferenceFailed, generate
from kiln_operator.reconcile import SmokeRequest, SmokeResult

__all__ = ["SmokeScheduler", "smoke_test"]

log = logging.getLogger("kiln.smoke")
# Retry a failed smoke test after this long, doubling up to the maximum.
_FIRST_RETRY_SECONDS = 30.0
_MAX_RETRY_SECONDS = 300.0


def smoke_test(request: SmokeRequest, timeout: float = 120.0) -> SmokeResult:
    """Send the prompt; ok when the model answers with non-empty text."""
    url = urlparse(request.endpoint)
    try:
        reply = generate(
            url.netloc or url.path, request.model_name, request.prompt,
            max_tokens=request.max_tokens, protocol="http", timeout=timeout,
        )  # fmt: skip
    except InferenceFailed as error:
        return SmokeResult(request.plan_hash, False, error.message)
    if not reply.text.strip():
        return SmokeResult(request.plan_hash, False, "Triton answered with empty text")
    sample = " ".join(reply.text.split())[:120]
    return SmokeResult(
        request.plan_hash, True, f"{request.prompt!r} → {sample!r}",
        latency_ms=reply.seconds * 1000,
    )  # fmt: skip


class SmokeScheduler:
    """Runs smoke tests on its own threads and keeps each resource's latest result."""

    def __init__(self, timeout: float, on_done: Callable[[str], None], workers: int = 4) -> None:
        """Args:
        timeout: Longest one request may take.
        on_done: Called with the resource's key (`namespace/name`) when its test finished.
        workers: Smoke tests in flight at once.
        """
        self.timeout = timeout
        self.on_done = on_done
        self._pool = _DaemonPool(workers, "kiln-smoke")
        self._guard = threading.Lock()
        self._latest: dict[str, SmokeResult] = {}
        self._in_flight: set[str] = set()
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def latest(self, key: str, plan_hash: str) -> SmokeResult | None:
        """The most recent result for the resource's current plan, if any."""
        with self._guard:
            result = self._latest.get(key)
        return result if result is not None and result.plan_hash == plan_hash else None

    def ask(self, key: str, request: SmokeRequest) -> bool:
        """Start a smoke test unless one is in flight or a failed one is waiting out its delay.
        Returns whether one started."""
        with self._guard:
            if key in self._in_flight or time.monotonic() < self._not_before.get(key, 0.0):
                return False
            self._in_flight.add(key)
        self._pool.submit(self._run, key, request)
        return True

    def forget(self, key: str) -> None:
        """Drop what is kept for a resource (it passed, or it is gone)."""
        with self._guard:
            for table in (self._latest, self._not_before, self._failures):
                table.pop(key, None)

    def _run(self, key: str, request: SmokeRequest) -> None:
        try:
            result = smoke_test(request, self.timeout)
        except Exception as error:  # a bug must not leave the resource waiting forever
            log.exception("smoke test of %s failed unexpectedly", key)
            result = SmokeResult(request.plan_hash, False, f"smoke test error: {error}")
        with self._guard:
            self._in_flight.discard(key)
            self._latest[key] = result
            if result.ok:
                self._failures.pop(key, None)
                self._not_before.pop(key, None)
            else:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(_FIRST_RETRY_SECONDS * 2 ** (failures - 1), _MAX_RETRY_SECONDS)
                self._not_before[key] = time.monotonic() + delay
        try:
            self.on_done(key)
        except Exception:
            log.exception("reconcile of %s after its smoke test failed", key)

    def shutdown(self) -> None:
        """Stop taking work; running tests finish on their own."""
        self._pool.shutdown()


class _DaemonPool:
    """A fixed set of daemon threads working through a queue. Unlike ThreadPoolExecutor's, whose
    threads the interpreter joins at exit, they never hold up the process's exit."""

    def __init__(self, workers: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._workers = workers
        for number in range(workers):
            threading.Thread(target=self._work, name=f"{name}_{number}", daemon=True).start()

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self._tasks.put(lambda: fn(*args))

    def shutdown(self) -> None:
        """Queued work is dropped as each thread finishes what it is running."""
        while True:
            try:
                self._tasks.get_nowait()
            except queue.Empty:
                break
        for _ in range(self._workers):
            self._tasks.put(None)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:
                log.exception("smoke test crashed")
