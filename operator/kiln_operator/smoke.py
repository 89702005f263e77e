"""One real generation request against a Triton endpoint, through tritonclient.

The request shape differs between Kiln's runtimes (the LLM-API model has no batch dimension and
names its length input differently); `kiln_jobs.serving.client` reads the model's metadata and
hides that, so the operator and `kiln run` check a model the same way.
"""

from __future__ import annotations

from urllib.parse import urlparse

from kiln_jobs.serving.client import InferenceFailed, generate
from kiln_operator.reconcile import SmokeRequest, SmokeResult

__all__ = ["smoke_test"]


def smoke_test(request: SmokeRequest, timeout: float = 120.0) -> SmokeResult:
    """Send the prompt; ok when Triton answers with non-empty text."""
    url = urlparse(request.endpoint)
    try:
        reply = generate(
            url.netloc or url.path, request.model_name, request.prompt,
            max_tokens=request.max_tokens, protocol="http", timeout=timeout,
        )  # fmt: skip
    except InferenceFailed as error:
        return SmokeResult(request.plan_hash, False, error.message)
    if not reply.text.strip():
        return SmokeResult(request.plan_hash, False, "Triton answered with empty text")
    sample = " ".join(reply.text.split())[:120]
    return SmokeResult(
        request.plan_hash, True, f"{request.prompt!r} → {sample!r}",
        latency_ms=reply.seconds * 1000,
    )  # fmt: skip
