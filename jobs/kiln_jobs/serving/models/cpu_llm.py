"""Kiln's CPU runtime: a Triton Python-backend model that generates text on PyTorch.

It serves a Model Optimizer checkpoint with its real quantized numerics
(`kiln_jobs.serving.checkpoint`) and speaks the request/response tensors of Triton's TensorRT-LLM
ensemble (`text_input`, `max_tokens`, `temperature`, `top_k`, `top_p`, `seed`, `stop_words`,
`end_id` -> `text_output`, `num_input_tokens`, `num_output_tokens`), so one client works against
every Kiln runtime. `text_output` is the continuation only, without the prompt.

Parameters (config.pbtxt): `checkpoint_dir` and `tokenizer_dir`, relative to the plan-hash
directory (the repository's parent) unless absolute; `max_tokens` (the default when a request
gives none), `max_input_len`, `max_seq_len`, `dtype` and `num_threads`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# The stub's embedded interpreter ignores PYTHONPATH; honour it so the launcher can hand over the
# venv's packages and kiln_jobs (in the job image they are installed system-wide anyway).
sys.path[1:1] = [
    p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path
]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _params(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _resolve(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def _scalar(request: Any, name: str, row: int) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy()
    return values.reshape(values.shape[0], -1)[row][0]


def _strings(request: Any, name: str, row: int) -> tuple[str, ...]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ()
    values = tensor.as_numpy()
    items = values.reshape(values.shape[0], -1)[row]
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in items)


class TritonPythonModel:
    """Triton's entry points: initialize, execute, finalize."""

    model: Any
    tokenizer: Any

    def initialize(self, args: dict[str, str]) -> None:
        """Load the tokenizer and the quantized model once per instance."""
        import torch
        from transformers import AutoTokenizer

        from kiln_jobs.serving.checkpoint import load_checkpoint

        config = json.loads(args["model_config"])
        params = _params(config)
        # <plan hash>/triton/<model>/ -> <plan hash>/
        root = Path(args["model_repository"]).resolve().parents[1]
        if params.get("num_threads", "0") not in ("", "0"):
            torch.set_num_threads(int(params["num_threads"]))
        started = time.perf_counter()
        checkpoint = _resolve(root, params.get("checkpoint_dir", "checkpoint"))
        tokenizer = _resolve(root, params.get("tokenizer_dir") or str(checkpoint))
        dtype = getattr(torch, params.get("dtype") or "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.model = load_checkpoint(checkpoint, dtype=dtype)
        self.default_max_tokens = int(params.get("max_tokens") or 64)
        self.max_input_len = int(params.get("max_input_len") or 0)
        self.max_seq_len = int(params.get("max_seq_len") or 0)
        pb_utils.Logger.log_info(
            f"kiln: loaded {checkpoint} in {time.perf_counter() - started:.1f}s"
        )

    def _params(self, request: Any, row: int) -> Any:
        from kiln_jobs.serving.generation import SamplingParams

        max_tokens = _scalar(request, "max_tokens", row)
        seed = _scalar(request, "seed", row)
        end_id = _scalar(request, "end_id", row)
        return SamplingParams(
            max_tokens=int(max_tokens) if max_tokens is not None else self.default_max_tokens,
            temperature=float(_scalar(request, "temperature", row) or 0.0),
            top_k=int(_scalar(request, "top_k", row) or 0),
            top_p=float(_scalar(request, "top_p", row) or 1.0),
            seed=None if seed is None else int(seed),
            stop_words=_strings(request, "stop_words", row),
            end_id=None if end_id is None else int(end_id),
        )

    def _check(self, input_tokens: int, max_tokens: int) -> None:
        if self.max_input_len and input_tokens > self.max_input_len:
            raise ValueError(
                f"prompt has {input_tokens} tokens, max_input_len is {self.max_input_len}"
            )
        if self.max_seq_len and input_tokens + max_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt + max_tokens = {input_tokens + max_tokens} tokens, "
                f"max_seq_len is {self.max_seq_len}"
            )

    def _one(self, request: Any) -> Any:
        from kiln_jobs.serving.generation import generate

        if _scalar(request, "stream", 0):
            raise ValueError("streaming needs a decoupled model; this one answers once")
        texts, inputs, outputs = [], [], []
        rows = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().shape[0]
        for row in range(rows):
            prompt = _strings(request, "text_input", row)[0]
            params = self._params(request, row)
            self._check(len(self.tokenizer(prompt)["input_ids"]), params.max_tokens)
            result = generate(self.model, self.tokenizer, prompt, params)
            texts.append([result.text.encode()])
            inputs.append([result.input_tokens])
            outputs.append([result.output_tokens])
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", np.array(texts, dtype=np.object_)),
                pb_utils.Tensor("num_input_tokens", np.array(inputs, dtype=np.int32)),
                pb_utils.Tensor("num_output_tokens", np.array(outputs, dtype=np.int32)),
            ]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer each request; a bad request gets an error, not a dead model."""
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
        return responses

    def finalize(self) -> None:
        """Drop the model."""
        self.model = None
