"""The facts the operator and the job both depend on, each stated once.

The operator imports this module (torch-free, nothing heavy); the job package builds on it. Add a
quantization format, a KV-cache precision, a GPU generation or a serving runtime here and the API
schema, the admission checks, the job's device check, the Plan and the manifest follow:

- `FORMATS` / `KV_CACHES`: each quantization format with its Model Optimizer config, the oldest
  GPU generation that runs it, whether it is AWQ (block-quantized weights), how many calibration
  passes its algorithm makes and whether a CPU can produce it. `format_spec` refuses a name that
  is not in the table, so an unknown format fails loudly everywhere instead of passing a lookup.
- `RUNTIMES` / `runtime_for`: how Triton serves a published plan, and the one function that
  picks the runtime for an engine backend.
- Paths, environment names and ports that travel between the operator's pod specs and the
  programs inside them (`MODEL_MOUNT`, `PVC_ROOT`, `STORE_ENV_PREFIX`, ...), and the Triton
  command line (`triton_argv`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = [
    "AWQ_BLOCK_SIZES",
    "CHECKPOINT_DIR",
    "DRAFT_DIR",
    "ENGINE_DIR",
    "FAMILIES",
    "FORMATS",
    "GRPC_PORT",
    "HTTP_PORT",
    "KERNEL_CACHE_ENV",
    "KV_CACHES",
    "METRICS_PORT",
    "MODEL_MOUNT",
    "PLAN_FILE",
    "PLAN_HASH_ENV",
    "PLAN_MOUNT",
    "PVC_ROOT",
    "PVC_ROOT_ENV",
    "RUNTIMES",
    "STORE_ENV_PREFIX",
    "TERMINATION_LOG",
    "TRITON_DIR",
    "AwqBlockSize",
    "EngineBackend",
    "Family",
    "FormatSpec",
    "KVCacheFormat",
    "KVCacheSpec",
    "QuantFormat",
    "Runtime",
    "RuntimeSpec",
    "Shortfall",
    "awq_formats",
    "format_spec",
    "kv_cache_spec",
    "older",
    "runtime_for",
    "shortfall",
    "triton_argv",
]

# --- GPU generations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """An NVIDIA GPU generation."""

    name: str
    compute_capability: tuple[int, int]  # the first CUDA compute capability of the generation
    example: str  # a GPU of it, for messages


# In order of capability.
FAMILIES: Final = (
    Family("volta", (7, 0), "V100"),
    Family("turing", (7, 5), "T4"),
    Family("ampere", (8, 0), "A100"),
    Family("ada", (8, 9), "L40S"),
    Family("hopper", (9, 0), "H100"),
    Family("blackwell", (10, 0), "B200"),
)
_FAMILY_INDEX = {family.name: index for index, family in enumerate(FAMILIES)}


def older(family: str, minimum: str) -> bool:
    """Whether generation `family` predates `minimum`."""
    return _FAMILY_INDEX[family] < _FAMILY_INDEX[minimum]


# --- quantization formats ---------------------------------------------------------------------

QuantFormat = Literal["fp8", "nvfp4", "int8_sq", "int4_awq", "w4a8_awq"]
KVCacheFormat = Literal["none", "fp8", "nvfp4"]
#: AWQ group sizes, preferred first; the exporter packs only whole blocks.
AwqBlockSize = Literal[128, 64, 32]
AWQ_BLOCK_SIZES: Final[tuple[int, ...]] = get_args(AwqBlockSize)


@dataclass(frozen=True)
class FormatSpec:
    """One post-training quantization format."""

    name: str
    modelopt_config: str  # the `modelopt.torch.quantization` config it starts from
    min_family: str  # the oldest generation whose TensorRT-LLM kernels run it
    awq: bool  # weights quantized in blocks along the input dimension (a block size applies)
    calibration_passes: int  # how often calibration runs the data through the model
    cpu: bool  # Model Optimizer can calibrate and Kiln can serve it without a GPU
    summary: str  # for people: what it quantizes


_F = FormatSpec
FORMATS: Final[dict[str, FormatSpec]] = {
    spec.name: spec
    for spec in (
        _F("fp8", "FP8_DEFAULT_CFG", "ada", False, 1, True, "FP8 weights and activations"),
        _F("nvfp4", "NVFP4_DEFAULT_CFG", "blackwell", False, 1, False, "FP4 weights, activations"),
        _F("int8_sq", "INT8_SMOOTHQUANT_CFG", "ampere", False, 1, True, "SmoothQuant W8A8"),
        _F("int4_awq", "INT4_AWQ_CFG", "ampere", True, 2, True, "W4A16: INT4 weights"),
        _F("w4a8_awq", "W4A8_AWQ_BETA_CFG", "ada", True, 4, True, "INT4 weights, FP8 activations"),
    )
}


@dataclass(frozen=True)
class KVCacheSpec:
    """One KV-cache precision."""

    name: str
    modelopt_config: str | None  # None: the model's own dtype
    min_family: str | None
    cpu: bool


KV_CACHES: Final[dict[str, KVCacheSpec]] = {
    spec.name: spec
    for spec in (
        KVCacheSpec("none", None, None, True),
        KVCacheSpec("fp8", "FP8_KV_CFG", "ada", True),
        KVCacheSpec("nvfp4", "NVFP4_KV_CFG", "blackwell", False),
    )
}

# The Literals are what pydantic checks and the CRD enumerates; the tables are what everything
# else reads. They must name the same things.
for _literal, _table in ((QuantFormat, FORMATS), (KVCacheFormat, KV_CACHES)):
    if tuple(get_args(_literal)) != tuple(_table):
        raise RuntimeError(f"{get_args(_literal)} and the table {tuple(_table)} differ")


def awq_formats() -> list[str]:
    """The formats a block size applies to."""
    return [name for name, spec in FORMATS.items() if spec.awq]


def format_spec(name: str) -> FormatSpec:
    """The table entry of a quantization format.

    Raises:
        ValueError: `name` is not a format Kiln knows.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown quantization format {name!r}: use one of {list(FORMATS)}"
        ) from None


