"""A client of the serving contract: any Kiln-served model, over HTTP or gRPC, whole or streamed.

Every runtime serves one decoupled model with the contract's tensors
(`kiln_jobs.contract.serving`), so one request shape works everywhere. HTTP goes through
Triton's generate extension (`/v2/models/<m>/generate` and `generate_stream`, JSON in, JSON or
server-sent events out: no client library needed, which keeps the operator's smoke test light);
gRPC through tritonclient's bidirectional stream. The smoke test, `kiln run`, the
OpenAI-compatible endpoint and the benchmarks all send requests through here.
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from kiln_jobs.contract import SAMPLING_PREFIX
from kiln_jobs.errors import KilnJobError

__all__ = ["Chunk", "GenerationReply", "InferenceFailed", "Protocol", "generate", "stream"]

Protocol = Literal["http", "grpc"]


class InferenceFailed(KilnJobError):
    """The server answered a request with an error, or not at all."""

    reason = "InferenceFailed"


@dataclass(frozen=True)
class Chunk:
    """One response of a (possibly streamed) request."""

    text: str
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class GenerationReply:
    """A whole continuation and how long it took."""

    text: str
    seconds: float
    protocol: Protocol
    model: str
    output_tokens: int | None = None
    input_tokens: int | None = None
    finish_reason: str | None = None
    # Seconds until the first response arrived; with streaming, the first token's.
    first_seconds: float | None = None
    chunks: list[str] = field(default_factory=list)


def _request(prompt: str, max_tokens: int | None, streaming: bool, **sampling: Any) -> dict:
    body: dict[str, Any] = {"text_input": prompt, "streaming": streaming}
    if max_tokens is not None:
        body[SAMPLING_PREFIX + "max_tokens"] = max_tokens
    for name, value in sampling.items():
        if value is not None:
            body[SAMPLING_PREFIX + name] = value
    return body


def _chunk(values: dict[str, Any]) -> Chunk:
    def first(name: str) -> Any:
        value = values.get(name)
        return value[0] if isinstance(value, list) else value

    def count(name: str) -> int | None:
        value = first(name)
        return None if value is None else int(value)

    reason = first("finish_reason")
    return Chunk(
        text=str(first("text_output") or ""),
        finish_reason=str(reason) if reason else None,
        input_tokens=count("num_input_tokens"),
        output_tokens=count("num_output_tokens"),
    )


def _http(url: str, model: str, body: dict, timeout: float) -> Iterator[Chunk]:
    """POST to generate or generate_stream; yields each response."""
    endpoint = "generate_stream" if body["streaming"] else "generate"
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if not body["streaming"]:
                yield _chunk(json.loads(response.read()))
                return
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[len("data:") :])
                if "error" in event:
                    raise InferenceFailed(f"http inference on {url}/{model}: {event['error']}")
                yield _chunk(event)
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        raise InferenceFailed(f"http inference on {url}/{model} failed: {detail}") from error
    except OSError as error:
        raise InferenceFailed(f"http inference on {url}/{model} failed: {error}") from error


def _plain(array: Any) -> list[Any]:
    """A response tensor as JSON-like values (strings decoded), as the HTTP API gives them."""
    return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.tolist()]


def _grpc(url: str, model: str, body: dict, timeout: float) -> Iterator[Chunk]:
    """One request over tritonclient's bidirectional gRPC stream; yields each response."""
    import numpy as np
    import tritonclient.grpc as grpc

    from kiln_jobs.contract import REQUEST_TENSORS

    types = {t.name: t.dtype for t in REQUEST_TENSORS}
    numpy_types: dict[str, Any] = {"STRING": np.object_, "BOOL": np.bool_, "INT32": np.int32}
    numpy_types |= {"UINT64": np.uint64, "FP32": np.float32}
    inputs = []
    for name, value in body.items():
        dtype = types[name]
        raw = value.encode() if isinstance(value, str) else value
        array = np.array([raw], dtype=numpy_types[dtype])
        tensor = grpc.InferInput(name, list(array.shape), "BYTES" if dtype == "STRING" else dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpc.InferenceServerClient(url)
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while True:
            try:
                result, error = responses.get(timeout=timeout)
            except queue.Empty:
                raise InferenceFailed(f"grpc inference on {url}/{model}: no answer") from None
            if error is not None:
                raise InferenceFailed(f"grpc inference on {url}/{model} failed: {error}")
            response = result.get_response()
            if response.outputs:
                yield _chunk({o.name: _plain(result.as_numpy(o.name)) for o in response.outputs})
            if response.parameters["triton_final_response"].bool_param:
                return
    except OSError as error:
        raise InferenceFailed(f"grpc inference on {url}/{model} failed: {error}") from error
    finally:
        client.stop_stream()
        client.close()


def stream(
    url: str,
    model: str,
    prompt: str,
    *,
    max_tokens: int | None = None,
    protocol: Protocol = "http",
    streaming: bool = True,
    timeout: float = 300.0,
    **sampling: Any,
) -> Iterator[Chunk]:
    """The responses to one prompt as they arrive.

    Args:
        url: `host:port` of Triton's HTTP or gRPC endpoint.
        model: The served model (`spec.serving.modelName`).
        prompt: The text to continue.
        max_tokens: Tokens to generate at most; the model's default when None.
        protocol: `http` or `grpc`.
        streaming: Ask for one response per step (the new text each), else one response.
        timeout: Seconds to wait for each response.
        sampling: Further sampling parameters (`temperature`, `top_k`, `top_p`, `seed`, `stop`,
            `exclude_input_from_output`).

    Raises:
        InferenceFailed: The server returned an error or could not be reached.
    """
    body = _request(prompt, max_tokens, streaming, **sampling)
    send = _http if protocol == "http" else _grpc
    yield from send(url, model, body, timeout)


def generate(
    url: str,
    model: str,
    prompt: str,
    *,
    max_tokens: int | None = None,
    protocol: Protocol = "http",
    streaming: bool = False,
    timeout: float = 300.0,
    **sampling: Any,
) -> GenerationReply:
    """Send one prompt and return the whole continuation (streamed chunks joined).

    Raises:
        InferenceFailed: The server returned an error or could not be reached.
    """
    started = time.perf_counter()
    first: float | None = None
    chunks: list[Chunk] = []
    for chunk in stream(
        url, model, prompt, max_tokens=max_tokens, protocol=protocol, streaming=streaming,
        timeout=timeout, **sampling,
    ):  # fmt: skip
        if first is None:
            first = time.perf_counter() - started
        chunks.append(chunk)
    last = chunks[-1] if chunks else Chunk("")
    return GenerationReply(
        text="".join(c.text for c in chunks),
        seconds=time.perf_counter() - started,
        protocol=protocol,
        model=model,
        output_tokens=last.output_tokens,
        input_tokens=last.input_tokens,
        finish_reason=last.finish_reason,
        first_seconds=first,
        chunks=[c.text for c in chunks],
    )
