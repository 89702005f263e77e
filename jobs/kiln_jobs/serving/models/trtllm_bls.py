"""Kiln's front model of the TensorRT-LLM engine repository: the serving contract over the
engines, as one Python (business-logic scripting) model named `spec.serving.modelName`.

It takes the contract's request tensors, calls `preprocessing`, `tensorrt_llm` and
`postprocessing` in turn with Triton's BLS API, and answers `text_output`, `finish_reason` and
the token counts, once per request (decoupled, like every Kiln model: a streaming request gets
its whole text in one response). Parameters: `default_max_tokens`, `tensorrt_llm_model_name`,
`preprocessing_model_name`, `postprocessing_model_name`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from kiln_jobs.contract import SAMPLING_PREFIX

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# contract sampling parameter -> (tensorrt_llm input, dtype)
_SAMPLING = {
    "top_k": ("runtime_top_k", np.int32),
    "top_p": ("runtime_top_p", np.float32),
    "temperature": ("temperature", np.float32),
    "seed": ("seed", np.uint64),
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


def _call(model: str, inputs: list[Any], outputs: list[str]) -> Any:
    response = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=outputs, inputs=inputs
    ).exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return response


def _output(response: Any, name: str) -> np.ndarray:
    return pb_utils.get_output_tensor_by_name(response, name).as_numpy()


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


def _row(value: Any, dtype: Any) -> np.ndarray:
    """One batch row [1, 1], as the batched inner models take their inputs."""
    return np.array([[value]], dtype=dtype)


class TritonPythonModel:
    """Triton's entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read which models to call."""
        params = json.loads(args["model_config"]).get("parameters", {})
        value = {k: v.get("string_value", "") for k, v in params.items()}
        self.default_max_tokens = int(value.get("default_max_tokens") or 64)
        self.engine = value.get("tensorrt_llm_model_name") or "tensorrt_llm"
        self.pre = value.get("preprocessing_model_name") or "preprocessing"
        self.post = value.get("postprocessing_model_name") or "postprocessing"

    def _pipeline(self, request: Any) -> Any:
        text = _scalar(request, "text_input")
        max_tokens = _scalar(request, SAMPLING_PREFIX + "max_tokens")
        pre_inputs = [
            pb_utils.Tensor("QUERY", _row(text, np.object_)),
            pb_utils.Tensor(
                "REQUEST_OUTPUT_LEN",
                _row(self.default_max_tokens if max_tokens is None else max_tokens, np.int32),
            ),
        ]
        stop = pb_utils.get_input_tensor_by_name(request, SAMPLING_PREFIX + "stop")
        if stop is not None:
            words = stop.as_numpy().reshape(1, -1).astype(np.object_)
            pre_inputs.append(pb_utils.Tensor("STOP_WORDS_DICT", words))
        pre = _call(self.pre, pre_inputs, list(_PRE_TO_ENGINE))
        engine_inputs = [pb_utils.Tensor(t, _output(pre, s)) for s, t in _PRE_TO_ENGINE.items()]
        for name, (target, dtype) in _SAMPLING.items():
            value = _scalar(request, SAMPLING_PREFIX + name)
            if value is not None:
                engine_inputs.append(pb_utils.Tensor(target, _row(value, dtype)))
        engine = _call(self.engine, engine_inputs, ["output_ids", "sequence_length"])
        lengths = _output(engine, "sequence_length")
        post = _call(
            self.post,
            [
                pb_utils.Tensor("TOKENS_BATCH", _output(engine, "output_ids")),
                pb_utils.Tensor("SEQUENCE_LENGTH", lengths),
            ],
            ["OUTPUT"],
        )
        generated = int(lengths.reshape(-1)[0])
        requested = int(_output(pre, "REQUEST_OUTPUT_LEN").reshape(-1)[0])
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", _output(post, "OUTPUT").reshape(-1)[:1]),
                pb_utils.Tensor(
                    "finish_reason",
                    np.array([b"length" if generated >= requested else b"stop"], np.object_),
                ),
                pb_utils.Tensor(
                    "num_input_tokens", _output(pre, "REQUEST_INPUT_LEN").reshape(-1)[:1]
                ),
                pb_utils.Tensor("num_output_tokens", np.array([generated], dtype=np.int32)),
            ]
        )

    def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            response = self._pipeline(request)
        except Exception as error:
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
        sender.send(response, flags=_FINAL)

    def execute(self, requests: list[Any]) -> None:
        """Run the pipeline for each request on its own thread (the BLS calls block)."""
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()
