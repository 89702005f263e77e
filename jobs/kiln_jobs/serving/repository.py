"""The Triton model repository of a published plan: which runtime, which layout.

`write_repository` picks the serving runtime from the Plan and what the engine stage produced,
writes `<plan hash>/triton/` and returns what the manifest records (runtime and speculation):

| engine.backend | runtime               | layout                                              |
|----------------|-----------------------|-----------------------------------------------------|
| pytorch        | `tensorrtllm-pytorch` | LLM API on the HF checkpoint (`llm_repository`)     |
| tensorrt-llm   | `tensorrtllm-engine`  | engines + BLS pipeline (`engine_repository`), legacy |
| none           | `python`              | Kiln's PyTorch runtime (`llm_repository`)           |

Every layout serves one model named `spec.serving.modelName` that speaks the serving contract
(`kiln_jobs.contract.serving`). `pytorch` is the default and what Triton's guide recommends;
`tensorrt-llm` (engines, which TensorRT-LLM removed upstream in July 2026) is opt-in.

With `engine.allow_fallback` (local runs) a machine without TensorRT-LLM or a GPU gets the
`python` runtime whatever the backend, with the reason printed; without it a missing engine is an
error. The command that serves a repository is `kiln_jobs.contract.triton_argv`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
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
from kiln_jobs.manifest import Speculation
from kiln_jobs.plan import Plan
from kiln_jobs.serving.engine import engine_files, llm_api_unavailable
from kiln_jobs.serving.engine_repository import write_engine_repository
from kiln_jobs.serving.llm_repository import speculation, write_llm_repository

__all__ = ["ServedRepository", "choose_runtime", "write_repository"]

# runtime -> writer(plan, repository, mount)
_WRITERS: dict[Runtime, Callable[[Plan, Path, str], None]] = {
    "tensorrtllm-engine": write_engine_repository,
    # The LLM layout refers to the plan's files relatively: it needs no mount.
    "tensorrtllm-pytorch": lambda plan, repo, _mount: write_llm_repository(
        plan, repo, "tensorrtllm-pytorch"
    ),
    "python": lambda plan, repo, _mount: write_llm_repository(plan, repo, "python"),
}


@dataclass(frozen=True)
class ServedRepository:
    """What a written repository serves, for the manifest."""

    runtime: Runtime
    speculation: Speculation | None


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
        return llm_api_unavailable()
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


def write_repository(
    plan: Plan, publish_dir: Path, *, mount: str = MODEL_MOUNT
) -> ServedRepository:
    """Write `<publish_dir>/triton/` for `plan` (replacing an old one) and return its runtime.

    Args:
        plan: The Plan being published.
        publish_dir: The plan-hash directory being staged (holds `checkpoint/`, maybe `engine/`).
        mount: Where the Deployment mounts the plan-hash directory (TensorRT-LLM layouts refer to
            files by absolute path under it; the CPU layout by relative path).

    Returns:
        The runtime and the speculation it serves, for the manifest.
    """
    if not (publish_dir / CHECKPOINT_DIR / "config.json").is_file():
        raise UserError(f"repository: no exported checkpoint in {publish_dir / CHECKPOINT_DIR}")
    runtime = choose_runtime(plan, publish_dir)
    repository = publish_dir / TRITON_DIR
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    _WRITERS[runtime](plan, repository, mount)
    return ServedRepository(runtime, speculation(plan, runtime))
