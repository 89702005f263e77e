"""Quantization-aware training: fine-tune the fake-quantized model from the preceding PTQ.

The quantizers' scales stay as calibrated; the weights learn to sit well on the quantization grid
with the ordinary next-token loss. Training runs through the shared resumable loop
(`techniques._training`): a checkpoint every `checkpoint_every` steps in `ctx.workdir`, and a
restarted run resumes from it. On restart the stack before QAT (the PTQ) is rerun first; its
calibration is deterministic, so the resumed weights meet the same quantizers.
"""

from __future__ import annotations

import torch

from kiln_jobs.errors import UserError
from kiln_jobs.model_facts import is_quantized
from kiln_jobs.plan import QATPlan
from kiln_jobs.sources.data import blocks_digest
from kiln_jobs.techniques._training import train_resumably
from kiln_jobs.techniques.context import TechniqueContext, TechniqueOutcome

__all__ = ["run"]


def run(ctx: TechniqueContext, spec: QATPlan) -> TechniqueOutcome:
    """Train the quantized `ctx.model` for `spec.training.steps` steps."""
    model = ctx.model
    if not is_quantized(model):
        raise UserError("qat: the model is not quantized; put a ptq before qat in the stack")
    blocks = ctx.token_blocks(spec.training.data, "train")
    device = next(model.parameters()).device
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}

    def loss_at(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        return model(input_ids=batch, labels=batch).loss

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
            label="qat",
        )
    finally:
        model.eval()
    return TechniqueOutcome(model=model, metrics=result.metrics())
