"""The Triton model repository of a published plan: which runtime, which layout, which command.

`write_repository` picks the serving runtime from the Plan and what the engine stage produced,
writes `<plan hash>/triton/` and returns the runtime the manifest records:

| engine.backend | runtime               | layout                                            |
|----------------|-----------------------|---------------------------------------------------|
| pytorch        | `tensorrtllm-pytorch` | LLM API on the HF checkpoint (`llmapi_repository`) |
| tensorrt-llm   | `tensorrtllm-engine`  | engines + ensemble/BLS (`engine_repository`)      |
| none           | `python`              | Kiln's CPU runtime on PyTorch (`cpu_repository`)  |

`pytorch` is the default and what Triton's guide recommends; `tensorrt-llm` (engines and the
`inflight_batcher_llm` ensemble, marked deprecated upstream) is opt-in.

With `engine.allow_fallback` (local runs) a machine without TensorRT-LLM or a GPU gets the
`python` runtime whatever the backend, with the reason printed; without it a missing engine is an
error. The command that serves a repository is `kiln_jobs.contract.triton_argv`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from kiln_jobs.contract import (
    CHECKPOINT_DIR,
    ENGINE_DIR,
    MODEL_MOUNT,
    TRITON_DIR,
    Runtime,
    runtime_for,
)
from kiln_jobs.errors import UserError
from kiln_jobs.plan import Plan
from kiln_jobs.serving.cpu_repository import write_cpu_repository
from kiln_jobs.serving.engine import engine_files, unavailable_reason
from kiln_jobs.serving.engine_repository import write_engine_repository
from kiln_jobs.serving.llmapi_repository import LLMAPI_MODEL, write_llmapi_repository

__all__ = ["choose_runtime", "served_model", "write_repository"]

# runtime -> writer(plan, repository, mount)
_WRITERS: dict[Runtime, Callable[[Plan, Path, str], None]] = {
    "tensorrtllm-engine": write_engine_repository,
    "tensorrtllm-pytorch": write_llmapi_repository,
    # The CPU layout refers to the checkpoint relatively: it needs no mount.
    "python": lambda plan, repository, _mount: write_cpu_repository(plan, repository),
}


def _has_engine(publish_dir: Path) -> bool:
    return any(name.endswith(".engine") for name in engine_files(publish_dir / ENGINE_DIR))


def _fallback_reason(plan: Plan, publish_dir: Path) -> str | None:
    """Why this machine cannot produce the Plan's GPU runtime, when the Plan may fall back."""
    engine = plan.engine
    if engine.backend == "tensorrt-llm" and not _has_engine(publish_dir):
        if not engine.allow_fallback:
            raise UserError(
                f"repository: the Plan serves TensorRT-LLM engines but {publish_dir / ENGINE_DIR} "
                "holds none"
            )
        return "no TensorRT-LLM engines were built"
    if engine.backend == "pytorch" and engine.allow_fallback:
        return unavailable_reason()
    return None


def choose_runtime(plan: Plan, publish_dir: Path, *, out: TextIO | None = None) -> Runtime:
    """The runtime that will serve `plan` from `publish_dir`.

    Raises:
        UserError: The Plan builds engines, none were built, and it allows no fallback.
    """
    reason = _fallback_reason(plan, publish_dir)
    if reason is not None:
        print(
            f"repository: {reason}; serving with the Python backend on PyTorch",
            file=out or sys.stderr,
        )
    return runtime_for(plan.engine.backend, fallback_reason=reason)


def served_model(runtime: str, plan: Plan) -> str:
    """The model a client sends prompts to for `runtime`."""
    if runtime == "tensorrtllm-engine":
        return "ensemble"
    if runtime == "tensorrtllm-pytorch":
        return LLMAPI_MODEL
    return plan.serving.model_name


def write_repository(plan: Plan, publish_dir: Path, *, mount: str = MODEL_MOUNT) -> Runtime:
    """Write `<publish_dir>/triton/` for `plan` (replacing an old one) and return its runtime.

    Args:
        plan: The Plan being published.
        publish_dir: The plan-hash directory being staged (holds `checkpoint/`, maybe `engine/`).
        mount: Where the Deployment mounts the plan-hash directory (TensorRT-LLM layouts refer to
            files by absolute path under it; the CPU layout by relative path).

    Returns:
        The manifest's `serving_runtime`.
    """
    if not (publish_dir / CHECKPOINT_DIR / "config.json").is_file():
        raise UserError(f"repository: no exported checkpoint in {publish_dir / CHECKPOINT_DIR}")
    runtime = choose_runtime(plan, publish_dir)
    repository = publish_dir / TRITON_DIR
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    _WRITERS[runtime](plan, repository, mount)
    return runtime
