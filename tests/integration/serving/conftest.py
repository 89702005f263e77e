"""Fixtures for the real-Triton tests: a published tiny FP8 plan, and the proof that no
`tritonserver` (or Python stub) outlives the tests."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from kiln_jobs.serving.generation import SamplingParams, generate_ids
from kiln_jobs.serving.repository import write_repository
from kiln_jobs.serving.tritonserver import TritonServer
from tests.integration.serving.tiny_models import TinyExport, byte_tokenizer, export_tiny
from tests.unit.serving.plans import make_plan

PROMPT = "Kiln serves"
MAX_TOKENS = 12


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group `pgid`."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


@pytest.fixture(scope="session", autouse=True)
def no_tritonserver_left_behind():
    """After the whole session, every server this process started is gone, stubs included."""
    yield
    alive = sorted(g for g in TritonServer.started_groups if group_alive(g))
    assert not alive, f"tritonserver process groups still alive: {alive}"


@dataclass
class Published:
    """A plan-hash directory with a tiny FP8 checkpoint and its CPU repository."""

    root: Path
    export: TinyExport
    plan: Any
    expected: str  # the optimized model's greedy continuation of PROMPT


def reference_text(export: TinyExport, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> str:
    """The fake-quantized modelopt model's own greedy continuation (export numerics)."""
    tokenizer = byte_tokenizer()
    ids, _ = generate_ids(
        export.fused_model, tokenizer(prompt)["input_ids"], SamplingParams(max_tokens=max_tokens)
    )
    return tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="session")
def tiny_published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    root = tmp_path_factory.mktemp("publish")
    export = export_tiny("fp8", root / "checkpoint")
    plan = make_plan(backend="none", max_batch_size=4, max_input_len=128, max_seq_len=256)
    assert write_repository(plan, root).runtime == "python"
    return Published(root, export, plan, reference_text(export))
