"""TEST-ONLY stand-in for `tensorrt_llm.llmapi` (see the package docstring)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tensorrt_llm.llmapi.llm_utils import DecodingConfig

from kiln_jobs.serving import torch_llm
from kiln_jobs.serving.torch_llm import CompletionOutput, RequestOutput, SamplingParams

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]

RECORD_ENV = "KILN_STANDIN_RECORD"
# The LLM arguments a TensorRT-LLM 1.0 PyTorch LLM takes that this stand-in knows of; anything
# else is refused, as upstream's argument model does.
_KNOWN = {
    "tokenizer", "backend", "tensor_parallel_size", "pipeline_parallel_size", "max_batch_size",
    "max_input_len", "max_seq_len", "max_num_tokens", "kv_cache_config", "speculative_config",
    "trust_remote_code", "dtype",
}  # fmt: skip
# The PyTorch backend's `supports_backend` refuses these decoding types.
_NOT_ON_PYTORCH = {"Medusa", "Lookahead"}


class LLM(torch_llm.LLM):
    """TensorRT-LLM's `LLM` with the PyTorch backend, on CPU."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _KNOWN)
        if unknown:
            raise ValueError(f"LLM got unknown arguments: {unknown}")
        backend = kwargs.get("backend", "pytorch")
        if backend != "pytorch":
            raise ValueError(f"backend {backend!r}: the stand-in is the PyTorch backend")
        if kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1) != 1:
            raise ValueError("the CPU stand-in runs TP=PP=1 only")
        speculative = kwargs.get("speculative_config")
        if isinstance(speculative, dict):  # not through update_llm_args_with_extra_dict
            speculative = DecodingConfig.from_dict(speculative)
        if speculative is not None:
            if speculative.decoding_type in _NOT_ON_PYTORCH:
                raise ValueError(
                    f"{speculative.decoding_type} is not supported on the PyTorch backend"
                )
            speculative.check_files()
        _record(model, kwargs, speculative)
        super().__init__(
            model,
            max_batch_size=kwargs.get("max_batch_size", 8),
            max_input_len=kwargs.get("max_input_len"),
            max_seq_len=kwargs.get("max_seq_len"),
        )
        self.speculative_config = speculative


def _record(model: str, kwargs: dict[str, Any], speculative: DecodingConfig | None) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    args = {k: v for k, v in kwargs.items() if k != "speculative_config"}
    args["model"] = model
    args["speculative_config"] = asdict(speculative) if speculative else None
    with Path(path).open("a") as record:
        record.write(json.dumps(args, default=str) + "\n")
