"""Quantization-aware distillation: QAT whose target is a teacher's output distribution.

The teacher is the model as loaded, before any technique (`ctx.load_original`), unless the Plan
names another. `modelopt.torch.distill` wraps the quantized student with the frozen teacher; both
see each batch and the loss compares their logits.

The loss, chosen deliberately (Model Optimizer's `LogitsDistillationLoss` with its default
`reduction="mean"` also averages over the vocabulary, which shrinks the loss ~50,000-fold on a
49k-token vocabulary):

    kd = T² · mean over tokens of KL(softmax(teacher / T) ‖ softmax(student / T))

with the KL summed over the vocabulary (`reduction="none"`, then a mean over batch and positions),
so its scale is that of a cross-entropy and the Plan's learning rate means the same as for QAT.
With `kd_weight < 1` the next-token cross-entropy is mixed in:
`kd_weight · kd + (1 - kd_weight) · ce`.

Training runs through the shared resumable loop (checkpoints in `ctx.workdir`); only the
student's parameters are trained and checkpointed.
"""

from __future__ import annotations

from typing import Any

import modelopt.torch.distill as mtd
import torch

from kiln_jobs.errors import UserError
from kiln_jobs.model_facts import is_quantized
from kiln_jobs.plan import QADPlan
from kiln_jobs.sources.data import blocks_digest
from kiln_jobs.techniques._training import train_resumably
from kiln_jobs.techniques.context import TechniqueContext, TechniqueOutcome

__all__ = ["run"]


def run(ctx: TechniqueContext, spec: QADPlan) -> TechniqueOutcome:
    """Distill the teacher into the quantized `ctx.model` for `spec.training.steps` steps."""
    if not is_quantized(ctx.model):
        raise UserError("qad: the model is not quantized; put a ptq before qad in the stack")
    blocks = ctx.token_blocks(spec.training.data, "train")
    teacher = ctx.load_model(spec.teacher) if spec.teacher else ctx.load_original()
    device = next(ctx.model.parameters()).device
    teacher.to(device).eval()
    model = mtd.convert(
        ctx.model, mode=[("kd_loss", distillation_config(ctx.model, teacher, spec))]
    )
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    mix_ce = spec.kd_weight < 1.0

    def loss_at(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        output = model(input_ids=batch, labels=batch if mix_ce else None)
        return model.compute_kd_loss(
            student_loss=output.loss if mix_ce else None,
            loss_reduction_fn=_mean_over_tokens,
        )

    model.train()
    try:
        result = train_resumably(
            params=params,
            loss_at=loss_at,
            blocks=blocks,
            training=spec.training,
            checkpoint_dir=ctx.workdir,
            fingerprint=f"{spec.model_dump_json()} {blocks_digest(blocks)}",
            progress=ctx.progress,
            label="qad",
        )
    finally:
        model.eval()
    student = mtd.export(model)
    del teacher
    metrics = {**result.metrics(), "temperature": spec.temperature, "kd_weight": spec.kd_weight}
    return TechniqueOutcome(model=student, metrics=metrics)


def distillation_config(student: Any, teacher: Any, spec: QADPlan) -> dict[str, Any]:
    """The `kd_loss` mode config: logits distillation between the two output heads."""
    criterion = mtd.LogitsDistillationLoss(temperature=spec.temperature, reduction="none")
    return {
        "teacher_model": teacher,
        "criterion": {(_head_name(student), _head_name(teacher)): criterion},
        # Without a balancer the KD loss is the whole loss.
        "loss_balancer": mtd.StaticLossBalancer(spec.kd_weight) if spec.kd_weight < 1 else None,
    }


def _head_name(model: Any) -> str:
    """Name of the module that produces the logits (`lm_head` in most HF models)."""
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is head:
            return name
    raise UserError(f"qad: {type(model).__name__} has no output head to distill from")


def _mean_over_tokens(per_token: torch.Tensor) -> torch.Tensor:
    """[batch, positions] KL (already summed over the vocabulary) → its mean."""
    return per_token.mean()
