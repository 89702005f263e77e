"""The optimization techniques a model team can stack, in the order they run."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from kiln_jobs.contract import (
    AWQ_BLOCK_SIZES,
    FORMATS,
    KV_CACHES,
    AwqBlockSize,
    CalibrationAlgorithm,
    KVCacheFormat,
    QuantFormat,
    awq_formats,
)
from kiln_operator.api.base import KilnModel, SecretName, cel_rules
from kiln_operator.api.uris import BUILTIN_TEXT, DataURI, ModelURI

__all__ = [
    "DataSpec",
    "ModelRefSpec",
    "PTQSpec",
    "PruneDistillSpec",
    "QADSpec",
    "QATSpec",
    "SpeculativeSpec",
    "TechniqueSpec",
    "TrainingSpec",
]

_AWQ = awq_formats()


def _generation(family: str | None) -> str:
    return "any GPU" if family is None else f"{family.capitalize()} and newer"


# `kubectl explain` lists every format and what it needs, straight from the table.
_FORMAT_DOC = (
    "Quantization format. "
    + "; ".join(
        f"{name} ({spec.summary}): {_generation(spec.min_family)}" for name, spec in FORMATS.items()
    )
    + "."
)
_KV_CACHE_DOC = (
    "KV-cache precision: "
    + "; ".join(
        f"{name} ({_generation(spec.min_family)})"
        if spec.modelopt_config
        else f"{name} keeps the model's dtype"
        for name, spec in KV_CACHES.items()
    )
    + "."
)

_ALGORITHMS_BY_FORMAT = "; ".join(
    f"{name}: {', '.join(spec.algorithms)}" for name, spec in FORMATS.items()
)
_ALGORITHM_DOC = (
    "Model Optimizer calibration algorithm. Unset: the format's first. "
    + _ALGORITHMS_BY_FORMAT
    + ". smoothquant_search tries SmoothQuant strengths 0.5-1.0 and keeps the one with the "
    "lowest loss on the calibration text."
)

# Wire names of the technique fields, in the order they are documented.
TECHNIQUE_KINDS = ("ptq", "qat", "qad", "speculative", "pruneDistill")
_FIELD_OF_KIND = {kind: re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower() for kind in TECHNIQUE_KINDS}


class DataSpec(KilnModel):
    """A text dataset, read as fixed-length token sequences."""

    source: DataURI = BUILTIN_TEXT
    """Where the text is: builtin://common-licenses (English text shipped with the job image;
    evaluation reads different files than calibration and training), hf://datasets/org/name,
    or a JSONL, text or saved HF-datasets location under pvc://, s3:// or file:// (kiln run
    only)."""
    text_field: str = Field(default="text", min_length=1, max_length=128)
    """For JSONL and HF datasets: the field that holds the text."""
    samples: int | None = Field(default=None, gt=0, le=1_000_000)
    """Number of sequences to use. Defaults depend on the role: 128 for calibration, 512 for
    training, 16 for evaluation."""
    seq_length: int | None = Field(default=None, gt=0, le=131_072)
    """Tokens per sequence. Defaults to 512."""


class ModelRefSpec(KilnModel):
    """Another model: a teacher or an existing draft."""

    source: ModelURI
    """Model URI, written like spec.model.source."""
    revision: str | None = Field(default=None, max_length=256)
    """Revision (branch, tag or commit) for hf:// sources."""
    credentials_secret: SecretName | None = None
    """Name of a Secret in this namespace with the credentials to read the model (HF_TOKEN, or
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). Never the credential itself."""


class TrainingSpec(KilnModel):
    """Optimizer settings for a training technique."""

    steps: int | None = Field(default=None, gt=0, le=10_000_000)
    """Optimizer steps. Defaults to 100."""
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    """AdamW learning rate, reached after warmupSteps of linear warm-up and then held
    constant. Defaults to 1e-5."""
    batch_size: int | None = Field(default=None, gt=0, le=4096)
    """Sequences per step. Defaults to 4."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Linear warm-up steps. Defaults to 0."""
    checkpoint_every: int | None = Field(default=None, gt=0)
    """Save a resumable checkpoint every this many steps, so a preempted pod continues where
    it stopped. Defaults to 50."""
    data: DataSpec | None = None
    """Training text. Defaults to builtin://common-licenses."""


