"""Kiln's Kubernetes side: the ModelOptimization API, the operator and the `kiln` CLI."""

__version__ = "0.1.0"
