"""TensorRT-LLM engines for `engine.backend: tensorrt-llm`.

Two ways in, both producing `<plan hash>/engine/` (`config.json` + `rank<N>.engine`):

1. `trtllm-build` on the legacy TensorRT-LLM checkpoint (`<plan hash>/tensorrt_llm_checkpoint/`),
   which the runner writes with Model Optimizer's `export_tensorrt_llm_checkpoint` when
   `export.tensorrt_llm_checkpoint` is set. `trtllm-build` cannot read the unified HF checkpoint:
   it needs this legacy form (TensorRT-LLM layer names, `rank<N>.safetensors` already split for
   the Plan's TP x PP, quantization in its `config.json`). Converting from the quantized model in
   memory is the only conversion that keeps Model Optimizer's scales exactly, which is why the
   exporter and not TensorRT-LLM's `convert_checkpoint.py` writes it. The command is a fixed argv
   list (`trtllm_build_argv`), never a shell line.
2. Otherwise TensorRT-LLM's Python API builds from the unified HF checkpoint: its TensorRT-flavour
   `LLM` reads `hf_quant_config.json`, converts to the legacy checkpoint internally and builds
   with the same `BuildConfig`; `LLM.save` writes the engines.

Engines only run on the GPU model and with the TensorRT-LLM version that built them: both are
recorded in `<engine>/kiln_engine.json` and returned, and the Plan's `hardware.gpu_product` and
`runtime` image (both hashed) make them part of the cache key. Without TensorRT-LLM or a GPU the
stage raises `UnsupportedHardware`, or with `engine.allow_fallback` prints why and returns None;
the runner then serves the checkpoint with the Python backend.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TextIO

from kiln_jobs.errors import UnsupportedHardware, UserError
from kiln_jobs.plan import EnginePlan, Plan

__all__ = [
    "ENGINE_RECORD",
    "TRTLLM_CHECKPOINT_DIR",
    "EngineResult",
    "build_engine",
    "engine_files",
    "has_engine_builder",
    "llm_api_unavailable",
    "max_num_tokens",
    "trtllm_build_argv",
    "unavailable_reason",
]

# Relative to the plan-hash directory, beside `checkpoint/` (the runner's export writes it).
TRTLLM_CHECKPOINT_DIR = "tensorrt_llm_checkpoint"
ENGINE_RECORD = "kiln_engine.json"
# TensorRT-LLM's own default token budget per engine step.
_DEFAULT_MAX_NUM_TOKENS = 8192

Progress = Callable[..., None]


@dataclass(frozen=True)
class EngineResult:
    """Engines built for one Plan, and what they are tied to."""

    engine_dir: Path
    files: list[str]  # relative to engine_dir
    gpu: str
    tensorrt_llm_version: str
    method: str  # "trtllm-build" or "python-api"
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict[str, object]:
        """What `kiln_engine.json` holds."""
        return {
            "gpu": self.gpu,
            "tensorrt_llm_version": self.tensorrt_llm_version,
            "method": self.method,
            "command": self.command,
            "files": self.files,
            "seconds": round(self.seconds, 1),
        }


def max_num_tokens(engine: EnginePlan) -> int:
    """The engine's per-step token budget: a full batch of full prompts, within TensorRT-LLM's
    default, but never below one full prompt (a prompt must fit in one context step)."""
    return max(
        engine.max_input_len,
        min(engine.max_batch_size * engine.max_input_len, _DEFAULT_MAX_NUM_TOKENS),
    )


def trtllm_build_argv(
    plan: Plan, trtllm_checkpoint: Path, out_dir: Path, *, binary: str = "trtllm-build"
) -> list[str]:
    """The exact `trtllm-build` command for `plan`.

    TP and PP are not flags: they are fixed by the legacy checkpoint's `mapping`, which the
    exporter wrote for the Plan's parallelism. `--workers` builds the TP x PP ranks in parallel,
    one per GPU the Plan targets.

    Args:
        plan: The Plan (its `engine` section sets the limits).
        trtllm_checkpoint: The legacy TensorRT-LLM checkpoint directory.
        out_dir: Where the engines go.
        binary: The `trtllm-build` executable.
    """
    engine = plan.engine
    world = engine.tensor_parallel * engine.pipeline_parallel
    workers = max(1, min(world, plan.hardware.gpus or 1))
    return [
        binary,
        "--checkpoint_dir", str(trtllm_checkpoint),
        "--output_dir", str(out_dir),
        "--max_batch_size", str(engine.max_batch_size),
        "--max_input_len", str(engine.max_input_len),
        "--max_seq_len", str(engine.max_seq_len),
        "--max_num_tokens", str(max_num_tokens(engine)),
        "--gemm_plugin", "auto",
        "--workers", str(workers),
    ]  # fmt: skip


def llm_api_unavailable() -> str | None:
    """Why TensorRT-LLM's LLM API cannot serve here, or None when it can."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return (
            "TensorRT-LLM is not installed (it has no wheel for this platform or Python; it runs "
            "in Kiln's GPU job image)"
        )
    from kiln_jobs import hardware

    if not hardware.detect().is_cuda:
        return "TensorRT-LLM needs an NVIDIA GPU and this machine has no CUDA device"
    return None


