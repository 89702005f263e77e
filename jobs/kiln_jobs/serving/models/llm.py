"""Kiln's LLM model for Triton: TensorRT-LLM's LLM API behind the serving contract.

Runs under the `kiln` backend (`kiln_model: llm`) for two runtimes, which differ only in where the
LLM-API classes come from (the config parameter `llm_api`): `tensorrt_llm` itself, or Kiln's
PyTorch implementation of the same surface (`kiln_jobs.serving.torch_llm`). A request without
`sampling_param_max_tokens` generates `default_max_tokens` (the resource's
`spec.serving.maxNewTokens`).

`1/model.yaml` holds the `LLM` arguments and a `triton_config` section, as in TensorRT-LLM's
`triton_backend/all_models/llmapi` layout; for `tensorrt_llm` they go through TensorRT-LLM's
own argument merging (`update_llm_args_with_extra_dict`), which refuses unknown keys. Relative
paths in it (`model`, `speculative_config.speculative_model_dir`) are resolved against the
published plan directory, the repository's parent, so one repository serves from the store and
from the Triton pod's mount.

The model is decoupled: `execute` schedules every request on an asyncio loop that runs on its own
thread and returns at once, so requests are in flight together and TensorRT-LLM batches them.
Each request goes to `LLM.generate_async`; a streaming request gets one response per step with
the text added since the previous one, the others one response. The last response of a request
carries the FINAL flag; a failed request gets `text_output` "N/A" and the error, and a request
whose client gave up is aborted.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

from kiln_jobs.contract import SAMPLING_PREFIX

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# sampling_param_<name> -> how to read it
_SAMPLING_TYPES = {
    "max_tokens": int,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "frequency_penalty": float,
    "presence_penalty": float,
    "seed": int,
    "exclude_input_from_output": bool,
}
# How often an in-flight request checks whether its client gave up.
_CANCEL_POLL_SECONDS = 0.1


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tensor(name: str, value: Any, dtype: Any = np.object_) -> Any:
    return pb_utils.Tensor(name, np.array([value], dtype=dtype))


def _resolve(path: str, root: Path) -> str:
    return path if Path(path).is_absolute() else str(root / path)


def llm_arguments(config: dict[str, Any], plan_dir: Path) -> dict[str, Any]:
    """model.yaml without `triton_config`, its relative paths under `plan_dir`."""
    args = {k: v for k, v in config.items() if k != "triton_config"}
    args["model"] = _resolve(str(args["model"]), plan_dir)
    speculative = args.get("speculative_config")
    if isinstance(speculative, dict) and speculative.get("speculative_model_dir"):
        speculative["speculative_model_dir"] = _resolve(
            str(speculative["speculative_model_dir"]), plan_dir
        )
    return args


class TritonPythonModel:
    """Triton's entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        """Start the event loop and, on it, the LLM."""
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError("the Kiln LLM model answers in steps: set decoupled: true")
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.api = importlib.import_module(params.get("llm_api") or "tensorrt_llm")
        self.default_max_tokens = int(params.get("default_max_tokens") or 0)
        model_dir = Path(args["model_repository"]) / args["model_version"]
        # <plan dir>/triton/<model>/1 -> <plan dir>
        plan_dir = Path(args["model_repository"]).resolve().parents[1]
        raw = yaml.safe_load(
            (model_dir / os.environ.get("LLM_CONFIG_PATH", "model.yaml")).read_text()
        )
        llm_args = llm_arguments(raw, plan_dir)
        if self.api.__name__ == "tensorrt_llm":
            from tensorrt_llm.llmapi.llm_utils import update_llm_args_with_extra_dict

            llm_args = update_llm_args_with_extra_dict({}, llm_args)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kiln-llm-loop")
        self.thread.start()

        async def start() -> Any:
            return self.api.LLM(**llm_args)

        self.llm = asyncio.run_coroutine_threadsafe(start(), self.loop).result()

    def _sampling(self, request: Any) -> Any:
        kwargs: dict[str, Any] = {"exclude_input_from_output": True}
        if self.default_max_tokens:
            kwargs["max_tokens"] = self.default_max_tokens
        for name, kind in _SAMPLING_TYPES.items():
            value = _scalar(request, SAMPLING_PREFIX + name)
            if value is not None:
                kwargs[name] = kind(value)
        stop = pb_utils.get_input_tensor_by_name(request, SAMPLING_PREFIX + "stop")
        if stop is not None:
            kwargs["stop"] = [_text(s) for s in stop.as_numpy().reshape(-1)]
        return self.api.SamplingParams(**kwargs)

    def execute(self, requests: list[Any]) -> None:
        """Put every request in flight; responses are sent as they are produced."""
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request), self.loop)

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            prompt = _text(_scalar(request, "text_input"))
            streaming = bool(_scalar(request, "streaming"))
            output = self.llm.generate_async(prompt, self._sampling(request), streaming=streaming)
            watcher = asyncio.ensure_future(self._watch(request, output))
            sent = 0  # characters of the text already streamed
            try:
                async for step in output:
                    text = step.outputs[0].text
                    if streaming and not step.finished and len(text) > sent:
                        sender.send(self._response(step, text[sent:]))
                        sent = len(text)
            finally:
                watcher.cancel()
            text = output.outputs[0].text
            sender.send(self._response(output, text[sent:]), flags=_FINAL)
        except Exception as error:
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[_tensor("text_output", b"N/A")],
                    error=pb_utils.TritonError(str(error)),
                ),
                flags=_FINAL,
            )

    async def _watch(self, request: Any, output: Any) -> None:
        """Abort the generation when the client cancels the request."""
        while not output.finished:
            if request.is_cancelled():
                output.abort()
                return
            await asyncio.sleep(_CANCEL_POLL_SECONDS)

    @staticmethod
    def _response(output: Any, text: str) -> Any:
        completion = output.outputs[0]
        return pb_utils.InferenceResponse(
            output_tensors=[
                _tensor("text_output", text.encode()),
                _tensor("finish_reason", str(completion.finish_reason or "").encode()),
                _tensor("num_input_tokens", len(output.prompt_token_ids), np.int32),
                _tensor("num_output_tokens", len(completion.token_ids), np.int32),
            ]
        )

    def finalize(self) -> None:
        """Stop the LLM's workers, then the loop."""
        self.llm.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
