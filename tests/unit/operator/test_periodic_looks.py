"""How often the periodic timer looks at a resource again: bounded work however many wait."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from kiln_operator.config import OperatorConfig
from kiln_operator.controller import Reconciler
from kiln_operator.kube import KubeApi
from kiln_operator.metrics import PhaseClock

pytestmark = pytest.mark.unit


class ReadsCounted:
    """The only call a periodic look makes before deciding anything: count it."""

    def __init__(self) -> None:
        self.reads = 0

    def get_resource(self, namespace: str, name: str) -> None:
        self.reads += 1
        return None  # gone: nothing more to do


def _seen(phase: str) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "phase": phase}}


def _looks(reconciler: Reconciler, api: ReadsCounted, phase: str, age: float) -> int:
    before = api.reads
    reconciler._last_done["team/a"] = time.monotonic() - age
    reconciler.reconcile("team", "a", periodic=True, seen=_seen(phase))
    return api.reads - before


def test_optimizing_resources_are_looked_at_every_poll_while_few_wait(
    config: OperatorConfig,
) -> None:
    api = ReadsCounted()
    reconciler = Reconciler(cast(KubeApi, api), config)
    for index in range(10):
        reconciler.clock.observe(f"team/r{index}", "Optimizing")
    assert _looks(reconciler, api, "Optimizing", age=config.poll_seconds) == 1


def test_many_waiting_resources_share_a_bounded_rate_of_looks(config: OperatorConfig) -> None:
    api = ReadsCounted()
    reconciler = Reconciler(cast(KubeApi, api), config)
    for index in range(200):  # 200 at 5 looks/s: each one every 40 s
        reconciler.clock.observe(f"team/r{index}", "Optimizing")
    assert _looks(reconciler, api, "Optimizing", age=2 * config.poll_seconds) == 0
    assert _looks(reconciler, api, "Optimizing", age=41) == 1
    # Ready resources are not what makes looks scarce, and are looked at rarely anyway.
    assert _looks(reconciler, api, "Ready", age=41) == 0


def test_phase_counts_follow_each_resource() -> None:
    clock = PhaseClock()
    clock.observe("team/a", "Pending")
    clock.observe("team/b", "Optimizing")
    clock.observe("team/a", "Optimizing")
    clock.observe("team/a", "Optimizing")  # no change
    assert clock.count(("Optimizing",)) == 2 and clock.count(("Pending",)) == 0
    clock.observe("team/b", None)
    clock.observe("team/a", "Ready")
    assert clock.count(("Pending", "Queued", "Optimizing")) == 0
    assert clock.count(("Ready",)) == 1


def test_periodic_looks_wait_while_a_new_resource_gets_its_first_reconcile(
    config: OperatorConfig,
) -> None:
    api = ReadsCounted()
    reconciler = Reconciler(cast(KubeApi, api), config)
    with reconciler.first_look({"metadata": {"name": "new"}}):  # no plan recorded yet
        assert reconciler.busy_with_new()
        assert _looks(reconciler, api, "Optimizing", age=config.poll_seconds) == 0
    with reconciler.first_look({"status": {"planHash": "abc"}}):  # not new: no priority
        assert not reconciler.busy_with_new()
    assert _looks(reconciler, api, "Optimizing", age=config.poll_seconds) == 1