def has_engine_builder() -> bool:
    """Whether this TensorRT-LLM still builds TensorRT engines (`trtllm-build`, or the
    TensorRT-flavour LLM API), which TensorRT-LLM removed upstream in July 2026."""
    if shutil.which("trtllm-build") is not None:
        return True
    try:
        return importlib.util.find_spec("tensorrt_llm._tensorrt_engine") is not None
    except ModuleNotFoundError:
        return False


def unavailable_reason() -> str | None:
    """Why TensorRT-LLM engines cannot be built here, or None when they can."""
    reason = llm_api_unavailable()
    if reason is not None:
        return reason
    if not has_engine_builder():
        return (
            f"this TensorRT-LLM ({_tensorrt_llm_version()}) has no engine builder: TensorRT-LLM "
            "removed its TensorRT engine backend in July 2026 (trtllm-build is gone); use "
            "engine.backend: pytorch, which serves the checkpoint through the LLM API without "
            "an engine, or a job image whose TensorRT-LLM still has trtllm-build"
        )
    return None


def engine_files(engine_dir: Path) -> list[str]:
    """The engine files (config and per-rank engines) under `engine_dir`, relative to it."""
    names = sorted(p.name for p in engine_dir.glob("rank*.engine"))
    return (["config.json"] if (engine_dir / "config.json").is_file() else []) + names


def _check_checkpoint_mapping(plan: Plan, trtllm_checkpoint: Path) -> None:
    config = json.loads((trtllm_checkpoint / "config.json").read_text())
    mapping = config.get("mapping", {})
    tp, pp = mapping.get("tp_size", 1), mapping.get("pp_size", 1)
    if (tp, pp) != (plan.engine.tensor_parallel, plan.engine.pipeline_parallel):
        raise UserError(
            f"engine: {trtllm_checkpoint} was exported for TP={tp} PP={pp}, but the Plan asks for "
            f"TP={plan.engine.tensor_parallel} PP={plan.engine.pipeline_parallel}"
        )


def _run_trtllm_build(argv: list[str], log: TextIO) -> None:
    """Run the build, copying its output line by line into `log` (any text stream)."""
    if shutil.which(argv[0]) is None:
        raise UnsupportedHardware(f"engine: `{argv[0]}` is not on PATH (TensorRT-LLM's CLI)")
    tail: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None  # PIPE above
        for line in process.stdout:
            log.write(line)
            tail = [*tail[-19:], line.rstrip()]
    if process.returncode != 0:
        last = "\n".join(tail)
        raise UserError(f"engine: trtllm-build exited with {process.returncode}:\n{last}")


