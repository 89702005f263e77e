"""What each NVIDIA GPU generation can run, keyed the way GPU feature discovery labels nodes.

GPU feature discovery sets `nvidia.com/gpu.product` (e.g. `NVIDIA-H100-80GB-HBM3`) and
`nvidia.com/gpu.family` (e.g. `hopper`) on every GPU node. Kiln uses them to refuse, before any
GPU time is spent, a format the requested GPU cannot run.
"""

from __future__ import annotations

import re

# One table of which generation runs which format, shared with the job's own device check.
from kiln_jobs.contract import FAMILIES, KV_CACHES, shortfall

__all__ = [
    "FAMILY_LABEL",
    "PRODUCT_LABEL",
    "family_of_product",
    "format_support_problem",
    "normalize_family",
]

PRODUCT_LABEL = "nvidia.com/gpu.product"
FAMILY_LABEL = "nvidia.com/gpu.family"

_FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("blackwell", r"\bG?B[123]00\b|BLACKWELL|RTX-50[0-9]0|RTX-PRO-6000"),
    ("hopper", r"\bG?H[12]00\b|\bH[28]00\b|\bH20\b"),
    ("ada", r"\bL40S?\b|\bL4\b|\bL20\b|RTX-40[0-9]0|RTX-[0-9]000-ADA"),
    ("ampere", r"\bA(100|800|40|30|10G?|16|2)\b|RTX-30[0-9]0|RTX-A[0-9]000"),
    ("turing", r"\bT4\b|RTX-20[0-9]0|QUADRO-RTX"),
    ("volta", r"\bV100\b"),
)


def family_of_product(product: str) -> str | None:
    """The GPU generation of a product name such as `NVIDIA-H100-80GB-HBM3`, or None if unknown."""
    normalized = re.sub(r"[\s_]+", "-", product.upper())
    for family, pattern in _FAMILY_PATTERNS:
        if re.search(pattern, normalized):
            return family
    return None


_FAMILY_NAMES = {family.name for family in FAMILIES}
# GPU feature discovery's `nvidia.com/gpu.family` values that differ from ours.
_FAMILY_ALIASES = {"ada-lovelace": "ada", "adalovelace": "ada"}


def normalize_family(label: str) -> str:
    """Our name for a `nvidia.com/gpu.family` label value."""
    lowered = label.strip().lower()
    return _FAMILY_ALIASES.get(lowered, lowered)


def format_support_problem(
    fmt: str, family: str | None, *, kv_cache: str = "none", where: str = "this GPU"
) -> str | None:
    """Why `fmt` (and the KV-cache format) cannot run on `family`, or None if it can or if the
    family is unknown (an unknown GPU is not refused). An unknown format raises ValueError."""
    known = normalize_family(family) if family is not None else ""
    if known not in _FAMILY_NAMES:
        shortfall(fmt, kv_cache, FAMILIES[-1].name)  # an unknown format still raises
        return None
    missing = shortfall(fmt, kv_cache, known)
    if missing is None:
        return None
    needed = f"needs an NVIDIA {missing.minimum.capitalize()} or newer GPU"
    found = f"but {where} is {known.capitalize()}"
    if missing.what == "format":
        return f"{fmt} {needed}, {found}; choose a GPU product of that generation or another format"
    usable = [name for name in KV_CACHES if shortfall(fmt, name, known) is None]
    return f"an {kv_cache} KV cache {needed}, {found}; choose kvCache: {' or '.join(usable)}"
