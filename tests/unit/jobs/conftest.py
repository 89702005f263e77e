"""Fixtures for the job runner's tests: one intra-op thread and a tiny trained Llama."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.unit.jobs.tiny import build_tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models on one thread: on a shared 2-core machine a second OpenMP thread made each
    forward several times slower (spin-waiting beside other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama + tokenizer as an HF directory (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
