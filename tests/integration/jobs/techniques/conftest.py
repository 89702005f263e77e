"""Fixtures for technique integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """Run on one intra-op thread: on a shared 2-core machine, two threads made SmolLM2's
    forward passes up to 10x slower than one. Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
