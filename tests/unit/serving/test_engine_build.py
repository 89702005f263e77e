"""The engine stage: the exact trtllm-build command, the fallback, and a build run end to end
against a stand-in `trtllm-build` (TensorRT-LLM itself needs a GPU image)."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from kiln_jobs import hardware
from kiln_jobs.errors import ExitCode, UnsupportedHardware, UserError
from kiln_jobs.serving import engine
from kiln_jobs.serving.engine import (
    ENGINE_RECORD,
    TRTLLM_CHECKPOINT_DIR,
    build_engine,
    max_num_tokens,
    trtllm_build_argv,
)
from tests.unit.serving.plans import make_plan

pytestmark = pytest.mark.unit


def test_trtllm_build_argv_for_a_tp2_plan(tmp_path: Path) -> None:
    plan = make_plan(max_batch_size=16, max_input_len=1024, max_seq_len=2048, tensor_parallel=2)
    argv = trtllm_build_argv(plan, tmp_path / "ckpt", tmp_path / "engine")
    assert argv == [
        "trtllm-build",
        "--checkpoint_dir", str(tmp_path / "ckpt"),
        "--output_dir", str(tmp_path / "engine"),
        "--max_batch_size", "16",
        "--max_input_len", "1024",
        "--max_seq_len", "2048",
        "--max_num_tokens", "8192",
        "--gemm_plugin", "auto",
        "--workers", "2",
    ]  # fmt: skip


def test_max_num_tokens_fits_one_prompt_and_a_batch() -> None:
    assert max_num_tokens(make_plan(max_batch_size=4, max_input_len=512).engine) == 2048
    assert max_num_tokens(make_plan(max_batch_size=64, max_input_len=1024).engine) == 8192
    assert max_num_tokens(make_plan(max_batch_size=1, max_input_len=16384,
                                    max_seq_len=20000).engine) == 16384  # fmt: skip


def test_missing_tensorrt_llm_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine, "unavailable_reason", lambda: "TensorRT-LLM is not installed")
    with pytest.raises(UnsupportedHardware) as raised:
        build_engine(make_plan(), tmp_path / "checkpoint", tmp_path / "engine")
    assert raised.value.exit_code == ExitCode.UNSUPPORTED_HARDWARE
    assert raised.value.message == "engine.backend tensorrt-llm: TensorRT-LLM is not installed"


def test_a_tensorrt_llm_without_the_engine_builder_says_what_to_use(monkeypatch) -> None:
    # TensorRT-LLM removed trtllm-build upstream: its absence is refused with the way forward.
    monkeypatch.setattr(engine, "llm_api_unavailable", lambda: None)
    monkeypatch.setattr(engine, "has_engine_builder", lambda: False)
    reason = engine.unavailable_reason()
    assert reason is not None
    assert "no engine builder" in reason and "engine.backend: pytorch" in reason
    monkeypatch.setattr(engine, "has_engine_builder", lambda: True)
    assert engine.unavailable_reason() is None


def test_fallback_prints_why_and_builds_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine, "unavailable_reason", lambda: "no CUDA device")
    out, updates = io.StringIO(), []
    result = build_engine(
        make_plan(allow_fallback=True),
        tmp_path / "checkpoint",
        tmp_path / "engine",
        lambda percent, message="": updates.append((percent, message)),
        out=out,
    )
    assert result is None
    assert "no CUDA device" in out.getvalue() and "Python backend" in out.getvalue()
    assert updates[-1][0] == 100.0
    assert not (tmp_path / "engine").exists()


def test_this_machine_cannot_build_engines() -> None:
    # No GPU and no tensorrt_llm wheel for Python 3.11 here: the reason must say so.
    assert engine.unavailable_reason() is not None


def test_pytorch_backend_builds_nothing(tmp_path: Path) -> None:
    assert build_engine(make_plan(backend="pytorch"), tmp_path / "c", tmp_path / "e") is None


def _fake_trtllm_build(bin_dir: Path) -> Path:
    """A `trtllm-build` that records its argv and writes two rank engines."""
    script = bin_dir / "trtllm-build"
    script.write_text(
        "#!/bin/sh\n"
        'out=""; prev=""\n'
        'for a in "$@"; do [ "$prev" = "--output_dir" ] && out="$a"; prev="$a"; done\n'
        'printf "%s\\n" "$@" > "$out/argv.txt"\n'
        'echo "{}" > "$out/config.json"; touch "$out/rank0.engine" "$out/rank1.engine"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def gpu_machine(tmp_path: Path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_trtllm_build(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(engine, "unavailable_reason", lambda: None)
    gpu = hardware.Accelerator(device="cuda", name="NVIDIA H100 80GB HBM3", family="hopper")
    monkeypatch.setattr(hardware, "detect", lambda: gpu)
    return tmp_path


def _legacy_checkpoint(publish: Path, tp: int, pp: int) -> Path:
    (publish / "checkpoint").mkdir(parents=True)
    legacy = publish / TRTLLM_CHECKPOINT_DIR
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"mapping": {"tp_size": tp, "pp_size": pp}}))
    return legacy


def test_build_runs_trtllm_build_and_records_gpu_and_version(gpu_machine: Path) -> None:
    publish = gpu_machine / "publish"
    legacy = _legacy_checkpoint(publish, tp=2, pp=1)
    plan = make_plan()
    result = build_engine(plan, publish / "checkpoint", publish / "engine", out=io.StringIO())
    assert result is not None
    assert result.files == ["config.json", "rank0.engine", "rank1.engine"]
    assert result.gpu == "NVIDIA H100 80GB HBM3"
    assert result.method == "trtllm-build"
    recorded = (publish / "engine" / "argv.txt").read_text().split()
    assert recorded == trtllm_build_argv(plan, legacy, publish / "engine")[1:]
    record = json.loads((publish / "engine" / ENGINE_RECORD).read_text())
    assert record["gpu"] == result.gpu
    assert record["tensorrt_llm_version"] == result.tensorrt_llm_version


def test_legacy_checkpoint_must_match_the_plans_parallelism(gpu_machine: Path) -> None:
    publish = gpu_machine / "publish"
    _legacy_checkpoint(publish, tp=1, pp=1)
    with pytest.raises(UserError, match="TP=1 PP=1"):
        build_engine(make_plan(), publish / "checkpoint", publish / "engine")
