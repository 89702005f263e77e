"""Where compiled CUDA kernels are kept: per architecture, nowhere on a CPU."""

from __future__ import annotations

from pathlib import Path

from kiln_jobs import hardware


def test_kernels_are_kept_per_compute_capability(tmp_path: Path) -> None:
    h200 = hardware.Accelerator("cuda", "NVIDIA H200", "hopper", (9, 0))
    b200 = hardware.Accelerator("cuda", "NVIDIA B200", "blackwell", (10, 0))
    assert hardware.kernel_cache_dir(tmp_path, h200) == tmp_path / "torch-extensions" / "sm90"
    assert hardware.kernel_cache_dir(tmp_path, b200) == tmp_path / "torch-extensions" / "sm100"


def test_a_cpu_has_no_kernel_cache(tmp_path: Path) -> None:
    assert hardware.kernel_cache_dir(tmp_path, hardware.Accelerator("cpu", "CPU")) is None
