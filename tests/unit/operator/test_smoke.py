"""Smoke tests run off the reconcile threads, with a growing delay between failed attempts."""

from __future__ import annotations

import threading

import pytest

from kiln_operator import smoke
from kiln_operator.reconcile import SmokeRequest

pytestmark = pytest.mark.unit

# Nothing listens on port 1: every attempt fails at once (connection refused).
REQUEST = SmokeRequest("http://127.0.0.1:1", "model", "Hi", 4, "plan-a")


def test_a_failed_smoke_test_waits_before_it_is_tried_again() -> None:
    done = threading.Event()
    scheduler = smoke.SmokeScheduler(timeout=5, on_done=lambda key: done.set(), workers=1)
    try:
        assert scheduler.ask("ns/m", REQUEST)
        assert done.wait(10)
        result = scheduler.latest("ns/m", "plan-a")
        assert result is not None and not result.ok and "failed" in result.message
        assert scheduler.latest("ns/m", "plan-b") is None  # another plan's result is not this one's
        assert not scheduler.ask("ns/m", REQUEST)  # within its delay
        scheduler.forget("ns/m")
        assert scheduler.latest("ns/m", "plan-a") is None and scheduler.ask("ns/m", REQUEST)
    finally:
        scheduler.shutdown()


def test_one_smoke_test_in_flight_per_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(request: SmokeRequest, timeout: float) -> smoke.SmokeResult:
        release.wait(10)
        return smoke.SmokeResult(request.plan_hash, True, "ok")

    monkeypatch.setattr(smoke, "smoke_test", hang)
    finished = threading.Event()
    scheduler = smoke.SmokeScheduler(timeout=5, on_done=lambda key: finished.set(), workers=2)
    try:
        assert scheduler.ask("ns/m", REQUEST)
        assert not scheduler.ask("ns/m", REQUEST)
        release.set()
        assert finished.wait(10)
        result = scheduler.latest("ns/m", "plan-a")
        assert result is not None and result.ok
    finally:
        scheduler.shutdown()
