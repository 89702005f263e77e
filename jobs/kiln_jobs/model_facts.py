"""Facts about a model that several stages need: is it quantized, how big is it."""

from __future__ import annotations

import torch
from modelopt.torch.quantization.nn import TensorQuantizer

__all__ = ["count_parameters", "is_quantized", "parameter_bytes"]


def is_quantized(model: torch.nn.Module) -> bool:
    """True when Model Optimizer quantizers are attached and enabled."""
    return any(isinstance(m, TensorQuantizer) and m.is_enabled for m in model.modules())


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes the parameters take in `dtype` (default: as held), tied weights once."""
    return sum(
        p.numel() * (dtype.itemsize if dtype is not None else p.element_size())
        for p in model.parameters()
    )
