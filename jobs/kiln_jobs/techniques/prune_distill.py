"""Structured pruning to a target size, then knowledge distillation from the unpruned model.

Model Optimizer prunes LLMs with `mcore_minitron`, which works on Megatron-Core models only (it
needs megatron-core and a GPU image); its FastNAS mode traces only the MLP widths of a Hugging Face
model. This module is the Hugging Face path, for Llama-family decoders (`model.layers[i].mlp` with
`gate_proj`/`up_proj`/`down_proj`), following Minitron's recipe:

1. **Targets.** `target_layers` and `target_ffn_hidden_size` are exact; `target_params` is an upper
   bound on the parameter count. With both shapes set it is checked; with one set the other is
   solved for (a solved FFN width is rounded down to a multiple of 64); alone, it removes the fewest
   whole layers that fit. A target that cannot be met is refused before any work is done.
2. **Importance**, measured on the `importance` data with the input model:
   - a layer's importance is the increase of the mean next-token loss when that layer alone is
     skipped (one forward pass per layer); the least important layers are removed;
   - a neuron's importance is its mean |act(gate(x)) * up(x)| over the tokens times the L2 norm of
     its `down_proj` column (its mean contribution to the layer's output). Each layer keeps its own
     most important neurons (layers differ hugely); all keep the same width, because a Hugging
     Face config has a single `intermediate_size`.
3. **Student.** A fresh model of the input's class built from the pruned config, loaded with the
   kept weights: a plain Hugging Face model (whatever the input was loaded with, e.g. GGUF), so
   `save_pretrained` and `export_hf_checkpoint` work.
4. **Distillation** with `modelopt.torch.distill`, teacher = the input model as it came into this
   technique (left unchanged). The loss is KL(teacher || student) of the logits at the Plan's
   temperature, summed over the vocabulary, averaged over tokens and scaled by T^2: a per-token KL
   in nats. (`LogitsDistillationLoss`'s default `reduction="mean"` also averages over the
   vocabulary, which makes the loss ~1/vocab_size as large.) Training checkpoints every
   `checkpoint_every` steps and resumes (`kiln_jobs.techniques._training`); the pruning decision is
   saved too, so a restarted pod does not measure importance again.

Metrics: parameter counts and shapes before/after, the removed layers, and the perplexity on the
importance data of the input model, of the pruned model before distillation and after it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import modelopt.torch.distill as mtd
import torch
import torch.nn.functional as F
from modelopt.torch.opt import ModeloptStateManager
from torch import nn
from transformers import PreTrainedModel

from kiln_jobs.errors import UserError
from kiln_jobs.plan import PruneDistillPlan
from kiln_jobs.techniques._training import TrainingResult, train_resumably
from kiln_jobs.techniques.context import TechniqueContext, TechniqueOutcome

__all__ = ["FFN_ALIGNMENT", "run"]

# A solved FFN width is a multiple of this (GPU matmul tiles); explicit targets are kept as given.
FFN_ALIGNMENT = 64
_MICRO_BATCH = 4
_PRUNING_FILE = "pruning.json"
_GATED_MLP = ("gate_proj", "up_proj", "down_proj")
# What the pruning decision depends on; changing only the distillation settings keeps it.
_DECISION_FIELDS = {"target_layers", "target_ffn_hidden_size", "target_params", "importance"}


def run(ctx: TechniqueContext, spec: PruneDistillPlan) -> TechniqueOutcome:
    """Prune `ctx.model` to the Plan's targets by measured importance, then distil it.

    Args:
        ctx: The model to prune (used unchanged as the teacher) and the job's services.
        spec: Targets, importance data, distillation settings and temperature.

    Returns:
        The pruned, distilled student as a plain Hugging Face model, with the measured numbers.
    """
    teacher = _check_prunable(ctx.model)
    shape = _Shape.of(teacher)
    layers, ffn = _resolve_targets(spec, shape)
    device = next(teacher.parameters()).device
    importance = ctx.token_blocks(spec.importance, "calibration").to(device)
    pruning = _load_or_measure(ctx, spec, teacher, importance, layers, ffn)
    student = _build_student(teacher, pruning)
    params_after = _count_params(student)
    if params_after != shape.params(layers, ffn):
        raise RuntimeError(
            f"pruned model has {params_after} params, {shape.params(layers, ffn)} were computed"
        )
    ctx.progress(30.0, f"pruned to {layers} layers x {ffn} FFN, {params_after} params")
    nll_pruned = _mean_nll(student, importance)
    student, result = _distill(ctx, spec, teacher, student, pruning)
    ctx.progress(95.0, "measuring perplexity after distillation")
    nll_distilled = _mean_nll(student, importance)
    metrics: dict[str, float | int | str] = {
        "params_before": _count_params(teacher),
        "params_after": params_after,
        "layers_before": shape.layers,
        "layers_after": layers,
        "ffn_hidden_size_before": shape.ffn,
        "ffn_hidden_size_after": ffn,
        "removed_layers": ",".join(
            str(i) for i in range(shape.layers) if i not in pruning.kept_layers
        ),
        "importance_perplexity_unpruned": _perplexity(pruning.teacher_nll),
        "importance_perplexity_pruned": _perplexity(nll_pruned),
        "importance_perplexity_distilled": _perplexity(nll_distilled),
        **_distill_metrics(result),
    }
    ctx.progress(
        100.0,
        f"perplexity {metrics['importance_perplexity_pruned']} after pruning, "
        f"{metrics['importance_perplexity_distilled']} after distillation",
    )
    return TechniqueOutcome(model=student, metrics=metrics)


# --- what can be pruned -------------------------------------------------------------------------


def _check_prunable(model: Any) -> PreTrainedModel:
    """A Hugging Face Llama-family decoder that no Model Optimizer mode has converted yet."""
    if isinstance(model, nn.Module) and ModeloptStateManager.is_converted(model):
        raise UserError(
            "prune_distill: the model was already converted by Model Optimizer (e.g. quantized); "
            "put prune_distill before ptq/qat/qad in the technique stack"
        )
    layers = getattr(getattr(model, "model", None), "layers", None)
    config = getattr(model, "config", None)
    width = getattr(config, "intermediate_size", None)
    if (
        not isinstance(model, PreTrainedModel)
        or not isinstance(layers, nn.ModuleList)
        or not all(_has_gated_mlp(layer, width) for layer in layers)
    ):
        raise UserError(
            f"prune_distill: {type(model).__name__} is not a Hugging Face Llama-family decoder "
            "(model.layers[i].mlp.gate_proj/up_proj/down_proj). Model Optimizer prunes other "
            "LLMs with mcore_minitron, which needs megatron-core and a Megatron-Core model: use "
            "the GPU image"
        )
    return model


def _has_gated_mlp(layer: nn.Module, width: int | None) -> bool:
    mlp = getattr(layer, "mlp", None)
    gate, up, down = (getattr(mlp, name, None) for name in _GATED_MLP)
    if not (
        isinstance(gate, nn.Linear) and isinstance(up, nn.Linear) and isinstance(down, nn.Linear)
    ):
        return False
    return gate.out_features == up.out_features == down.in_features == width


def _count_params(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


# --- targets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """A uniform decoder's size as a function of its depth and FFN width."""

    layers: int
    ffn: int
    outside_layers: int  # embeddings, final norm, lm_head
    per_layer: int  # attention, norms and MLP biases that do not scale with the width
    per_neuron: int  # one MLP neuron in one layer

    @classmethod
    def of(cls, model: PreTrainedModel) -> _Shape:
        layers = model.model.layers
        mlp = layers[0].mlp
        gate, up, down = (getattr(mlp, name) for name in _GATED_MLP)
        per_neuron = gate.in_features + up.in_features + down.out_features
        per_neuron += sum(1 for linear in (gate, up) if linear.bias is not None)
        in_layers = _count_params(layers)
        ffn = gate.out_features
        return cls(
            layers=len(layers),
            ffn=ffn,
            outside_layers=_count_params(model) - in_layers,
            per_layer=in_layers // len(layers) - per_neuron * ffn,
            per_neuron=per_neuron,
        )

    def params(self, layers: int, ffn: int) -> int:
        return self.outside_layers + layers * (self.per_layer + self.per_neuron * ffn)


