"""A resumable optimizer loop, shared by draft training and distillation.

The loop is deliberately plain: AdamW over the given parameters, linear warm-up then a constant
learning rate, gradient clipping at 1.0, and batch `s` made of rows `s*b .. s*b+b-1` (mod the
number of blocks) of the token blocks. Everything that decides step `s` is a function of `s`, so
a pod restarted from a checkpoint trains exactly as if it had never stopped.

A checkpoint (`<dir>/checkpoint.pt`, written atomically) holds the step, the trained parameters,
the optimizer state and the loss history. It carries a fingerprint of the recipe; a checkpoint
with another fingerprint is ignored, so a changed Plan never resumes from a stale run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln_jobs.plan import TrainingPlan
from kiln_jobs.techniques.context import ProgressReporter

__all__ = ["CHECKPOINT_FILE", "TrainingResult", "train_resumably"]

CHECKPOINT_FILE = "checkpoint.pt"
_MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class TrainingResult:
    """What a training loop did, for the technique's metrics."""

    steps: int
    resumed_from: int
    losses: tuple[float, ...]
    # Mean wall time of the steps run in this process; None when all steps were restored.
    seconds_per_step: float | None

    @property
    def first_loss(self) -> float | None:
        """Loss of step 1 (restored from the checkpoint after a resume)."""
        return self.losses[0] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        """Loss of the final step."""
        return self.losses[-1] if self.losses else None

    def metrics(self) -> dict[str, float | int | str]:
        """Steps, resume point, first and last loss and time per step, as a technique reports
        them in the manifest."""
        metrics: dict[str, float | int | str] = {
            "steps": self.steps,
            "resumed_from_step": self.resumed_from,
        }
        if self.first_loss is not None and self.last_loss is not None:
            metrics.update(first_loss=round(self.first_loss, 4), last_loss=round(self.last_loss, 4))
        if self.seconds_per_step is not None:
            metrics["seconds_per_step"] = round(self.seconds_per_step, 3)
        return metrics


def batch_at(blocks: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The rows of `blocks` that step `step` (0-based) trains on, wrapping around the data."""
    rows = [(step * batch_size + i) % blocks.shape[0] for i in range(batch_size)]
    return blocks[rows]


def learning_rate_at(training: TrainingPlan, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then the Plan's learning rate."""
    if step < training.warmup_steps:
        return training.learning_rate * (step + 1) / (training.warmup_steps + 1)
    return training.learning_rate


def train_resumably(
    *,
    params: dict[str, torch.nn.Parameter],
    loss_at: Callable[[torch.Tensor], torch.Tensor],
    blocks: torch.Tensor,
    training: TrainingPlan,
    checkpoint_dir: Path,
    fingerprint: str,
    progress: ProgressReporter,
    label: str,
    percent_span: tuple[float, float] = (0.0, 100.0),
) -> TrainingResult:
    """Train `params` for `training.steps` steps, resuming from `checkpoint_dir` when possible.

    Args:
        params: The trainable parameters by name; nothing else is updated or checkpointed.
        loss_at: Computes the scalar loss of one batch (a LongTensor [batch, seq_len]).
        blocks: Training token blocks [samples, seq_len].
        training: Steps, learning rate, batch size, checkpoint interval, warm-up.
        checkpoint_dir: Where the checkpoint lives; it must survive a pod restart.
        fingerprint: Identifies the recipe; a checkpoint written for another one is ignored.
        progress: The stage's progress reporter.
        label: Names the loop in progress messages, e.g. "distill".
        percent_span: The part of the stage's progress bar this loop fills.

    Returns:
        The step count, where it resumed and the loss of every step.
    """
    optimizer = torch.optim.AdamW(list(params.values()), lr=training.learning_rate)
    path = checkpoint_dir / CHECKPOINT_FILE
    start, losses = _restore(path, fingerprint, params, optimizer)
    lo, hi = percent_span
    progress(lo, f"{label}: resuming at step {start + 1}" if start else f"{label}: starting")
    began = time.monotonic()
    for step in range(start, training.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(training, step)
        loss = loss_at(batch_at(blocks, step, training.batch_size))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{label}: loss is {loss.item()} at step {step + 1}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), _MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        done = step + 1
        if done % training.checkpoint_every == 0 or done == training.steps:
            _save(path, fingerprint, done, params, optimizer, losses)
        percent = lo + (hi - lo) * done / training.steps
        progress(percent, f"{label}: step {done}/{training.steps} loss {losses[-1]:.4f}")
    ran = training.steps - start
    return TrainingResult(
        steps=training.steps,
        resumed_from=start,
        losses=tuple(losses),
        seconds_per_step=(time.monotonic() - began) / ran if ran else None,
    )


def _restore(
    path: Path,
    fingerprint: str,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> tuple[int, list[float]]:
    """Load a matching checkpoint into `params` and `optimizer`; (0, []) when there is none."""
    if not path.exists():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint or set(state["params"]) != set(params):
        return 0, []
    with torch.no_grad():
        for name, tensor in state["params"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), [float(x) for x in state["losses"]]


def _save(
    path: Path,
    fingerprint: str,
    step: int,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    losses: list[float],
) -> None:
    """Write the checkpoint atomically: a reader sees the old one or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "params": {name: p.detach().cpu().clone() for name, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "losses": list(losses),
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)
