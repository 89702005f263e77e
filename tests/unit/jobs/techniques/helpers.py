"""Test helpers for techniques: a tiny Llama, synthetic data and a context around a model."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kiln_jobs.plan import DataRef, ModelRef
from kiln_jobs.techniques.context import ProgressReporter, TechniqueContext

VOCAB = 128


def tiny_llama(seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
    """A 4-layer Llama small enough to train in seconds; `architectures` set for the exporter."""
    fields: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
        "architectures": ["LlamaForCausalLM"],
    }
    fields.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**fields)).eval()


def token_blocks(ref: DataRef, role: str) -> torch.Tensor:
    """Deterministic token blocks per (role, shape): the same call always gives the same data.

    Tokens follow a noisy cycle, so that there is something to learn and to predict ahead.
    """
    generator = torch.Generator().manual_seed(zlib.crc32(f"{role}/{ref.source}".encode()))
    start = torch.randint(0, VOCAB, (ref.samples, 1), generator=generator)
    steps = torch.arange(ref.seq_length)[None, :]
    noise = (torch.rand(ref.samples, ref.seq_length, generator=generator) < 0.1).long()
    return (start + 7 * steps + noise) % VOCAB


def make_context(
    model: Any,
    workdir: Path,
    *,
    progress: ProgressReporter | None = None,
    evaluation_data: DataRef | None = None,
    resolve_model: Callable[[ModelRef], Path] | None = None,
) -> TechniqueContext:
    """A TechniqueContext over `model`, with synthetic data and no model sources."""

    def no_loading(ref: ModelRef) -> Any:
        raise AssertionError(f"unexpected model load of {ref.source}")

    return TechniqueContext(
        model=model,
        tokenizer=None,
        device=torch.device("cpu"),
        workdir=workdir,
        progress=progress or (lambda percent, message="": None),
        load_original=lambda: pytest.fail("unexpected load_original"),
        load_model=no_loading,
        token_blocks=token_blocks,
        evaluation_data=evaluation_data,
        resolve_model=resolve_model,
    )


class Interrupted(Exception):
    """Raised by `interrupt_at` to emulate a pod killed mid-training."""


def interrupt_at(marker: str) -> ProgressReporter:
    """A progress reporter that raises once a message contains `marker` (e.g. "step 3/")."""

    def progress(percent: float, message: str = "") -> None:
        if marker in message:
            raise Interrupted(message)

    return progress


class Recorder:
    """A progress reporter that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, percent: float, message: str = "") -> None:
        assert 0.0 <= percent <= 100.0
        self.messages.append(message)
