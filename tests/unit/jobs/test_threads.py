"""CPU thread sizing from the cgroup quota and the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln_jobs.threads import configure_cpu_threads, cpu_budget

pytestmark = pytest.mark.unit


def test_quota_caps_the_affinity(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cpu_budget(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("max 100000\n")
    assert cpu_budget(cpu_max) == len(os.sched_getaffinity(0))
    assert cpu_budget(tmp_path / "absent") == len(os.sched_getaffinity(0))


def test_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("KILN_CPU_THREADS", "3")
    assert configure_cpu_threads() == 3
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
