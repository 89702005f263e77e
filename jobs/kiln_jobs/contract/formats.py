"""Quantization formats, KV-cache precisions and the GPU generations that run them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = [
    "AWQ_BLOCK_SIZES",
    "FAMILIES",
    "FORMATS",
    "KV_CACHES",
    "AwqBlockSize",
    "CalibrationAlgorithm",
    "Family",
    "FormatSpec",
    "KVCacheFormat",
    "KVCacheSpec",
    "QuantFormat",
    "Shortfall",
    "awq_formats",
    "format_spec",
    "kv_cache_spec",
    "older",
    "shortfall",
]

# --- GPU generations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """An NVIDIA GPU generation."""

    name: str
    compute_capability: tuple[int, int]  # the first CUDA compute capability of the generation
    example: str  # a GPU of it, for messages


# In order of capability.
FAMILIES: Final = (
    Family("volta", (7, 0), "V100"),
    Family("turing", (7, 5), "T4"),
    Family("ampere", (8, 0), "A100"),
    Family("ada", (8, 9), "L40S"),
    Family("hopper", (9, 0), "H100"),
    Family("blackwell", (10, 0), "B200"),
)
_FAMILY_INDEX = {family.name: index for index, family in enumerate(FAMILIES)}


def older(family: str, minimum: str) -> bool:
    """Whether generation `family` predates `minimum`."""
    return _FAMILY_INDEX[family] < _FAMILY_INDEX[minimum]


# --- quantization formats ---------------------------------------------------------------------

QuantFormat = Literal["fp8", "nvfp4", "int8_sq", "int4_awq", "w4a8_awq"]
KVCacheFormat = Literal["none", "fp8", "nvfp4"]
#: AWQ group sizes, preferred first; the exporter packs only whole blocks.
AwqBlockSize = Literal[128, 64, 32]
AWQ_BLOCK_SIZES: Final[tuple[int, ...]] = get_args(AwqBlockSize)


#: Model Optimizer's calibration algorithms, by the name its configs use; `smoothquant_search`
#: is SmoothQuant with its migration strength chosen on the calibration text
#: (`kiln_jobs.techniques.ptq`).
CalibrationAlgorithm = Literal[
    "max", "mse", "smoothquant", "smoothquant_search", "awq_lite", "awq_clip", "awq_full"
]
_MAX = ("max", "mse")
_SMOOTHQUANT = ("smoothquant", "smoothquant_search")
_AWQ_ALGORITHMS = ("awq_lite", "awq_clip", "awq_full")


@dataclass(frozen=True)
class FormatSpec:
    """One post-training quantization format."""

    name: str
    modelopt_config: str  # the `modelopt.torch.quantization` config it starts from
    min_family: str  # the oldest generation whose TensorRT-LLM kernels run it
    awq: bool  # weights quantized in blocks along the input dimension (a block size applies)
    calibration_passes: int  # how often calibration runs the data through the model
    cpu: bool  # Model Optimizer can calibrate and Kiln can serve it without a GPU
    summary: str  # for people: what it quantizes
    # The calibration algorithms it takes; the first is the one its config starts with.
    algorithms: tuple[str, ...]
    # What the escalation ladder's calibration rung tries instead; None: no rung for it.
    better_algorithm: str | None

    @property
    def default_algorithm(self) -> str:
        return self.algorithms[0]


_F = FormatSpec
# fmt: off
FORMATS: Final[dict[str, FormatSpec]] = {
    spec.name: spec
    for spec in (
        #  name        modelopt config         oldest GPU   awq passes cpu
        _F("fp8",      "FP8_DEFAULT_CFG",      "ada",       False, 1, True,
           "FP8 weights and activations",      _MAX, "mse"),
        # MSE calibration of NVFP4 is not measured yet (no Blackwell GPU here): no rung.
        _F("nvfp4",    "NVFP4_DEFAULT_CFG",    "blackwell", False, 1, False,
           "FP4 weights, activations",         _MAX, None),
        _F("int8_sq",  "INT8_SMOOTHQUANT_CFG", "ampere",    False, 1, True,
           "SmoothQuant W8A8",                 _SMOOTHQUANT, "smoothquant_search"),
        _F("int4_awq", "INT4_AWQ_CFG",         "ampere",    True,  2, True,
           "W4A16: INT4 weights",              _AWQ_ALGORITHMS, "awq_full"),
        _F("w4a8_awq", "W4A8_AWQ_BETA_CFG",    "ada",       True,  4, True,
           "INT4 weights, FP8 activations",    _AWQ_ALGORITHMS, "awq_full"),
    )
}
# fmt: on


@dataclass(frozen=True)
class KVCacheSpec:
    """One KV-cache precision."""

    name: str
    modelopt_config: str | None  # None: the model's own dtype
    min_family: str | None
    cpu: bool


KV_CACHES: Final[dict[str, KVCacheSpec]] = {
    spec.name: spec
    for spec in (
        KVCacheSpec("none", None, None, True),
        KVCacheSpec("fp8", "FP8_KV_CFG", "ada", True),
        KVCacheSpec("nvfp4", "NVFP4_KV_CFG", "blackwell", False),
    )
}

# The Literals are what pydantic checks and the CRD enumerates; the tables are what everything
# else reads. They must name the same things.
for _literal, _table in ((QuantFormat, FORMATS), (KVCacheFormat, KV_CACHES)):
    if tuple(get_args(_literal)) != tuple(_table):
        raise RuntimeError(f"{get_args(_literal)} and the table {tuple(_table)} differ")
for _format in FORMATS.values():
    _known = set(get_args(CalibrationAlgorithm))
    if not set(_format.algorithms) <= _known or _format.better_algorithm not in (
        None,
        *_format.algorithms,
    ):
        raise RuntimeError(f"{_format.name}: calibration algorithms outside {sorted(_known)}")


def awq_formats() -> list[str]:
    """The formats a block size applies to."""
    return [name for name, spec in FORMATS.items() if spec.awq]


def format_spec(name: str) -> FormatSpec:
    """The table entry of a quantization format.

    Raises:
        ValueError: `name` is not a format Kiln knows.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown quantization format {name!r}: use one of {list(FORMATS)}"
        ) from None


