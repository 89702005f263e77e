"""A Python stand-in for the `tensorrt_llm` (C++ `tensorrtllm` backend) model: same tensors,
generation on CPU with the checkpoint at `tokenizer_dir`. Test-only."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _column(request: Any, name: str, default: Any = None) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        from kiln_jobs.serving.checkpoint import load_checkpoint

        params = json.loads(args["model_config"])["parameters"]
        self.model = load_checkpoint(params["tokenizer_dir"]["string_value"])

    def _one(self, request: Any) -> Any:
        from kiln_jobs.serving.generation import SamplingParams, generate_ids

        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        lengths = _column(request, "input_lengths")
        output_len = _column(request, "request_output_len")
        end_ids = _column(request, "end_id")
        batch = ids.shape[0]
        outputs = []
        for row in range(batch):
            params = SamplingParams(
                max_tokens=int(output_len[row]),
                end_id=None if end_ids is None else int(end_ids[row]),
            )
            tokens, _ = generate_ids(self.model, ids[row, : lengths[row]].tolist(), params)
            outputs.append(tokens)
        width = max(len(t) for t in outputs)
        output_ids = np.zeros((batch, 1, width), dtype=np.int32)
        for row, tokens in enumerate(outputs):
            output_ids[row, 0, : len(tokens)] = tokens
        lengths_out = np.array([[len(t)] for t in outputs], dtype=np.int32)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("output_ids", output_ids),
                pb_utils.Tensor("sequence_length", lengths_out),
                pb_utils.Tensor("cum_log_probs", np.zeros((batch, 1), dtype=np.float32)),
                pb_utils.Tensor("output_log_probs", np.zeros((batch, 1, width), dtype=np.float32)),
            ]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]
