"""`make demo` as a user runs it: `kiln run -f examples/quickstart.yaml`, the real thing end to
end (SmolLM2, FP8, the gate, export, a real tritonserver), from the command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tritonservers() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "tritonserver"]


def test_make_demo_runs_the_quickstart_end_to_end(tmp_path: Path) -> None:
    before = set(_tritonservers())
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "kiln"), "run", "-f", str(REPO / "examples/quickstart.yaml"),
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=3600, cwd=REPO,
    )  # fmt: skip
    report = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kiln_progress" not in report, "a person reads bars, not JSON lines"
    assert "perplexity" in report and "gate 5%" in report
    assert "generated" in report
    assert "served text equals the checkpoint's greedy continuation: yes" in report
    assert (tmp_path / "demo" / "artifacts").is_dir()
    published = next((tmp_path / "demo" / "artifacts").iterdir())
    assert (published / "manifest.json").is_file()
    assert set(_tritonservers()) <= before, "kiln run left a tritonserver behind"

    # The same spec again: already published, straight to serving.
    again = subprocess.run(
        [str(REPO / ".venv" / "bin" / "kiln"), "run", "-f", str(REPO / "examples/quickstart.yaml"),
         "--workdir", str(tmp_path / "demo"), "--no-serve"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"published    {published} (reused)" in again.stdout
