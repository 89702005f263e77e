"""One real generation request against a Triton endpoint, through tritonclient.

Every Triton model repository Kiln writes (TensorRT-LLM ensemble, LLM-API backend, Python
backend) takes `text_input` and `max_tokens` and answers `text_output`, so one request fits all.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import numpy as np

from kiln_operator.reconcile import SmokeRequest, SmokeResult

__all__ = ["smoke_test"]


def _client(endpoint: str, timeout: float):  # type: ignore[no-untyped-def]
    import tritonclient.http as httpclient

    url = urlparse(endpoint)
    return httpclient.InferenceServerClient(
        url=url.netloc or url.path,
        ssl=url.scheme == "https",
        connection_timeout=timeout,
        network_timeout=timeout,
    )


def smoke_test(request: SmokeRequest, timeout: float = 120.0) -> SmokeResult:
    """Send the prompt; ok when Triton answers with non-empty text."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    started = time.monotonic()
    try:
        client = _client(request.endpoint, timeout)
        if not client.is_model_ready(request.model_name):
            return SmokeResult(request.plan_hash, False, f"model {request.model_name} not ready")
        text = httpclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[request.prompt.encode()]], dtype=object))
        tokens = httpclient.InferInput("max_tokens", [1, 1], "INT32")
        tokens.set_data_from_numpy(np.array([[request.max_tokens]], dtype=np.int32))
        result = client.infer(
            request.model_name,
            [text, tokens],
            outputs=[httpclient.InferRequestedOutput("text_output")],
            timeout=int(timeout * 1_000_000),
        )
        output = result.as_numpy("text_output")
    except (InferenceServerException, OSError, ValueError) as error:
        return SmokeResult(request.plan_hash, False, f"{request.endpoint}: {error}")
    latency_ms = (time.monotonic() - started) * 1000
    answer = output.reshape(-1)[0] if output is not None and output.size else b""
    answer = answer.decode(errors="replace") if isinstance(answer, bytes) else str(answer)
    if not answer.strip():
        return SmokeResult(request.plan_hash, False, "Triton answered with empty text")
    sample = " ".join(answer.split())[:120]
    return SmokeResult(
        request.plan_hash, True, f"{request.prompt!r} → {sample!r}", latency_ms=latency_ms
    )