def _resolve_targets(spec: PruneDistillPlan, shape: _Shape) -> tuple[int, int]:
    """(layers, FFN width) that meet every target, or a UserError saying why none does."""
    if (
        spec.target_layers is None
        and spec.target_ffn_hidden_size is None
        and not spec.target_params
    ):
        raise UserError("prune_distill: set target_layers, target_ffn_hidden_size or target_params")
    if spec.target_layers is not None and spec.target_layers > shape.layers:
        raise UserError(
            f"prune_distill: target_layers={spec.target_layers} exceeds the model's "
            f"{shape.layers} layers"
        )
    if spec.target_ffn_hidden_size is not None and spec.target_ffn_hidden_size > shape.ffn:
        raise UserError(
            f"prune_distill: target_ffn_hidden_size={spec.target_ffn_hidden_size} "
            f"exceeds the model's {shape.ffn}"
        )
    layers = spec.target_layers or shape.layers
    ffn = spec.target_ffn_hidden_size or shape.ffn
    if spec.target_params is not None:
        layers, ffn = _fit_params(spec, shape, layers, ffn)
    if (layers, ffn) == (shape.layers, shape.ffn):
        raise UserError(
            f"prune_distill: nothing to prune: the model already has {shape.layers} "
            f"layers x {shape.ffn} FFN"
        )
    return layers, ffn