class PTQSpec(KilnModel):
    """Post-training quantization: calibrate, then quantize weights (and activations)."""

    format: QuantFormat = Field(description=_FORMAT_DOC)
    kv_cache: KVCacheFormat = Field(default="none", description=_KV_CACHE_DOC)
    block_size: AwqBlockSize | None = Field(
        default=None,
        description=f"Group size for {' and '.join(_AWQ)}. Unset picks the largest of "
        f"{', '.join(map(str, AWQ_BLOCK_SIZES))} that divides every quantized layer's "
        "input size.",
    )
    calibration: DataSpec | None = None
    """Calibration text. Defaults to 128 sequences of 512 tokens of builtin://common-licenses."""
    exclude_modules: list[str] | None = Field(default=None, max_length=64)
    """Module name patterns (fnmatch) kept in full precision. Defaults to ["*lm_head*"]."""
    calibration_algorithm: CalibrationAlgorithm | None = Field(
        default=None, description=_ALGORITHM_DOC
    )
    keep_sensitive_layers: bool = False
    """Keep the first and last transformer blocks in full precision too (they are the most
    sensitive to quantization): a little size for accuracy."""

    model_config = cel_rules(
        (
            f"!has(self.blockSize) || self.format in {_AWQ}",
            f"blockSize applies to {' and '.join(_AWQ)} only",
            ".blockSize",
        ),
        (
            "!has(self.calibrationAlgorithm) || "
            + " || ".join(
                f"(self.format == '{name}' && self.calibrationAlgorithm in {list(spec.algorithms)})"
                for name, spec in FORMATS.items()
            ),
            "calibrationAlgorithm does not apply to this format: " + _ALGORITHMS_BY_FORMAT,
            ".calibrationAlgorithm",
        ),
    )

    @model_validator(mode="after")
    def _block_size_needs_awq(self) -> PTQSpec:
        if self.block_size is not None and self.format not in _AWQ:
            raise ValueError(f"blockSize: applies to {' and '.join(_AWQ)}, not {self.format}")
        return self

    @model_validator(mode="after")
    def _algorithm_fits_the_format(self) -> PTQSpec:
        allowed = FORMATS[self.format].algorithms
        if self.calibration_algorithm is not None and self.calibration_algorithm not in allowed:
            raise ValueError(
                f"calibrationAlgorithm: {self.format} takes {', '.join(allowed)}, "
                f"not {self.calibration_algorithm}"
            )
        return self


class QATSpec(TrainingSpec):
    """Quantization-aware training: fine-tune the quantized model to win back accuracy.

    Needs a quantization format: a ptq earlier in the stack, or `format` here (then Kiln
    calibrates with default settings first)."""

    format: QuantFormat | None = None
    """Quantization format when no ptq precedes this technique."""


class QADSpec(QATSpec):
    """Quantization-aware distillation: QAT that learns from a teacher's logits."""

    teacher: ModelRefSpec | None = None
    """The teacher. Defaults to the model in spec.model, unquantized."""
    temperature: float | None = Field(default=None, gt=0, le=100)
    """Softmax temperature of the distillation loss. Defaults to 2."""
    kd_weight: float | None = Field(default=None, ge=0, le=1)
    """Weight of the distillation loss; the rest goes to the next-token loss. Defaults to 1."""


