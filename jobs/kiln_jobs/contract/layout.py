"""What travels between the operator's pod specs and the programs inside them: mount paths,
directory names, environment variable names, ports and the Triton command line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kiln_jobs.contract.serving import Runtime

__all__ = [
    "CHECKPOINT_DIR",
    "DRAFT_DIR",
    "ENGINE_DIR",
    "GRPC_PORT",
    "HTTP_PORT",
    "KERNEL_CACHE_ENV",
    "METRICS_PORT",
    "MODEL_MOUNT",
    "OPENAI_PORT",
    "PLAN_FILE",
    "PLAN_HASH_ENV",
    "PLAN_MOUNT",
    "PVC_ROOT",
    "PVC_ROOT_ENV",
    "REPORT_DIR",
    "REPORT_FILE",
    "STORE_ENV_PREFIX",
    "TERMINATION_LOG",
    "TRITON_DIR",
    "triton_argv",
]

#: The published `<store>/<plan hash>/` inside the Triton pod (read-only).
MODEL_MOUNT: Final = "/kiln/model"
#: Directories inside a published plan.
CHECKPOINT_DIR: Final = "checkpoint"
TRITON_DIR: Final = "triton"
ENGINE_DIR: Final = "engine"
DRAFT_DIR: Final = "draft"
#: The run report (report.md and its plots), for people.
REPORT_DIR: Final = "report"
REPORT_FILE: Final = "report.md"
#: PersistentVolumeClaims inside Job pods: pvc://claim/path -> /mnt/pvc/claim/path.
PVC_ROOT: Final = "/mnt/pvc"
PVC_ROOT_ENV: Final = "KILN_PVC_ROOT"
#: The Plan's ConfigMap inside the Job pod.
PLAN_MOUNT: Final = "/etc/kiln/plan"
PLAN_FILE: Final = "plan.json"
PLAN_HASH_ENV: Final = "KILN_PLAN_HASH"
TERMINATION_LOG: Final = "/dev/termination-log"
#: The store's S3 credentials reach a pod under this prefix, so that they never collide with the
#: model source's (both are AWS_* keys).
STORE_ENV_PREFIX: Final = "KILN_STORE_"
#: Set by the operator on a PVC store: a directory the store's jobs share for compiled kernels.
KERNEL_CACHE_ENV: Final = "KILN_KERNEL_CACHE"
#: Triton's conventional ports.
HTTP_PORT: Final = 8000
GRPC_PORT: Final = 8001
METRICS_PORT: Final = 8002
#: The OpenAI-compatible endpoint beside Triton.
OPENAI_PORT: Final = 9000


def triton_argv(
    runtime: Runtime,
    world_size: int,
    *,
    repository: str = f"{MODEL_MOUNT}/{TRITON_DIR}",
    tritonserver: str = "tritonserver",
    http_port: int = HTTP_PORT,
    grpc_port: int = GRPC_PORT,
    metrics_port: int = METRICS_PORT,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command that serves a published repository (a list: no shell).

    Engines built for TP x PP > 1 (`world_size`) run one Triton process per rank under `mpirun`
    (rank 0 serves the endpoints, the others load only `tensorrt_llm`), each with its own
    Python-backend shared memory prefix. The LLM-API and Python runtimes run one process: the
    LLM API spawns its own workers. `extra_args` go to every rank's tritonserver.
    """
    server = [
        f"--model-repository={repository}",
        "--disable-auto-complete-config",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        *extra_args,
    ]
    if runtime != "tensorrtllm-engine" or world_size == 1:
        return [tritonserver, *server]
    argv = ["mpirun", "--allow-run-as-root"]
    for rank in range(world_size):
        argv += ["-n", "1", tritonserver, *server]
        if rank > 0:
            argv += ["--model-control-mode=explicit", "--load-model=tensorrt_llm"]
        argv += [f"--backend-config=python,shm-region-prefix-name=prefix{rank}_", ":"]
    return argv[:-1]