def kv_cache_spec(name: str) -> KVCacheSpec:
    """The table entry of a KV-cache precision.

    Raises:
        ValueError: `name` is not a KV-cache precision Kiln knows.
    """
    try:
        return KV_CACHES[name]
    except KeyError:
        raise ValueError(
            f"unknown KV-cache format {name!r}: use one of {list(KV_CACHES)}"
        ) from None


@dataclass(frozen=True)
class Shortfall:
    """A format (or KV-cache precision) that a GPU generation is too old for."""

    what: Literal["format", "KV-cache format"]
    value: str
    minimum: str  # the oldest generation that runs it

    @property
    def example(self) -> str:
        """A GPU of the minimum generation, for messages."""
        return FAMILIES[_FAMILY_INDEX[self.minimum]].example


def shortfall(fmt: str, kv_cache: str, family: str | None) -> Shortfall | None:
    """What generation `family` lacks to run `fmt` with KV cache `kv_cache`, or None.

    `family` None is a machine without CUDA: only formats without a CPU path fall short there.
    Unknown formats raise ValueError (see `format_spec`), never pass.
    """
    weights, kv = format_spec(fmt), kv_cache_spec(kv_cache)
    checks: tuple[tuple[Literal["format", "KV-cache format"], str, str | None, bool], ...] = (
        ("format", fmt, weights.min_family, weights.cpu),
        ("KV-cache format", kv_cache, kv.min_family, kv.cpu),
    )
    for what, value, minimum, cpu in checks:
        if minimum is None:
            continue
        if (family is None and not cpu) or (family is not None and older(family, minimum)):
            return Shortfall(what, value, minimum)
    return None


# --- serving runtimes -------------------------------------------------------------------------

EngineBackend = Literal["pytorch", "tensorrt-llm", "none"]
Runtime = Literal["python", "tensorrtllm-pytorch", "tensorrtllm-engine"]


@dataclass(frozen=True)
class RuntimeSpec:
    """How Triton serves a published plan."""

    name: Runtime
    backend: EngineBackend  # the spec.engine.backend that asks for it
    gpu: bool  # the Triton pod needs GPUs
    summary: str


RUNTIMES: Final[dict[str, RuntimeSpec]] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("python", "none", False, "Triton's Python backend on PyTorch"),
        RuntimeSpec(
            "tensorrtllm-pytorch", "pytorch", True, "TensorRT-LLM's LLM API (PyTorch backend)"
        ),
        RuntimeSpec("tensorrtllm-engine", "tensorrt-llm", True, "TensorRT-LLM engines"),
    )
}
if tuple(get_args(Runtime)) != tuple(RUNTIMES) or {s.backend for s in RUNTIMES.values()} != set(
    get_args(EngineBackend)
):
    raise RuntimeError("Runtime, EngineBackend and RUNTIMES differ")


def runtime_for(backend: str, *, fallback_reason: str | None = None) -> Runtime:
    """The runtime that serves a plan whose engine backend is `backend`.

    Args:
        backend: `spec.engine.backend`.
        fallback_reason: Why the GPU runtime cannot be produced here, when the Plan allows
            falling back to the Python backend (local runs, clusters without TensorRT-LLM);
            None when nothing stands in the way.
    """
    if fallback_reason is not None:
        return "python"
    return next(spec.name for spec in RUNTIMES.values() if spec.backend == backend)


# --- what travels between the operator's pod specs and the programs in them -------------------

#: The published `<store>/<plan hash>/` inside the Triton pod (read-only).
MODEL_MOUNT: Final = "/kiln/model"
#: Directories inside a published plan.
CHECKPOINT_DIR: Final = "checkpoint"
TRITON_DIR: Final = "triton"
ENGINE_DIR: Final = "engine"
DRAFT_DIR: Final = "draft"
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