class SpeculativeSpec(KilnModel):
    """Speculative decoding: train a draft (EAGLE-3 or Medusa) or attach an existing one."""

    algorithm: Literal["eagle3", "medusa"]
    """Draft architecture."""
    draft: ModelRefSpec | None = None
    """An existing, already trained draft to serve with the model. When set, no training runs."""
    training: TrainingSpec | None = None
    """Draft training settings, when no draft is attached."""
    num_layers: int | None = Field(default=None, gt=0, le=8)
    """Decoder layers in an EAGLE-3 draft, or per Medusa head. Defaults to 1."""
    medusa_heads: int | None = Field(default=None, gt=0, le=16)
    """Medusa heads (tokens proposed per step). Defaults to 4."""

    model_config = cel_rules(
        (
            "!(has(self.draft) && has(self.training))",
            "set draft (attach an existing draft) or training, not both",
            ".training",
        ),
        (
            "!has(self.medusaHeads) || self.algorithm == 'medusa'",
            "medusaHeads applies to algorithm: medusa only",
            ".medusaHeads",
        ),
    )

    @model_validator(mode="after")
    def _draft_or_training(self) -> SpeculativeSpec:
        if self.draft is not None and self.training is not None:
            raise ValueError("training: set draft (attach an existing draft) or training, not both")
        if self.medusa_heads is not None and self.algorithm != "medusa":
            raise ValueError("medusaHeads: applies to algorithm: medusa only")
        return self


class PruneDistillSpec(KilnModel):
    """Structured pruning by measured importance, then knowledge distillation from the
    unpruned model. Hugging Face Llama-family models prune depth and MLP width on any GPU;
    Megatron-based Minitron pruning needs the Megatron job image."""

    target_layers: int | None = Field(default=None, gt=0)
    """Decoder layers to keep (depth pruning)."""
    target_ffn_hidden_size: int | None = Field(default=None, gt=0)
    """MLP intermediate size to keep in every layer (width pruning)."""
    target_params: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?[KMB]?$")
    """Parameter budget, e.g. 100M or 6.5B; Kiln prunes MLP width to meet it."""
    importance: DataSpec | None = None
    """Text on which layer and neuron importance is measured. Defaults to 64 sequences."""
    distillation: TrainingSpec | None = None
    """Distillation settings. Defaults to 200 steps."""
    temperature: float | None = Field(default=None, gt=0, le=100)
    """Softmax temperature of the distillation loss. Defaults to 1."""

    model_config = cel_rules(
        (
            "has(self.targetLayers) || has(self.targetFfnHiddenSize) || has(self.targetParams)",
            "set at least one of targetLayers, targetFfnHiddenSize, targetParams",
        )
    )

    @model_validator(mode="after")
    def _has_target(self) -> PruneDistillSpec:
        if (
            self.target_layers is None
            and self.target_ffn_hidden_size is None
            and not self.target_params
        ):
            raise ValueError("set at least one of targetLayers, targetFfnHiddenSize, targetParams")
        return self


class TechniqueSpec(KilnModel):
    """One step of the stack. Set exactly one of its fields."""

    ptq: PTQSpec | None = None
    """Post-training quantization."""
    qat: QATSpec | None = None
    """Quantization-aware training."""
    qad: QADSpec | None = None
    """Quantization-aware distillation."""
    speculative: SpeculativeSpec | None = None
    """Speculative-decoding draft."""
    prune_distill: PruneDistillSpec | None = None
    """Pruning plus knowledge distillation."""

    model_config = cel_rules(
        (
            " + ".join(f"(has(self.{k}) ? 1 : 0)" for k in TECHNIQUE_KINDS) + " == 1",
            "each technique sets exactly one of: " + ", ".join(TECHNIQUE_KINDS),
        )
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TechniqueSpec:
        if len(self.kinds()) != 1:
            raise ValueError("each technique sets exactly one of: " + ", ".join(TECHNIQUE_KINDS))
        return self

    def kinds(self) -> list[str]:
        """The technique fields that are set (exactly one on a valid item)."""
        return [k for k in TECHNIQUE_KINDS if getattr(self, _FIELD_OF_KIND[k]) is not None]

    @property
    def kind(self) -> str:
        """Which technique this item is (its wire name)."""
        return self.kinds()[0]

    @property
    def body(self) -> KilnModel:
        """The one technique set on this item."""
        return getattr(self, _FIELD_OF_KIND[self.kind])
