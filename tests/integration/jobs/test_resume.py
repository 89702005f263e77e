"""A QAT job killed with SIGKILL after a checkpoint resumes from it when run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kiln_jobs.manifest import Manifest
from kiln_jobs.plan import DataRef, PTQPlan, QATPlan, TrainingPlan
from kiln_jobs.progress import parse_progress_line
from kiln_jobs.techniques._training import CHECKPOINT_FILE
from tests.unit.jobs.tiny import tiny_plan

pytestmark = pytest.mark.integration

STEPS = 60
# Generous: a cold `python -m kiln_jobs` imports torch and Model Optimizer first.
CHECKPOINT_WAIT_S = 600


def _job(plan_file: Path, workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "kiln_jobs", "run", "--plan", str(plan_file)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*argv, "--workdir", str(workdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _wait_for(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + CHECKPOINT_WAIT_S
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(
                f"the job ended ({process.returncode}) before a checkpoint:\n{log.read_text()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint after {CHECKPOINT_WAIT_S}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_a_killed_qat_job_resumes_from_its_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    training = TrainingPlan(
        steps=STEPS,
        learning_rate=1e-3,
        batch_size=2,
        data=DataRef(samples=16, seq_length=32),
        checkpoint_every=5,
    )
    ptq = PTQPlan(format="fp8", calibration=DataRef(samples=2, seq_length=32))
    plan = tiny_plan(tiny_model_dir, tmp_path / "store", (ptq, QATPlan(training=training)))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    workdir = tmp_path / "work"
    checkpoint = workdir / "runs" / plan.hash() / "attempt-1" / "01-qat" / CHECKPOINT_FILE

    first = _job(plan_file, workdir, tmp_path / "first.log")
    _wait_for(checkpoint, first, tmp_path / "first.log")
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    saved_step = int(torch.load(checkpoint, weights_only=True)["step"])
    assert 0 < saved_step < STEPS
    assert not (tmp_path / "store" / plan.hash()).exists()  # nothing half-published

    second = _job(plan_file, workdir, tmp_path / "second.log")
    assert second.wait(timeout=CHECKPOINT_WAIT_S) == 0, (tmp_path / "second.log").read_text()
    log = (tmp_path / "second.log").read_text()
    assert f"qat: resuming at step {saved_step + 1}" in log  # the log's progress bar
    updates = [u for u in map(parse_progress_line, log.splitlines()) if u is not None]
    assert ("publish", 100.0) in [(u.stage, u.percent) for u in updates]
    manifest = Manifest.model_validate_json(
        (tmp_path / "store" / plan.hash() / "manifest.json").read_text()
    )
    qat = next(stage for stage in manifest.stages if stage.name == "qat")
    assert qat.metrics["resumed_from_step"] == saved_step
    assert qat.metrics["steps"] == STEPS
    assert not checkpoint.exists()  # scratch is cleaned once published