def kv_cache_spec(name: str) -> KVCacheSpec:
    """The table entry of a KV-cache precision.

    Raises:
        ValueError: `name` is not a KV-cache precision Kiln knows.
    """
    try:
        return KV_CACHES[name]
    except KeyError:
        raise ValueError(
            f"unknown KV-cache format {name!r}: use one of {list(KV_CACHES)}"
        ) from None


@dataclass(frozen=True)
class Shortfall:
    """A format (or KV-cache precision) that a GPU generation is too old for."""

    what: Literal["format", "KV-cache format"]
    value: str
    minimum: str  # the oldest generation that runs it

    @property
    def example(self) -> str:
        """A GPU of the minimum generation, for messages."""
        return FAMILIES[_FAMILY_INDEX[self.minimum]].example


def shortfall(fmt: str, kv_cache: str, family: str | None) -> Shortfall | None:
    """What generation `family` lacks to run `fmt` with KV cache `kv_cache`, or None.

    `family` None is a machine without CUDA: only formats without a CPU path fall short there.
    Unknown formats raise ValueError (see `format_spec`), never pass.
    """
    weights, kv = format_spec(fmt), kv_cache_spec(kv_cache)
    checks: tuple[tuple[Literal["format", "KV-cache format"], str, str | None, bool], ...] = (
        ("format", fmt, weights.min_family, weights.cpu),
        ("KV-cache format", kv_cache, kv.min_family, kv.cpu),
    )
    for what, value, minimum, cpu in checks:
        if minimum is None:
            continue
        if (family is None and not cpu) or (family is not None and older(family, minimum)):
            return Shortfall(what, value, minimum)
    return None
