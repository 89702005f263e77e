"""Kiln's job side: the Plan and the runner that executes it with NVIDIA Model Optimizer."""

__version__ = "0.1.0"
