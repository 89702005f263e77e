"""Pruning + distillation and EAGLE-3 on the real SmolLM2-135M, with real modelopt on CPU.

Importance is measured on LGPL-2.1 text, training and distillation use Apache-2.0 text and the
acceptance length is measured on GPL-3 text (see `smollm2.ROLE_FILES`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from modelopt.torch.export import export_hf_checkpoint
from transformers import LlamaForCausalLM

from kiln_jobs.contract import EAGLE_DRAFT_LENGTH
from kiln_jobs.plan import DataRef, PruneDistillPlan, SpeculativePlan, TrainingPlan
from kiln_jobs.techniques import prune_distill, speculative
from kiln_jobs.techniques.context import TechniqueContext
from tests.integration.jobs.techniques import smollm2
from tests.unit.jobs.techniques.helpers import make_context

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.numerics]

TRAIN = DataRef(samples=16, seq_length=128)


@pytest.fixture(scope="module")
def smol() -> tuple[Any, smollm2.LicenseBlocks]:
    model, tokenizer = smollm2.load()
    return model, smollm2.LicenseBlocks(tokenizer)


def _context(smol: tuple[Any, smollm2.LicenseBlocks], workdir: Path, **kw: Any) -> TechniqueContext:
    model, blocks = smol
    ctx = make_context(model, workdir, **kw)
    ctx.token_blocks = blocks
    return ctx


def test_depth_pruning_30_to_28_layers_recovers_with_distillation(
    smol: tuple[Any, smollm2.LicenseBlocks], tmp_path: Path
) -> None:
    spec = PruneDistillPlan(
        target_layers=28,
        importance=DataRef(samples=1, seq_length=128),
        distillation=TrainingPlan(
            steps=3, learning_rate=1e-4, batch_size=1, data=TRAIN, checkpoint_every=2
        ),
    )
    outcome = prune_distill.run(_context(smol, tmp_path / "work"), spec)
    metrics = outcome.metrics
    print(f"prune_distill metrics: {metrics}")  # shown with `pytest -rP`
    model = outcome.model
    assert model.config.num_hidden_layers == len(model.model.layers) == 28
    assert metrics["params_after"] == sum(p.numel() for p in model.parameters())
    assert metrics["params_before"] == sum(p.numel() for p in smol[0].parameters()) == 134515008
    # Removing layers hurts; a few distillation steps win part of it back.
    unpruned, pruned, distilled = (
        float(metrics[f"importance_perplexity_{name}"])
        for name in ("unpruned", "pruned", "distilled")
    )
    assert unpruned < pruned
    assert distilled < pruned
    # The GGUF-loaded input became a plain HF model that saves and exports.
    model.save_pretrained(tmp_path / "hf")
    export_hf_checkpoint(model, export_dir=tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["num_hidden_layers"] == 28


def test_eagle3_draft_trains_exports_and_leaves_smollm2_unchanged(
    smol: tuple[Any, smollm2.LicenseBlocks], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speculative, "ACCEPTANCE_NEW_TOKENS", 16)
    probe = smol[1](DataRef(samples=1, seq_length=32), "eval")
    with torch.no_grad():
        before = smol[0](input_ids=probe).logits
    spec = SpeculativePlan(
        algorithm="eagle3",
        training=TrainingPlan(
            steps=2,
            learning_rate=1e-3,
            batch_size=1,
            data=DataRef(samples=8, seq_length=64),
            checkpoint_every=1,
        ),
    )
    eval_data = DataRef(samples=2, seq_length=64)
    outcome = speculative.run(_context(smol, tmp_path, evaluation_data=eval_data), spec)
    print(f"speculative metrics: {outcome.metrics}")  # shown with `pytest -rP`
    assert outcome.model is smol[0]
    assert type(outcome.model) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.equal(smol[0](input_ids=probe).logits, before)
    draft = outcome.artifacts["draft"]
    config = json.loads((draft / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert (config["hidden_size"], config["intermediate_size"]) == (576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert (draft / "model.safetensors").is_file()
    assert 1.0 <= float(outcome.metrics["acceptance_length"]) <= EAGLE_DRAFT_LENGTH + 1
