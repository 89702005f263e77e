"""Torch's intra-op threads in the model tests: one, unless OMP_NUM_THREADS asks for more.

One by default: on a shared 2-core machine a second OpenMP thread spin-waits beside other jobs and
made tiny forwards several times slower. OMP_NUM_THREADS is honoured (it is what the job runner
honours too) because results move with the thread count: reductions split differently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


def _requested() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


# Read once, as the session starts: the job runner's entry point, which tests call in-process,
# fills in OMP_NUM_THREADS for the jobs it would start.
_THREADS = _requested()


@contextmanager
def torch_threads() -> Iterator[int]:
    """Run the block on the tests' thread count; torch's previous count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(_THREADS)
    try:
        yield _THREADS
    finally:
        torch.set_num_threads(before)
