"""Fixtures for technique tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """Run the tiny models on one thread: their ops are too small to split, and on a shared CPU
    the intra-op thread pool made each forward ~30x slower. Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
