"""The accelerator a job runs on, and which quantization formats it can produce and serve.

The tables match the operator's admission checks (`kiln_operator.hardware`), which refuse a format
for the GPU product a resource asks for; here the job checks the device it actually got, before
any work, so a mis-scheduled pod fails in seconds with the reason.

On a machine without CUDA, Kiln calibrates with Model Optimizer's fake quantization and serves
through the Python backend on PyTorch, which reproduces FP8, INT8-SQ, INT4-AWQ and W4A8 numerics.
NVFP4 (weights or KV cache) has no such path: it needs a Blackwell GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FAMILY_ORDER",
    "FORMAT_MIN_FAMILY",
    "KERNEL_CACHE_ENV",
    "KV_CACHE_MIN_FAMILY",
    "Accelerator",
    "detect",
    "family_of_capability",
    "format_problem",
    "kernel_cache_dir",
]

#: Set by the operator on a PVC store: a directory the store's jobs share for compiled kernels.
KERNEL_CACHE_ENV = "KILN_KERNEL_CACHE"

# Generations in order of capability, with the CUDA compute capability each starts at.
_FAMILIES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("volta", (7, 0)),
    ("turing", (7, 5)),
    ("ampere", (8, 0)),
    ("ada", (8, 9)),
    ("hopper", (9, 0)),
    ("blackwell", (10, 0)),
)
FAMILY_ORDER = tuple(name for name, _ in _FAMILIES)
_EXAMPLE_GPU = {"ada": "L40S", "hopper": "H100", "blackwell": "B200", "ampere": "A100"}

# The oldest generation whose TensorRT-LLM kernels run each format.
FORMAT_MIN_FAMILY: dict[str, str] = {
    "fp8": "ada",
    "nvfp4": "blackwell",
    "int8_sq": "ampere",
    "int4_awq": "ampere",
    "w4a8_awq": "ada",
}
KV_CACHE_MIN_FAMILY: dict[str, str] = {"fp8": "ada", "nvfp4": "blackwell"}
# Formats with no CPU path (calibration, export and serving all need the GPU's FP4 support).
_GPU_ONLY = {"nvfp4"}


@dataclass(frozen=True)
class Accelerator:
    """The device a job computes on."""

    device: str  # "cuda" or "cpu"
    name: str
    family: str | None = None
    compute_capability: tuple[int, int] | None = None

    @property
    def is_cuda(self) -> bool:
        """True on an NVIDIA GPU."""
        return self.device == "cuda"


def detect() -> Accelerator:
    """The first CUDA device if there is one, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return Accelerator(device="cpu", name="CPU")
    capability = torch.cuda.get_device_capability(0)
    return Accelerator(
        device="cuda",
        name=torch.cuda.get_device_name(0),
        family=family_of_capability(capability),
        compute_capability=capability,
    )


def family_of_capability(capability: tuple[int, int]) -> str:
    """The GPU generation of a CUDA compute capability, e.g. (9, 0) → "hopper"."""
    family = FAMILY_ORDER[0]
    for name, start in _FAMILIES:
        if capability >= start:
            family = name
    return family


def format_problem(fmt: str, kv_cache: str, accelerator: Accelerator) -> str | None:
    """Why the format (and KV-cache format) cannot be produced here, or None if it can."""
    for what, value, table in (
        ("format", fmt, FORMAT_MIN_FAMILY),
        ("KV-cache format", kv_cache, KV_CACHE_MIN_FAMILY),
    ):
        minimum = table.get(value)
        if minimum is None:
            continue
        if not accelerator.is_cuda:
            if value in _GPU_ONLY:
                return (
                    f"{what} {value} needs an NVIDIA {minimum.capitalize()} GPU (e.g. "
                    f"{_EXAMPLE_GPU[minimum]}); this machine has no CUDA device"
                )
            continue
        family = accelerator.family
        if family is not None and FAMILY_ORDER.index(family) < FAMILY_ORDER.index(minimum):
            return (
                f"{what} {value} needs an NVIDIA {minimum.capitalize()} or newer GPU (e.g. "
                f"{_EXAMPLE_GPU[minimum]}), but this job runs on {accelerator.name} "
                f"({family.capitalize()})"
            )
    return None


def kernel_cache_dir(base: Path, accelerator: Accelerator) -> Path | None:
    """Where Model Optimizer's JIT-compiled CUDA kernels are kept for this GPU architecture.

    modelopt compiles its fake-quantization kernels on first use (about 45 s each on 16 cores,
    measured on an H200); a cache shared by the jobs on one store pays that once. The directory
    is keyed by compute capability because torch's extension cache does not notice a change of
    architecture. None on a CPU.
    """
    if accelerator.compute_capability is None:
        return None
    major, minor = accelerator.compute_capability
    return base / "torch-extensions" / f"sm{major}{minor}"