def _fit_params(spec: PruneDistillPlan, shape: _Shape, layers: int, ffn: int) -> tuple[int, int]:
    """Solve the free dimension so the model has at most `target_params` parameters."""
    target = spec.target_params
    assert target is not None
    now = shape.params(shape.layers, shape.ffn)
    if target >= now:
        raise UserError(f"prune_distill: target_params={target} is not below the model's {now}")
    if spec.target_layers is not None and spec.target_ffn_hidden_size is not None:
        if shape.params(layers, ffn) > target:
            raise UserError(
                f"prune_distill: {layers} layers x {ffn} FFN give "
                f"{shape.params(layers, ffn)} params, above target_params={target}"
            )
        return layers, ffn
    if spec.target_layers is not None:
        room = (target - shape.outside_layers) / layers - shape.per_layer
        ffn = math.floor(room / shape.per_neuron / FFN_ALIGNMENT) * FFN_ALIGNMENT
        if ffn < FFN_ALIGNMENT:
            raise UserError(
                f"prune_distill: target_params={target} cannot be met with {layers} "
                f"layers: even an FFN of {FFN_ALIGNMENT} gives "
                f"{shape.params(layers, FFN_ALIGNMENT)} params"
            )
        return layers, ffn
    layers = math.floor(
        (target - shape.outside_layers) / (shape.per_layer + shape.per_neuron * ffn)
    )
    if layers < 1:
        raise UserError(
            f"prune_distill: target_params={target} cannot be met: one layer "
            f"(FFN {ffn}) already gives {shape.params(1, ffn)} params"
        )
    return layers, ffn


# --- importance ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pruning:
    """What to keep, decided once and saved so that a restarted pod keeps the same."""

    kept_layers: list[int]
    ffn: int
    # Kept neuron indices by original layer index; None when the width does not change.
    kept_neurons: dict[int, list[int]] | None
    teacher_nll: float
    layer_importance: list[float] | None


def _load_or_measure(
    ctx: TechniqueContext,
    spec: PruneDistillPlan,
    teacher: PreTrainedModel,
    blocks: torch.Tensor,
    layers: int,
    ffn: int,
) -> _Pruning:
    """The saved decision for this recipe, or a freshly measured one."""
    path = ctx.workdir / _PRUNING_FILE
    key = _recipe_key(spec, teacher, _DECISION_FIELDS)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.pop("recipe") == key:
            neurons = saved["kept_neurons"]
            if neurons is not None:
                saved["kept_neurons"] = {int(i): v for i, v in neurons.items()}
            return _Pruning(**saved)
    pruning = _measure(ctx, teacher, blocks, layers, ffn)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"recipe": key, **asdict(pruning)}))
    partial.replace(path)
    return pruning