def _build_with_python_api(plan: Plan, checkpoint_dir: Path, out_dir: Path) -> None:
    """Build through TensorRT-LLM's TensorRT-flavour LLM API (it converts the HF checkpoint)."""
    try:
        from tensorrt_llm._tensorrt_engine import LLM
    except ImportError:  # releases before the PyTorch backend became the default
        from tensorrt_llm import LLM
    from tensorrt_llm import BuildConfig

    engine = plan.engine
    build_config = BuildConfig(
        max_batch_size=engine.max_batch_size,
        max_input_len=engine.max_input_len,
        max_seq_len=engine.max_seq_len,
        max_num_tokens=max_num_tokens(engine),
    )
    llm = LLM(
        model=str(checkpoint_dir),
        tensor_parallel_size=engine.tensor_parallel,
        pipeline_parallel_size=engine.pipeline_parallel,
        build_config=build_config,
    )
    try:
        llm.save(str(out_dir))
    finally:
        llm.shutdown()


def _tensorrt_llm_version() -> str:
    try:
        return metadata.version("tensorrt_llm")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_engine(
    plan: Plan,
    checkpoint_dir: Path,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    out: TextIO | None = None,
) -> EngineResult | None:
    """Build the Plan's TensorRT-LLM engines, when its backend asks for them.

    Args:
        plan: The Plan.
        checkpoint_dir: The unified HF checkpoint (`<plan hash>/checkpoint`); the legacy
            checkpoint is looked for beside it, in `TRTLLM_CHECKPOINT_DIR`.
        out_dir: Where the engines go (`<plan hash>/engine`).
        progress: Called with (percent, message).
        out: Where the fallback reason and the build log go (default: stderr).

    Returns:
        The engines, or None when the Plan builds none (backend `pytorch` or `none`) or falls
        back to the Python backend because TensorRT-LLM cannot run here.

    Raises:
        UnsupportedHardware: TensorRT-LLM or a GPU is missing and the Plan does not allow the
            fallback.
        UserError: The legacy checkpoint does not match the Plan, or the build failed.
    """
    report = progress or (lambda percent, message="": None)
    stream = out or sys.stderr
    if plan.engine.backend != "tensorrt-llm":
        report(100.0, f"no engine to build (backend {plan.engine.backend})")
        return None
    reason = unavailable_reason()
    if reason is not None:
        if not plan.engine.allow_fallback:
            raise UnsupportedHardware(f"engine.backend tensorrt-llm: {reason}")
        print(f"engine: skipped, {reason}; serving with the Python backend", file=stream)
        report(100.0, "skipped: serving with the Python backend")
        return None
    return _build(plan, checkpoint_dir, out_dir, report, stream)


def _build(
    plan: Plan, checkpoint_dir: Path, out_dir: Path, report: Progress, stream: TextIO
) -> EngineResult:
    from kiln_jobs import hardware

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    trtllm_checkpoint = checkpoint_dir.parent / TRTLLM_CHECKPOINT_DIR
    if (trtllm_checkpoint / "config.json").is_file():
        _check_checkpoint_mapping(plan, trtllm_checkpoint)
        argv = trtllm_build_argv(plan, trtllm_checkpoint, out_dir)
        report(5.0, "trtllm-build " + " ".join(argv[1:]))
        _run_trtllm_build(argv, stream)
        method = "trtllm-build"
    else:
        argv = []
        report(5.0, "building from the HF checkpoint with TensorRT-LLM's LLM API")
        _build_with_python_api(plan, checkpoint_dir, out_dir)
        method = "python-api"
    files = engine_files(out_dir)
    if not any(name.endswith(".engine") for name in files):
        raise UserError(f"engine: the build finished but wrote no engine into {out_dir}")
    result = EngineResult(
        engine_dir=out_dir,
        files=files,
        gpu=hardware.detect().name,
        tensorrt_llm_version=_tensorrt_llm_version(),
        method=method,
        command=argv,
        seconds=time.monotonic() - started,
    )
    (out_dir / ENGINE_RECORD).write_text(json.dumps(result.record(), indent=2) + "\n")
    report(
        100.0,
        f"{len(files) - 1} engine(s) for {result.gpu}, TensorRT-LLM {result.tensorrt_llm_version}",
    )
    return result
