"""`python -m kiln_jobs`: exit codes, one clear line, and the termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln_jobs.__main__ import main
from kiln_jobs.errors import ExitCode
from kiln_jobs.plan import DataRef, Plan, PTQPlan
from tests.unit.jobs.tiny import tiny_plan

pytestmark = pytest.mark.unit


def _write_plan(tmp_path: Path, fmt: str = "nvfp4") -> Path:
    plan = tiny_plan(
        tmp_path / "no-model",
        tmp_path / "store",
        (PTQPlan(format=fmt, calibration=DataRef(samples=1, seq_length=8)),),
    )
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    return path


def test_plan_hash_prints_the_artifacts_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_plan(tmp_path)
    assert main(["plan-hash", "--plan", str(path)]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == Plan.from_json(path.read_text()).hash()


def test_a_user_error_is_one_line_its_exit_code_and_a_termination_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    termination = tmp_path / "termination-log"
    code = main(
        [
            "run",
            "--plan",
            str(_write_plan(tmp_path)),
            "--workdir",
            str(tmp_path / "work"),
            "--termination-log",
            str(termination),
        ]
    )
    assert code == ExitCode.UNSUPPORTED_HARDWARE
    err = capsys.readouterr().err
    failure = [line for line in err.splitlines() if line.startswith("kiln:")]
    assert failure == [
        "kiln: UnsupportedHardware: ptq: format nvfp4 needs an NVIDIA Blackwell GPU (e.g. B200); "
        "this machine has no CUDA device"
    ]
    assert "Traceback" not in err
    result = json.loads(termination.read_text())
    assert (result["ok"], result["reason"]) == (False, "UnsupportedHardware")
    assert result["stages"][0] == {
        "name": "preflight",
        "state": "Failed",
        "seconds": result["stages"][0]["seconds"],
        "message": result["message"],
        "metrics": {},
    }


def test_a_missing_plan_file_and_an_invalid_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--workdir", str(tmp_path), "--plan"]
    assert main([*args, str(tmp_path / "none.json")]) == ExitCode.SOURCE_NOT_FOUND
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"api_version": "kiln.dev/plan-v1", "techniques": []}))
    assert main([*args, str(bad)]) == ExitCode.USER_ERROR
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kiln:")]
    assert lines[0].endswith("none.json does not exist")
    assert "is not a valid Plan: metadata: Field required" in lines[1]


def test_a_bug_gives_a_traceback_and_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln_jobs import runner

    def broken(self: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner.Run, "execute", broken)
    termination = tmp_path / "termination-log"
    argv = ["run", "--plan", str(_write_plan(tmp_path, "fp8")), "--workdir", str(tmp_path)]
    assert main([*argv, "--termination-log", str(termination)]) == ExitCode.BUG
    assert "Traceback" in capsys.readouterr().err
    assert json.loads(termination.read_text())["reason"] == "Bug"
