"""Speculative decoding on a tiny Llama with real modelopt: train, export, attach, resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import modelopt.torch.quantization as mtq
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from kiln_jobs.contract import EAGLE_DRAFT_LENGTH
from kiln_jobs.errors import UserError
from kiln_jobs.plan import DataRef, ModelRef, SpeculativePlan, TrainingPlan
from kiln_jobs.techniques import speculative
from kiln_jobs.techniques.context import TechniqueOutcome
from tests.unit.jobs.techniques.helpers import (
    VOCAB,
    Interrupted,
    Recorder,
    interrupt_at,
    make_context,
    tiny_llama,
    token_blocks,
)

pytestmark = [pytest.mark.unit, pytest.mark.numerics]

EVAL = DataRef(samples=2, seq_length=24)
MEDUSA_HEADS = 2


def _training(steps: int = 3, checkpoint_every: int = 2) -> TrainingPlan:
    return TrainingPlan(
        steps=steps,
        learning_rate=1e-3,
        batch_size=2,
        data=DataRef(samples=4, seq_length=32),
        checkpoint_every=checkpoint_every,
    )


def _logits(model: LlamaForCausalLM) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=token_blocks(EVAL, "eval")).logits


@dataclass
class Trained:
    base: LlamaForCausalLM
    logits_before: torch.Tensor
    outcome: TechniqueOutcome
    workdir: Path


def _train(algorithm: str, workdir: Path) -> Trained:
    base = tiny_llama()
    before = _logits(base)
    spec = SpeculativePlan(
        algorithm=algorithm,
        training=_training(),
        medusa_heads=MEDUSA_HEADS,  # type: ignore[arg-type]
    )
    outcome = speculative.run(make_context(base, workdir, evaluation_data=EVAL), spec)
    return Trained(base, before, outcome, workdir)


@pytest.fixture(scope="module")
def eagle(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train("eagle3", tmp_path_factory.mktemp("eagle"))


@pytest.fixture(scope="module")
def medusa(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train("medusa", tmp_path_factory.mktemp("medusa"))


@pytest.fixture(params=["eagle", "medusa"])
def trained(request: pytest.FixtureRequest) -> Trained:
    return request.getfixturevalue(request.param)


def test_base_model_is_returned_unchanged(trained: Trained) -> None:
    assert trained.outcome.model is trained.base
    assert type(trained.base) is LlamaForCausalLM
    assert not hasattr(trained.base, "eagle_module")
    assert not hasattr(trained.base, "medusa_heads")
    assert torch.equal(_logits(trained.base), trained.logits_before)


def test_training_runs_the_planned_steps_with_checkpoints(trained: Trained) -> None:
    metrics = trained.outcome.metrics
    assert metrics["draft_source"] == "trained"
    assert metrics["train_steps"] == 3
    assert metrics["train_resumed_from_step"] == 0
    assert isinstance(metrics["train_loss_last"], float)
    assert (trained.workdir / "training" / "checkpoint.pt").is_file()


def test_acceptance_length_is_between_one_and_k_plus_one(trained: Trained) -> None:
    metrics = trained.outcome.metrics
    k = metrics["draft_tokens_per_step"]
    assert k == (MEDUSA_HEADS if "medusa" in str(trained.workdir) else EAGLE_DRAFT_LENGTH)
    assert isinstance(k, int)
    assert 1.0 <= float(metrics["acceptance_length"]) <= k + 1
    assert metrics["acceptance_prompts"] == EVAL.samples


def test_eagle3_draft_is_sized_from_the_base_and_exported(eagle: Trained) -> None:
    draft = eagle.outcome.artifacts["draft"]
    config = json.loads((draft / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert (config["hidden_size"], config["intermediate_size"]) == (64, 128)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["num_hidden_layers"] == 1
    assert config["rope_scaling"]["rope_type"] == "default"  # the base's RoPE, no YaRN
    weights = load_file(draft / "model.safetensors")
    # EAGLE-3's first layer reads [embedding, fused hidden state]: twice the hidden size.
    assert weights["layers.0.self_attn.q_proj.weight"].shape == (64, 128)
    assert weights["fc.weight"].shape[0] == 64
    assert weights["lm_head.weight"].shape == (VOCAB, 64)


def test_medusa_export_carries_heads_beside_the_unchanged_base(medusa: Trained) -> None:
    draft = medusa.outcome.artifacts["draft"]
    config = json.loads((draft / "config.json").read_text())
    assert config["medusa"] == {"num_medusa_heads": MEDUSA_HEADS, "num_medusa_layers": 1}
    weights = load_file(draft / "model.safetensors")
    heads = {k for k in weights if k.startswith("medusa_heads.")}
    assert {k.split(".")[1] for k in heads} == {"0", "1"}
    reloaded = LlamaForCausalLM.from_pretrained(draft).eval()
    assert torch.equal(_logits(reloaded), medusa.logits_before)


@pytest.mark.parametrize("name", ["eagle", "medusa"])
def test_attaching_an_exported_draft_measures_the_same_acceptance(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    trained: Trained = request.getfixturevalue(name)
    source = trained.outcome.artifacts["draft"]
    algorithm = "eagle3" if name == "eagle" else "medusa"
    spec = SpeculativePlan(algorithm=algorithm, draft=ModelRef(source=f"file://{source}"))  # type: ignore[arg-type]
    base = tiny_llama()
    before = _logits(base)
    outcome = speculative.run(make_context(base, tmp_path, evaluation_data=EVAL), spec)
    assert outcome.metrics["draft_source"] == "attached"
    assert outcome.metrics["acceptance_length"] == trained.outcome.metrics["acceptance_length"]
    copied = outcome.artifacts["draft"]
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in source.iterdir())
    assert outcome.model is base and torch.equal(_logits(base), before)


def test_attach_refuses_a_draft_for_another_base(eagle: Trained, tmp_path: Path) -> None:
    draft = tmp_path / "draft"
    shutil.copytree(eagle.outcome.artifacts["draft"], draft)
    config = json.loads((draft / "config.json").read_text())
    config["hidden_size"] = 32
    (draft / "config.json").write_text(json.dumps(config))
    spec = SpeculativePlan(algorithm="eagle3", draft=ModelRef(source=f"file://{draft}"))
    with pytest.raises(UserError, match="hidden_size/vocab_size 32/128, the base has 64/128"):
        speculative.run(make_context(tiny_llama(), tmp_path / "work"), spec)


def test_attach_refuses_a_medusa_checkpoint_as_eagle(medusa: Trained, tmp_path: Path) -> None:
    source = medusa.outcome.artifacts["draft"]
    spec = SpeculativePlan(algorithm="eagle3", draft=ModelRef(source=f"file://{source}"))
    with pytest.raises(UserError, match="not an EAGLE-3 draft"):
        speculative.run(make_context(tiny_llama(), tmp_path), spec)


def test_needs_training_or_a_draft(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="set `training` to train a draft or `draft`"):
        speculative.run(make_context(tiny_llama(), tmp_path), SpeculativePlan(algorithm="medusa"))


def test_eagle3_trains_on_a_one_layer_base(tmp_path: Path) -> None:
    spec = SpeculativePlan(algorithm="eagle3", training=_training(steps=1))
    outcome = speculative.run(make_context(tiny_llama(num_hidden_layers=1), tmp_path), spec)
    config = json.loads((outcome.artifacts["draft"] / "config.json").read_text())
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0]


def test_quantized_base_is_refused_with_the_stack_order(tmp_path: Path) -> None:
    model = mtq.quantize(tiny_llama(), mtq.INT8_DEFAULT_CFG, forward_loop=None)
    spec = SpeculativePlan(algorithm="eagle3", training=_training())
    with pytest.raises(UserError, match="put speculative before ptq/qat/qad"):
        speculative.run(make_context(model, tmp_path), spec)


def test_acceptance_length_counts_accepted_prefixes() -> None:
    base = tiny_llama()
    prompts = token_blocks(EVAL, "eval")[:, :8]
    k = 3

    def perfect(context: torch.Tensor) -> torch.Tensor:
        return speculative._greedy(base, context, k + 1)[1:]

    def useless(context: torch.Tensor) -> torch.Tensor:
        return (perfect(context) + 1) % VOCAB

    assert speculative.measure_acceptance_length(perfect, base, prompts, 12, k) == k + 1
    assert speculative.measure_acceptance_length(useless, base, prompts, 12, k) == 1.0


def test_restarted_training_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    spec = SpeculativePlan(
        algorithm="medusa", training=_training(steps=4, checkpoint_every=2), medusa_heads=1
    )
    with pytest.raises(Interrupted):
        speculative.run(
            make_context(tiny_llama(), tmp_path / "a", progress=interrupt_at("step 3/")), spec
        )
    recorder = Recorder()
    resumed = speculative.run(make_context(tiny_llama(), tmp_path / "a", progress=recorder), spec)
    assert recorder.messages[0] == "medusa draft: resuming at step 3"
    assert resumed.metrics["train_resumed_from_step"] == 2
    assert not any("step 2/4" in m for m in recorder.messages)

    straight = speculative.run(make_context(tiny_llama(), tmp_path / "b"), spec)
    assert resumed.metrics["train_loss_last"] == straight.metrics["train_loss_last"]
    heads_resumed = load_file(resumed.artifacts["draft"] / "model.safetensors")
    heads_straight = load_file(straight.artifacts["draft"] / "model.safetensors")
    for key, tensor in heads_straight.items():
        assert torch.equal(heads_resumed[key], tensor), key
