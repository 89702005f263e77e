"""The Dockerfile lints clean and builds the two images the chart and operator expect."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_targets_exist_and_run_unprivileged() -> None:
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S))
    assert set(stages) == {"operator", "job"}
    for name, body in stages.items():
        user = re.findall(r"^USER (\d+)", body, re.M)
        assert user and user[-1] != "0", f"{name} image must not run as root"


def test_operator_image_installs_no_ml_stack() -> None:
    operator = DOCKERFILE.split("AS operator", 1)[1].split("AS job", 1)[0]
    assert '".[operator]"' in operator and "jobs]" not in operator


def test_job_image_entry_point_is_the_runner_module() -> None:
    assert 'ENTRYPOINT ["python", "-m", "kiln_jobs"]' in DOCKERFILE
    assert (ROOT / "jobs" / "kiln_jobs" / "__main__.py").exists()


def test_job_image_installs_the_kiln_triton_backend() -> None:
    from kiln_jobs.contract import KILN_BACKEND
    from kiln_jobs.serving.triton_backend import backend_model_file

    job = DOCKERFILE.split("AS job", 1)[1]
    source = backend_model_file().relative_to(ROOT).as_posix()
    assert f"cp {source} /opt/tritonserver/backends/{KILN_BACKEND}/model.py" in job