def _measure(
    ctx: TechniqueContext, teacher: PreTrainedModel, blocks: torch.Tensor, layers: int, ffn: int
) -> _Pruning:
    """Measure importance on `blocks` and decide which layers and neurons stay."""
    total = len(teacher.model.layers)
    ctx.progress(0.0, "measuring importance")
    width_changes = ffn != teacher.config.intermediate_size
    with _neuron_activity(teacher, enabled=width_changes) as activity:
        teacher_nll = _mean_nll(teacher, blocks)
    layer_importance = None
    kept_layers = list(range(total))
    if layers < total:
        layer_importance = []
        for index in range(total):
            with _without_layer(teacher, index):
                layer_importance.append(_mean_nll(teacher, blocks) - teacher_nll)
            ctx.progress(25.0 * (index + 1) / total, f"layer importance {index + 1}/{total}")
        ranked = sorted(range(total), key=lambda i: layer_importance[i], reverse=True)
        kept_layers = sorted(ranked[:layers])
    kept_neurons = None
    if width_changes:
        kept_neurons = {
            i: _top_neurons(activity[i], teacher.model.layers[i].mlp.down_proj, ffn)
            for i in kept_layers
        }
    return _Pruning(kept_layers, ffn, kept_neurons, teacher_nll, layer_importance)


@contextmanager
def _neuron_activity(model: PreTrainedModel, enabled: bool) -> Iterator[list[torch.Tensor]]:
    """Accumulate, per layer, the mean |activation| of each MLP neuron (down_proj's input)."""
    layers = model.model.layers
    sums = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    counts = [0] * len(layers)
    handles = []

    def hook(index: int):
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            activation = args[0].detach().abs().double()
            sums[index] += activation.reshape(-1, activation.shape[-1]).sum(dim=0).cpu()
            counts[index] += activation.numel() // activation.shape[-1]

        return record

    if enabled:
        handles = [
            layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)
        ]
    means: list[torch.Tensor] = []
    try:
        yield means
    finally:
        for handle in handles:
            handle.remove()
        means.extend(s / max(c, 1) for s, c in zip(sums, counts, strict=True))


def _top_neurons(activity: torch.Tensor, down_proj: nn.Linear, keep: int) -> list[int]:
    """The `keep` neurons with the largest mean |activation| x ||down_proj column||, in order."""
    contribution = activity * down_proj.weight.detach().double().norm(dim=0).cpu()
    return sorted(torch.topk(contribution, keep).indices.tolist())


@contextmanager
def _without_layer(model: PreTrainedModel, index: int) -> Iterator[None]:
    """Run the model with one decoder layer skipped (its input passes straight through)."""
    decoder = model.model
    layers = decoder.layers
    decoder.layers = nn.ModuleList(layer for i, layer in enumerate(layers) if i != index)
    try:
        yield
    finally:
        decoder.layers = layers


@torch.no_grad()
def _mean_nll(model: nn.Module, blocks: torch.Tensor) -> float:
    """Mean next-token negative log-likelihood over all blocks, in nats."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in blocks.split(_MICRO_BATCH):
        logits = model(input_ids=chunk, use_cache=False).logits[:, :-1]
        targets = chunk[:, 1:]
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
        ).item()
        count += targets.numel()
    model.train(was_training)
    return total / count


def _perplexity(nll: float) -> float:
    return round(math.exp(nll), 3)


def _recipe_key(
    spec: PruneDistillPlan, model: PreTrainedModel, fields: set[str] | None = None
) -> str:
    """A digest of the Plan's `fields` (all when None) and the input model's shape."""
    config = model.config
    shape = (config.hidden_size, config.num_hidden_layers, config.intermediate_size)
    text = spec.model_dump_json(include=fields) + repr(shape)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the pruned student -------------------------------------------------------------------------


def _build_student(teacher: PreTrainedModel, pruning: _Pruning) -> PreTrainedModel:
    """A fresh model of the teacher's class with the pruned shape and the kept weights."""
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(pruning.kept_layers)
    config.intermediate_size = pruning.ffn
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):
        config.layer_types = [layer_types[i] for i in pruning.kept_layers]
    # A GGUF (or other) loader's quantizer settings do not describe the new, plain weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = config.architectures or [type(teacher).__name__]
    parameter = next(teacher.parameters())
    with torch.device(parameter.device):
        student: PreTrainedModel = type(teacher)(config)
    student.to(parameter.dtype)  # type: ignore[arg-type]  # transformers wraps `to`; mypy misreads it
    student.load_state_dict(_pruned_state_dict(teacher, pruning), strict=True)
    return student


