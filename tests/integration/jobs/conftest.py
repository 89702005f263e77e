"""Fixtures for the runner's integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.threads import torch_threads
from tests.unit.jobs.tiny import build_tiny_model


@pytest.fixture(autouse=True, scope="module")
def _threads() -> Iterator[None]:
    """One intra-op thread (see `tests.threads`): on a shared 2-core machine a second OpenMP
    thread spin-waits beside other jobs and made SmolLM2's forward several times slower."""
    with torch_threads():
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny trained Llama + tokenizer as an HF directory."""
    with torch_threads():
        return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
