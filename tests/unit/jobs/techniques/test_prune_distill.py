"""Pruning + distillation on a tiny Llama with real modelopt: shapes, KD, resume, refusals."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modelopt.torch.quantization as mtq
import pytest
import torch
from modelopt.torch.export import export_hf_checkpoint
from modelopt.torch.opt import ModeloptStateManager
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from kiln_jobs.errors import UserError
from kiln_jobs.plan import DataRef, PruneDistillPlan, TrainingPlan
from kiln_jobs.techniques import prune_distill
from kiln_jobs.techniques.context import TechniqueOutcome
from tests.unit.jobs.techniques.helpers import (
    Interrupted,
    Recorder,
    interrupt_at,
    make_context,
    tiny_llama,
    token_blocks,
)

pytestmark = [pytest.mark.unit, pytest.mark.numerics]

IMPORTANCE = DataRef(samples=4, seq_length=32)
# The tiny Llama, counted by hand: embeddings 128x64 (tied with lm_head) + final norm 64; per
# layer q 64x64, k and v 64x32, o 64x64, two norms of 64, and 3 x 64 per MLP neuron.
OUTSIDE_LAYERS = 128 * 64 + 64
PER_LAYER = 64 * 64 * 2 + 64 * 32 * 2 + 2 * 64
PER_NEURON = 3 * 64


def _params(layers: int, ffn: int) -> int:
    return OUTSIDE_LAYERS + layers * (PER_LAYER + PER_NEURON * ffn)


def _spec(steps: int = 8, checkpoint_every: int = 4, **targets: Any) -> PruneDistillPlan:
    distillation = TrainingPlan(
        steps=steps,
        learning_rate=1e-3,
        batch_size=2,
        data=DataRef(samples=4, seq_length=32),
        checkpoint_every=checkpoint_every,
    )
    return PruneDistillPlan(importance=IMPORTANCE, distillation=distillation, **targets)


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=token_blocks(IMPORTANCE, "eval")).logits


def _teacher() -> LlamaForCausalLM:
    """A tiny Llama with one layer that does nothing and 64 MLP neurons that never fire."""
    model = tiny_llama()
    with torch.no_grad():
        layer = model.model.layers[2]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        for block in model.model.layers:
            block.mlp.gate_proj.weight[:64].zero_()
    return model


@dataclass
class Pruned:
    teacher: LlamaForCausalLM
    teacher_logits: torch.Tensor
    outcome: TechniqueOutcome
    decision: dict[str, Any]


def _prune(workdir: Path, teacher: LlamaForCausalLM, **targets: Any) -> Pruned:
    before = _logits(teacher)
    outcome = prune_distill.run(make_context(teacher, workdir), _spec(**targets))
    decision = json.loads((workdir / "pruning.json").read_text())
    return Pruned(teacher, before, outcome, decision)


@pytest.fixture(scope="module")
def deeper(tmp_path_factory: pytest.TempPathFactory) -> Pruned:
    return _prune(tmp_path_factory.mktemp("depth"), _teacher(), target_layers=3)


@pytest.fixture(scope="module")
def narrower(tmp_path_factory: pytest.TempPathFactory) -> Pruned:
    return _prune(tmp_path_factory.mktemp("width"), _teacher(), target_ffn_hidden_size=64)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> Pruned:
    # A plain random Llama: pruning it loses real function, so there is a gap to distil.
    return _prune(tmp_path_factory.mktemp("kd"), tiny_llama(), target_layers=2)


def test_depth_pruning_removes_the_least_important_layer(deeper: Pruned) -> None:
    importance = deeper.decision["layer_importance"]
    assert importance[2] == 0.0  # the layer that does nothing
    least = min(range(4), key=lambda i: importance[i])
    assert deeper.outcome.metrics["removed_layers"] == str(least)
    assert deeper.decision["kept_layers"] == [i for i in range(4) if i != least]


def test_depth_pruned_model_has_the_exact_shape_and_count(deeper: Pruned) -> None:
    model = deeper.outcome.model
    assert type(model) is LlamaForCausalLM
    assert model.config.num_hidden_layers == len(model.model.layers) == 3
    assert model.config.intermediate_size == 128
    assert sum(p.numel() for p in model.parameters()) == _params(3, 128)
    assert deeper.outcome.metrics["params_before"] == _params(4, 128)
    assert deeper.outcome.metrics["params_after"] == _params(3, 128)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    # A plain HF model: no modelopt state (distillation's would hold the whole teacher).
    assert not ModeloptStateManager.is_converted(model)


def test_width_pruning_keeps_each_layers_active_neurons(narrower: Pruned) -> None:
    model = narrower.outcome.model
    assert model.config.intermediate_size == 64
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (64, 64)
        assert layer.mlp.up_proj.weight.shape == (64, 64)
        assert layer.mlp.down_proj.weight.shape == (64, 64)
    assert sum(p.numel() for p in model.parameters()) == _params(4, 64)
    # Neurons 0..63 never fire (their gate rows are zero): every layer keeps 64..127.
    assert narrower.decision["layer_importance"] is None
    for kept in narrower.decision["kept_neurons"].values():
        assert kept == list(range(64, 128))


def test_teacher_is_left_unchanged(deeper: Pruned) -> None:
    assert torch.equal(_logits(deeper.teacher), deeper.teacher_logits)
    assert all(p.requires_grad for p in deeper.teacher.parameters())
    assert not hasattr(deeper.teacher, "_teacher_model")


def test_distillation_lowers_the_kd_loss(distilled: Pruned) -> None:
    metrics = distilled.outcome.metrics
    assert metrics["distill_steps"] == 8
    assert float(metrics["distill_kd_loss_last"]) < float(metrics["distill_kd_loss_first"])
    for name in ("unpruned", "pruned", "distilled"):
        assert float(metrics[f"importance_perplexity_{name}"]) > 1.0


def test_pruned_model_round_trips_through_save_and_export(deeper: Pruned, tmp_path: Path) -> None:
    model = deeper.outcome.model
    model.save_pretrained(tmp_path / "hf")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert reloaded.config.num_hidden_layers == 3
    assert torch.allclose(_logits(reloaded), _logits(model))
    export_hf_checkpoint(model, export_dir=tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["intermediate_size"]) == (3, 128)


def test_target_params_alone_removes_the_fewest_layers(tmp_path: Path) -> None:
    target = _params(2, 128) + 10
    outcome = prune_distill.run(
        make_context(_teacher(), tmp_path), _spec(steps=1, target_params=target)
    )
    assert outcome.model.config.num_hidden_layers == 2
    assert outcome.metrics["params_after"] == _params(2, 128) <= target


def test_target_params_with_layers_solves_an_aligned_width(tmp_path: Path) -> None:
    target = _params(4, 64) + 100
    spec = _spec(steps=1, target_layers=4, target_params=target)
    outcome = prune_distill.run(make_context(_teacher(), tmp_path), spec)
    assert outcome.model.config.intermediate_size == prune_distill.FFN_ALIGNMENT == 64
    assert outcome.metrics["params_after"] == _params(4, 64)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({}, "set target_layers, target_ffn_hidden_size or target_params"),
        ({"target_layers": 5}, "target_layers=5 exceeds the model's 4 layers"),
        ({"target_ffn_hidden_size": 256}, "target_ffn_hidden_size=256 exceeds the model's 128"),
        ({"target_layers": 4}, "nothing to prune: the model already has 4 layers x 128 FFN"),
        ({"target_params": 10**6}, "target_params=1000000 is not below the model's 156224"),
        ({"target_params": 9000}, "target_params=9000 cannot be met: one layer"),
        (
            {"target_layers": 4, "target_params": 60000},
            "target_params=60000 cannot be met with 4 layers: even an FFN of 64 gives",
        ),
        (
            {
                "target_layers": 3,
                "target_ffn_hidden_size": 128,
                "target_params": _params(3, 128) - 1,
            },
            f"3 layers x 128 FFN give {_params(3, 128)} params, above target_params",
        ),
    ],
)
def test_unreachable_targets_are_refused(
    targets: dict[str, int], message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=message):
        prune_distill.run(make_context(tiny_llama(), tmp_path), _spec(**targets))


def test_non_llama_models_are_refused_with_the_megatron_hint(tmp_path: Path) -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128))
    with pytest.raises(UserError, match="mcore_minitron, which needs megatron-core"):
        prune_distill.run(make_context(gpt2, tmp_path), _spec(target_layers=1))


def test_quantized_models_are_refused(tmp_path: Path) -> None:
    model = mtq.quantize(tiny_llama(), mtq.INT8_DEFAULT_CFG, forward_loop=None)
    with pytest.raises(UserError, match="put prune_distill before ptq/qat/qad"):
        prune_distill.run(make_context(model, tmp_path), _spec(target_layers=2))


def test_restarted_distillation_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    spec = _spec(steps=4, checkpoint_every=2, target_layers=2)
    with pytest.raises(Interrupted):
        prune_distill.run(
            make_context(_teacher(), tmp_path / "a", progress=interrupt_at("step 3/")), spec
        )
    recorder = Recorder()
    resumed = prune_distill.run(make_context(_teacher(), tmp_path / "a", progress=recorder), spec)
    assert "distill: resuming at step 3" in recorder.messages
    assert "measuring importance" not in recorder.messages  # the saved decision is reused
    assert resumed.metrics["distill_resumed_from_step"] == 2

    straight = prune_distill.run(make_context(_teacher(), tmp_path / "b"), spec)
    assert resumed.metrics["distill_kd_loss_last"] == straight.metrics["distill_kd_loss_last"]
    expected = straight.model.state_dict()
    for key, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
