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
error. `triton_argv` is the command that serves a runtime, for the Deployment and for local runs.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TextIO

from kiln_jobs.errors import UserError
from kiln_jobs.plan import Plan
from kiln_jobs.serving import GRPC_PORT, HTTP_PORT, METRICS_PORT, MODEL_MOUNT
from kiln_jobs.serving.cpu_repository import write_cpu_repository
from kiln_jobs.serving.engine import engine_files, unavailable_reason
from kiln_jobs.serving.engine_repository import write_engine_repository
from kiln_jobs.serving.llmapi_repository import LLMAPI_MODEL, write_llmapi_repository

__all__ = [
    "ENGINE_DIR",
    "TRITON_DIR",
    "Runtime",
    "choose_runtime",
    "served_model",
    "triton_argv",
    "write_repository",
]

Runtime = Literal["python", "tensorrtllm-pytorch", "tensorrtllm-engine"]
TRITON_DIR = "triton"
ENGINE_DIR = "engine"


def _has_engine(publish_dir: Path) -> bool:
    return any(name.endswith(".engine") for name in engine_files(publish_dir / ENGINE_DIR))


def choose_runtime(plan: Plan, publish_dir: Path, *, out: TextIO | None = None) -> Runtime:
    """The runtime that will serve `plan` from `publish_dir`.

    Raises:
        UserError: The Plan builds engines, none were built, and it allows no fallback.
    """
    engine = plan.engine
    stream = out or sys.stderr
    if engine.backend == "tensorrt-llm":
        if _has_engine(publish_dir):
            return "tensorrtllm-engine"
        if engine.allow_fallback:
            return "python"
        raise UserError(
            f"repository: the Plan serves TensorRT-LLM engines but {publish_dir / ENGINE_DIR} "
            "holds none"
        )
    if engine.backend == "pytorch":
        reason = unavailable_reason() if engine.allow_fallback else None
        if reason is None:
            return "tensorrtllm-pytorch"
        print(f"repository: {reason}; serving with the Python backend on PyTorch", file=stream)
    return "python"


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
    if not (publish_dir / "checkpoint" / "config.json").is_file():
        raise UserError(f"repository: no exported checkpoint in {publish_dir / 'checkpoint'}")
    runtime = choose_runtime(plan, publish_dir)
    repository = publish_dir / TRITON_DIR
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    if runtime == "tensorrtllm-engine":
        write_engine_repository(plan, repository, mount)
    elif runtime == "tensorrtllm-pytorch":
        write_llmapi_repository(plan, repository, mount)
    else:
        write_cpu_repository(plan, repository)
    return runtime


def triton_argv(
    runtime: str,
    plan: Plan,
    *,
    repository: str = f"{MODEL_MOUNT}/{TRITON_DIR}",
    tritonserver: str = "tritonserver",
    http_port: int = HTTP_PORT,
    grpc_port: int = GRPC_PORT,
    metrics_port: int = METRICS_PORT,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command that serves a published repository (a list: no shell).

    Engines built for TP x PP > 1 run one Triton process per rank under `mpirun` (rank 0 serves
    the endpoints, the others load only `tensorrt_llm`), each with its own Python-backend shared
    memory prefix. The LLM-API and CPU runtimes run one process: the LLM API spawns its own
    workers. `extra_args` go to every rank's tritonserver (the operator's hardening flags).
    """
    server = [
        f"--model-repository={repository}",
        "--disable-auto-complete-config",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        *extra_args,
    ]
    world = plan.engine.tensor_parallel * plan.engine.pipeline_parallel
    if runtime != "tensorrtllm-engine" or world == 1:
        return [tritonserver, *server]
    argv = ["mpirun", "--allow-run-as-root"]
    for rank in range(world):
        argv += ["-n", "1", tritonserver, *server]
        if rank > 0:
            argv += ["--model-control-mode=explicit", "--load-model=tensorrt_llm"]
        argv += [f"--backend-config=python,shm-region-prefix-name=prefix{rank}_", ":"]
    return argv[:-1]
