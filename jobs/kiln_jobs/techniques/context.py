"""What a technique receives and what it gives back.

Every technique module exposes `run(ctx, spec) -> TechniqueOutcome`, with its Plan model as `spec`.
The runner owns loading, evaluation, export and publishing; a technique only changes the model.
Techniques never import each other: what they share lives here or in the data/model sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from kiln_jobs.plan import DataRef, ModelRef

__all__ = ["ProgressReporter", "TechniqueContext", "TechniqueOutcome"]


class ProgressReporter(Protocol):
    """Reports progress of the current stage: a log progress bar plus a machine-readable line."""

    def __call__(self, percent: float, message: str = "") -> None: ...


@dataclass
class TechniqueContext:
    """The model being optimized and the services a technique may use."""

    model: Any  # a transformers PreTrainedModel, changed in place or replaced
    tokenizer: Any
    device: torch.device
    # Scratch space for this technique (checkpoints for resume live here; it survives a restart).
    workdir: Path
    progress: ProgressReporter
    # A fresh copy of the model as first loaded, before any technique: the default teacher.
    load_original: Callable[[], Any]
    # Load another model (a teacher, an existing draft) from the Plan's reference.
    load_model: Callable[[ModelRef], Any]
    # Token blocks of shape [samples, seq_length] for a data reference in a role
    # ("calibration", "train" or "eval"; the built-in text keeps eval apart from the others).
    token_blocks: Callable[[DataRef, str], torch.Tensor]
    # The Plan's evaluation data, for techniques that measure on it (speculative decoding's
    # acceptance length). None: the technique falls back to its own data in the "eval" role.
    evaluation_data: DataRef | None = None
    # A local directory holding a referenced model's files (downloaded or mounted), for
    # techniques that copy files rather than load a model (attaching an existing draft).
    # None: only `file://` references can be resolved.
    resolve_model: Callable[[ModelRef], Path] | None = None


@dataclass
class TechniqueOutcome:
    """What a technique produced."""

    model: Any
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    # Extra directories to publish beside the checkpoint, by name (e.g. {"draft": path}).
    artifacts: dict[str, Path] = field(default_factory=dict)
    # Facts about the checkpoint (e.g. quant_algo, group_size) for the manifest's CheckpointInfo.
    checkpoint: dict[str, Any] = field(default_factory=dict)
