"""The accelerator a job runs on, and which quantization formats it can produce and serve.

Which generation runs which format is `kiln_jobs.contract.FORMATS`, the table the operator's
admission checks (`kiln_operator.hardware`) read too; they refuse a format for the GPU product a
resource asks for, while this module checks the device a job actually got, before any work, so a
mis-scheduled pod fails in seconds with the reason.

On a machine without CUDA, Kiln calibrates with Model Optimizer's fake quantization and serves
through the Python backend on PyTorch, which reproduces FP8, INT8-SQ, INT4-AWQ and W4A8 numerics.
NVFP4 (weights or KV cache) has no such path: it needs a Blackwell GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln_jobs.contract import FAMILIES, KERNEL_CACHE_ENV, shortfall

__all__ = [
    "KERNEL_CACHE_ENV",
    "Accelerator",
    "detect",
    "family_of_capability",
    "format_problem",
    "kernel_cache_dir",
]


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
    family = FAMILIES[0].name
    for candidate in FAMILIES:
        if capability >= candidate.compute_capability:
            family = candidate.name
    return family


def format_problem(fmt: str, kv_cache: str, accelerator: Accelerator) -> str | None:
    """Why the format (and KV-cache format) cannot be produced here, or None if it can."""
    missing = shortfall(fmt, kv_cache, accelerator.family if accelerator.is_cuda else None)
    if missing is None:
        return None
    needed = f"{missing.what} {missing.value} needs an NVIDIA {missing.minimum.capitalize()}"
    if not accelerator.is_cuda:
        return f"{needed} GPU (e.g. {missing.example}); this machine has no CUDA device"
    family = (accelerator.family or "").capitalize()
    return (
        f"{needed} or newer GPU (e.g. {missing.example}), but this job runs on "
        f"{accelerator.name} ({family})"
    )


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
