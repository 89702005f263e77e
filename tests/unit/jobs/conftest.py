"""Fixtures for the job runner's tests: one intra-op thread and a tiny trained Llama."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.threads import torch_threads
from tests.unit.jobs.tiny import build_tiny_model


@pytest.fixture(autouse=True, scope="module")
def _threads() -> Iterator[None]:
    """Tiny models on one thread (see `tests.threads`)."""
    with torch_threads():
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama + tokenizer as an HF directory (built once per session, on the tests'
    thread count: the model it trains depends on it)."""
    with torch_threads():
        return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
