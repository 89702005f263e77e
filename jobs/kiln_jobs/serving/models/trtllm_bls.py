"""Kiln's `tensorrt_llm_bls` model: the engine ensemble as one Python (BLS) model.

It takes the ensemble's request tensors, calls `preprocessing`, `tensorrt_llm` and
`postprocessing` with Triton's business-logic-scripting API, and answers `text_output`,
`cum_log_probs` and `output_log_probs`. Unlike the ensemble it can add logic between the steps
(here: request validation); it answers once per request (not decoupled). Parameters:
`tensorrt_llm_model_name`, `preprocessing_model_name`, `postprocessing_model_name`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# The stub's embedded interpreter ignores PYTHONPATH; honour it (see cpu_llm.py).
sys.path[1:1] = [
    p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path
]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

# request tensor -> preprocessing input
_PRE_INPUTS = {
    "text_input": "QUERY",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT",
    "end_id": "END_ID",
    "pad_id": "PAD_ID",
}
# preprocessing output -> tensorrt_llm input
_PRE_TO_ENGINE = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
    "STOP_WORDS_IDS": "stop_words_list",
    "BAD_WORDS_IDS": "bad_words_list",
}
# request tensor -> tensorrt_llm input, passed through as given
_SAMPLING = {
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "temperature": "temperature",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "return_log_probs": "return_log_probs",
}
_ENGINE_OUTPUTS = ["output_ids", "sequence_length", "cum_log_probs", "output_log_probs"]


def _call(model: str, inputs: list[Any], outputs: list[str]) -> Any:
    response = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=outputs, inputs=inputs
    ).exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return response


def _output(response: Any, name: str) -> np.ndarray:
    return pb_utils.get_output_tensor_by_name(response, name).as_numpy()


class TritonPythonModel:
    """Triton's entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read which models to call."""
        params = json.loads(args["model_config"]).get("parameters", {})
        value = {k: v.get("string_value", "") for k, v in params.items()}
        self.engine = value.get("tensorrt_llm_model_name") or "tensorrt_llm"
        self.pre = value.get("preprocessing_model_name") or "preprocessing"
        self.post = value.get("postprocessing_model_name") or "postprocessing"

    def _one(self, request: Any) -> Any:
        stream = pb_utils.get_input_tensor_by_name(request, "stream")
        if stream is not None and bool(stream.as_numpy().any()):
            raise ValueError("streaming needs the decoupled BLS model; this one answers once")
        pre_inputs = []
        for name, target in _PRE_INPUTS.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                pre_inputs.append(pb_utils.Tensor(target, tensor.as_numpy()))
        pre = _call(self.pre, pre_inputs, list(_PRE_TO_ENGINE))
        engine_inputs = [pb_utils.Tensor(t, _output(pre, s)) for s, t in _PRE_TO_ENGINE.items()]
        for name, target in _SAMPLING.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                engine_inputs.append(pb_utils.Tensor(target, tensor.as_numpy()))
        engine = _call(self.engine, engine_inputs, _ENGINE_OUTPUTS)
        post_inputs = [
            pb_utils.Tensor("TOKENS_BATCH", _output(engine, "output_ids")),
            pb_utils.Tensor("SEQUENCE_LENGTH", _output(engine, "sequence_length")),
        ]
        post = _call(self.post, post_inputs, ["OUTPUT"])
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", _output(post, "OUTPUT")),
                pb_utils.Tensor("cum_log_probs", _output(engine, "cum_log_probs")),
                pb_utils.Tensor("output_log_probs", _output(engine, "output_log_probs")),
            ]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run the pipeline for each request."""
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
        return responses
