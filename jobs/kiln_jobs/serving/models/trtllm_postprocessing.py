"""Kiln's `postprocessing` model of the TensorRT-LLM engine ensemble (run by the `kiln` backend).

Decodes TOKENS_BATCH [batch, beams, tokens] up to SEQUENCE_LENGTH [batch, beams] into OUTPUT
[batch, beams]. The engine runs with `exclude_input_in_output`, so the text is the continuation.
Parameters: `tokenizer_dir`, `skip_special_tokens`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Triton's entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the tokenizer named by `tokenizer_dir`."""
        from transformers import AutoTokenizer

        params = json.loads(args["model_config"]).get("parameters", {})
        value = {k: v.get("string_value", "") for k, v in params.items()}
        self.tokenizer = AutoTokenizer.from_pretrained(value["tokenizer_dir"])
        self.skip_special = value.get("skip_special_tokens", "true").lower() == "true"

    def _one(self, request: Any) -> Any:
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        lengths = lengths.reshape(tokens.shape[0], -1)
        texts = [
            [
                str(
                    self.tokenizer.decode(
                        beam[: lengths[row, k]].tolist(), skip_special_tokens=self.skip_special
                    )
                ).encode()
                for k, beam in enumerate(tokens[row])
            ]
            for row in range(tokens.shape[0])
        ]
        output = pb_utils.Tensor("OUTPUT", np.array(texts, dtype=np.object_))
        return pb_utils.InferenceResponse(output_tensors=[output])

    def execute(self, requests: list[Any]) -> list[Any]:
        """Detokenize each request."""
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
        return responses
