"""Smoke inference against a Kiln-served model with `tritonclient`, over HTTP or gRPC.

Kiln's runtimes share a request shape, with one difference this client hides: the CPU runtime and
the TensorRT-LLM ensemble/BLS take `text_input` + `max_tokens` with a batch dimension, the LLM-API
model takes `text_input` + `sampling_param_max_tokens` without one. The client reads the model's
metadata and sends the right tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kiln_jobs.errors import KilnJobError

__all__ = ["GenerationReply", "InferenceFailed", "Protocol", "generate"]

Protocol = Literal["http", "grpc"]


class InferenceFailed(KilnJobError):
    """The server answered a smoke request with an error, or not at all."""

    reason = "InferenceFailed"


@dataclass(frozen=True)
class GenerationReply:
    """A generated continuation and the round trip's wall time."""

    text: str
    seconds: float
    protocol: Protocol
    model: str
    output_tokens: int | None = None


def _module(protocol: Protocol) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    return module


def _input_names(client: Any, model: str, protocol: Protocol) -> tuple[set[str], bool]:
    """The model's input names and whether it has a batch dimension."""
    if protocol == "grpc":
        metadata = client.get_model_metadata(model, as_json=True)
        config = client.get_model_config(model, as_json=True)["config"]
    else:
        metadata = client.get_model_metadata(model)
        config = client.get_model_config(model)
    names = {tensor["name"] for tensor in metadata["inputs"]}
    return names, int(config.get("max_batch_size", 0)) > 0


def _tensor(module: Any, name: str, array: np.ndarray, dtype: str) -> Any:
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _inputs(module: Any, names: set[str], batched: bool, prompt: str, max_tokens: int) -> list:
    shape = (1, 1) if batched else (1,)
    text = np.array([prompt.encode()], dtype=np.object_).reshape(shape)
    count = np.array([max_tokens], dtype=np.int32).reshape(shape)
    tokens_name = "max_tokens" if "max_tokens" in names else "sampling_param_max_tokens"
    if tokens_name not in names:
        raise InferenceFailed(
            f"model takes neither max_tokens nor sampling_param_max_tokens: {names}"
        )
    return [
        _tensor(module, "text_input", text, "BYTES"),
        _tensor(module, tokens_name, count, "INT32"),
    ]


def _decode(values: np.ndarray) -> str:
    item = values.reshape(-1)[0]
    return item.decode(errors="replace") if isinstance(item, bytes) else str(item)


def generate(
    url: str,
    model: str,
    prompt: str,
    *,
    max_tokens: int = 32,
    protocol: Protocol = "http",
    timeout: float = 300.0,
) -> GenerationReply:
    """Send one prompt and return the generated text.

    Args:
        url: `host:port` of the HTTP or gRPC endpoint.
        model: The model to ask (the CPU model, `ensemble`, `tensorrt_llm_bls`, `tensorrt_llm`).
        prompt: The text to continue.
        max_tokens: Tokens to generate at most.
        protocol: `http` or `grpc`.
        timeout: Seconds to wait for the answer.

    Raises:
        InferenceFailed: The server returned an error or could not be reached.
    """
    module = _module(protocol)
    from tritonclient.utils import InferenceServerException

    try:
        if protocol == "http":
            client = module.InferenceServerClient(
                url, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            client = module.InferenceServerClient(url)
        names, batched = _input_names(client, model, protocol)
        inputs = _inputs(module, names, batched, prompt, max_tokens)
        started = time.perf_counter()
        if protocol == "http":
            result = client.infer(model, inputs, timeout=int(timeout))
        else:
            result = client.infer(model, inputs, client_timeout=timeout)
        seconds = time.perf_counter() - started
    except (InferenceServerException, OSError) as error:
        raise InferenceFailed(f"{protocol} inference on {url}/{model} failed: {error}") from error
    counts = result.as_numpy("num_output_tokens")  # None where the model has no such output
    return GenerationReply(
        text=_decode(result.as_numpy("text_output")),
        seconds=seconds,
        protocol=protocol,
        model=model,
        output_tokens=None if counts is None else int(counts.reshape(-1)[0]),
    )
