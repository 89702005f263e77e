"""Kiln's `tensorrt_llm` model for TensorRT-LLM's LLM API (PyTorch backend), Triton Python backend.

It follows the contract of the LLM-API model in TensorRT-LLM's Triton backend
(`triton_backend/all_models/llmapi/tensorrt_llm`): `1/model.yaml` holds the `tensorrt_llm.LLM`
arguments plus a `triton_config` section (`max_batch_size`, `decoupled`), and requests carry
`text_input` with `sampling_param_*` tensors and get `text_output` back. Being that contract, the
upstream `model.py` (with its `helpers.py`, streaming and cancellation) can replace this file
unchanged; this one is the minimal non-decoupled form: each `execute` call hands all its
prompts to `LLM.generate`, whose in-flight batching runs them together.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# The stub's embedded interpreter ignores PYTHONPATH; honour it (see cpu_llm.py).
sys.path[1:1] = [
    p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path
]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

# request tensor -> SamplingParams argument
_SAMPLING = {
    "sampling_param_max_tokens": ("max_tokens", int),
    "sampling_param_temperature": ("temperature", float),
    "sampling_param_top_k": ("top_k", int),
    "sampling_param_top_p": ("top_p", float),
    "sampling_param_frequency_penalty": ("frequency_penalty", float),
    "sampling_param_presence_penalty": ("presence_penalty", float),
    "sampling_param_seed": ("seed", int),
}


def _engine_args(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LLM arguments, triton_config) from `model.yaml`."""
    import yaml

    path = model_dir / os.environ.get("LLM_CONFIG_PATH", "model.yaml")
    config = yaml.safe_load(path.read_text())
    triton = config.pop("triton_config", {}) or {}
    return config, triton


def _first(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    """Triton's entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        """Start the LLM from model.yaml (TP/PP workers are spawned by TensorRT-LLM)."""
        from tensorrt_llm import LLM, SamplingParams

        self.sampling_params = SamplingParams
        model_dir = Path(args["model_repository"]) / args["model_version"]
        engine_args, triton = _engine_args(model_dir)
        if triton.get("decoupled"):
            raise ValueError("this model.py answers once per request: set decoupled: false")
        self.llm = LLM(**engine_args)

    def _params(self, request: Any) -> Any:
        kwargs: dict[str, Any] = {}
        for name, (argument, kind) in _SAMPLING.items():
            value = _first(request, name)
            if value is not None:
                kwargs[argument] = kind(value)
        stop = pb_utils.get_input_tensor_by_name(request, "sampling_param_stop")
        if stop is not None:
            kwargs["stop"] = [_text(s) for s in stop.as_numpy().reshape(-1)]
        return self.sampling_params(**kwargs)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Generate for every request of the call in one `LLM.generate`."""
        responses: list[Any] = [None] * len(requests)
        prompts, params, slots = [], [], []
        for index, request in enumerate(requests):
            try:
                if _first(request, "streaming"):
                    raise ValueError("streaming needs decoupled: true and upstream's model.py")
                prompts.append(_text(_first(request, "text_input")))
                params.append(self._params(request))
                slots.append(index)
            except Exception as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error))
                )
        if prompts:
            for index, result in zip(slots, self.llm.generate(prompts, params), strict=True):
                completion = result.outputs[0]
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(
                            "text_output", np.array([completion.text.encode()], dtype=np.object_)
                        ),
                        pb_utils.Tensor(
                            "finish_reason",
                            np.array([str(completion.finish_reason).encode()], dtype=np.object_),
                        ),
                    ]
                )
        return responses

    def finalize(self) -> None:
        """Stop the LLM's workers."""
        self.llm.shutdown()