def _pruned_state_dict(teacher: PreTrainedModel, pruning: _Pruning) -> dict[str, torch.Tensor]:
    """The teacher's tensors for the kept layers (renumbered) and neurons."""
    prefix = "model.layers."
    renumber = {old: new for new, old in enumerate(pruning.kept_layers)}
    pruned: dict[str, torch.Tensor] = {}
    for key, tensor in teacher.state_dict().items():
        if not key.startswith(prefix):
            pruned[key] = tensor
            continue
        index, rest = key.removeprefix(prefix).split(".", 1)
        if int(index) not in renumber:
            continue
        if pruning.kept_neurons is not None:
            tensor = _slice_mlp(rest, tensor, pruning.kept_neurons[int(index)])
        pruned[f"{prefix}{renumber[int(index)]}.{rest}"] = tensor
    return pruned


def _slice_mlp(name: str, tensor: torch.Tensor, neurons: list[int]) -> torch.Tensor:
    """Keep `neurons`: rows of gate/up (weights and biases), columns of down_proj's weight."""
    index = torch.tensor(neurons, device=tensor.device)
    if name in (
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.gate_proj.bias",
        "mlp.up_proj.bias",
    ):
        return tensor.index_select(0, index)
    if name == "mlp.down_proj.weight":
        return tensor.index_select(1, index)
    return tensor


# --- distillation -------------------------------------------------------------------------------


def _distill(
    ctx: TechniqueContext,
    spec: PruneDistillPlan,
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    pruning: _Pruning,
) -> tuple[PreTrainedModel, TrainingResult]:
    """Distil the teacher's logits into the student, resuming from the workdir."""
    device = next(student.parameters()).device
    blocks = ctx.token_blocks(spec.distillation.data, "train").to(device)
    params = dict(student.named_parameters())  # before conversion adds the teacher's
    teacher_grads = {name: p.requires_grad for name, p in teacher.named_parameters()}
    criterion = mtd.LogitsDistillationLoss(temperature=spec.temperature, reduction="none")
    kd_config = {
        "teacher_model": teacher,
        "criterion": {("lm_head", "lm_head"): criterion},
        "loss_balancer": None,
    }
    model = mtd.convert(student, mode=[("kd_loss", kd_config)])

    def loss_at(batch: torch.Tensor) -> torch.Tensor:
        model(input_ids=batch, use_cache=False)
        # "none" leaves a per-token KL (summed over the vocabulary, x T^2): average the tokens.
        return model.compute_kd_loss(loss_reduction_fn=lambda per_token: per_token.mean())

    model.train()
    try:
        result = train_resumably(
            params=params,
            loss_at=loss_at,
            blocks=blocks,
            training=spec.distillation,
            checkpoint_dir=ctx.workdir / "distillation",
            fingerprint=_recipe_key(spec, teacher) + repr(pruning.kept_layers),
            progress=ctx.progress,
            label="distill",
            percent_span=(30.0, 95.0),
        )
    finally:
        student = _plain(mtd.export(model)).eval()
        for name, param in teacher.named_parameters():
            param.requires_grad_(teacher_grads[name])
    return student, result


def _plain(student: PreTrainedModel) -> PreTrainedModel:
    """Drop the modelopt state that distillation leaves on the exported student.

    The state's `kd_loss` entry holds the whole teacher (kept alive, and serialised by anything
    that saves modelopt state), and it makes later techniques see a converted model. The student
    was built fresh and the input was not converted, so all of it comes from this distillation.
    """
    for key in ("_modelopt_state", "_modelopt_state_version"):
        if hasattr(student, key):
            delattr(student, key)
    return student


def _distill_metrics(result: TrainingResult) -> dict[str, float | int | str]:
    metrics: dict[str, float | int | str] = {
        "distill_steps": result.steps,
        "distill_resumed_from_step": result.resumed_from,
    }
    if result.first_loss is not None and result.last_loss is not None:
        metrics["distill_kd_loss_first"] = round(result.first_loss, 5)
        metrics["distill_kd_loss_last"] = round(result.last_loss, 5)
    if result.seconds_per_step is not None:
        metrics["distill_seconds_per_step"] = round(result.seconds_per_step, 3)
    return metrics
