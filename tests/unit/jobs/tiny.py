"""A tiny Llama with its own tokenizer, trained briefly on real text, saved as an HF directory.

Random weights quantize without visible loss; a few hundred steps on license text give the model
enough structure for quantization to cost perplexity, so the gate can be exercised for real.
Everything is built here, from a config and text on this machine: nothing is downloaded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kiln_jobs.evaluate import evaluation_tokens, perplexity
from kiln_jobs.plan import (
    DataRef,
    EnginePlan,
    EvaluationPlan,
    ModelRef,
    OutputPlan,
    Plan,
    PlanMetadata,
    Technique,
)
from kiln_jobs.sources import data
from kiln_jobs.sources.data import builtin_files
from kiln_jobs.sources.models import LoadedModel, load_model
from kiln_jobs.techniques.context import ProgressReporter, TechniqueContext

__all__ = [
    "TRAIN_STEPS",
    "build_tiny_model",
    "context",
    "eval_perplexity",
    "eval_ref",
    "load_tiny",
    "tiny_config",
    "tiny_plan",
]

TRAIN_STEPS = 150
_VOCAB = 384
_SEQ = 64


def tiny_config(vocab_size: int, **overrides: object) -> LlamaConfig:
    """Two layers, width 64 (AWQ block 64 fits, 128 does not); `architectures` for the exporter."""
    fields: dict[str, object] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "architectures": ["LlamaForCausalLM"],
    }
    fields.update(overrides)
    return LlamaConfig(**fields)


def _tokenizer(text: str) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")


def build_tiny_model(directory: Path) -> Path:
    """Train and save the tiny model + tokenizer into `directory`; returns it."""
    text = "\n\n".join(p.read_text() for p in builtin_files("train"))
    tokenizer = _tokenizer(text)
    ids = torch.tensor(tokenizer(text)["input_ids"])
    blocks = ids[: ids.numel() // _SEQ * _SEQ].view(-1, _SEQ)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_config(len(tokenizer)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(TRAIN_STEPS):
            batch = blocks[torch.randint(0, blocks.shape[0], (8,))]
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def eval_ref(samples: int = 4, seq_length: int = 64) -> DataRef:
    """The built-in evaluation text, a few windows of it."""
    return DataRef(samples=samples, seq_length=seq_length)


def load_tiny(directory: Path) -> LoadedModel:
    """The tiny model loaded the way the runner loads models."""
    ref = ModelRef(source=f"file://{directory}")
    return load_model(ref, device=torch.device("cpu"), cache_dir=directory / "cache")


def context(
    loaded: LoadedModel,
    workdir: Path,
    *,
    model: Any = None,
    progress: ProgressReporter | None = None,
    original: Any = None,
) -> TechniqueContext:
    """A TechniqueContext over the tiny model with the real data sources."""

    def token_blocks(ref: DataRef, role: str) -> torch.Tensor:
        return data.token_blocks(ref, role, loaded.tokenizer, workdir)

    def no_other_models(ref: ModelRef) -> Any:
        raise AssertionError(f"unexpected load of {ref.source}")

    return TechniqueContext(
        model=loaded.model if model is None else model,
        tokenizer=loaded.tokenizer,
        device=torch.device("cpu"),
        workdir=workdir,
        progress=progress or (lambda percent, message="": None),
        load_original=(lambda: copy.deepcopy(original)) if original is not None else _no_original,
        load_model=no_other_models,
        token_blocks=token_blocks,
    )


def _no_original() -> Any:
    raise AssertionError("unexpected load_original")


def eval_perplexity(loaded: LoadedModel, model: Any, ref: DataRef | None = None) -> float:
    """Perplexity of `model` on the built-in evaluation text (disjoint windows)."""
    ref = ref or eval_ref()
    stream = data.token_stream(ref, data.EVAL_ROLE, loaded.tokenizer, Path())
    return perplexity(
        model, evaluation_tokens(stream, ref), seq_length=ref.seq_length, stride=ref.seq_length
    )


def tiny_plan(
    model_dir: Path,
    store: Path,
    techniques: tuple[Technique, ...],
    *,
    max_degradation_percent: float | None = None,
    escalation: tuple[tuple[Technique, ...], ...] = (),
    **fields: Any,
) -> Plan:
    """A Plan over the tiny model, served by the Python backend (no TensorRT-LLM here)."""
    return Plan(
        metadata=PlanMetadata(name="tiny"),
        model=ModelRef(source=f"file://{model_dir}"),
        techniques=techniques,
        evaluation=EvaluationPlan(
            data=eval_ref(),
            stride=64,
            max_degradation_percent=max_degradation_percent,
            on_gate_failure="escalate" if escalation else "fail",
            escalation=escalation,
        ),
        engine=EnginePlan(backend="none"),
        output=OutputPlan(store=f"file://{store}"),
        **fields,
    )
