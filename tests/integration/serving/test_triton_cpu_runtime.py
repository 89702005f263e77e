"""The CPU repository in the real `tritonserver`: generation over HTTP and gRPC equals the
optimized model's own continuation."""

from __future__ import annotations

import pytest

from kiln_jobs.serving.client import InferenceFailed, generate
from kiln_jobs.serving.tritonserver import TritonServer
from tests.integration.serving.conftest import MAX_TOKENS, PROMPT, group_alive

pytestmark = pytest.mark.integration


def test_generation_over_http_and_grpc(tiny_published) -> None:
    with TritonServer(tiny_published.root / "triton") as server:
        group = server.pid
        print(f"ready in {server.ready_seconds:.1f}s")
        http = generate(server.http_url, "model", PROMPT, max_tokens=MAX_TOKENS)
        grpc = generate(server.grpc_url, "model", PROMPT, max_tokens=MAX_TOKENS, protocol="grpc")
    assert http.text == grpc.text == tiny_published.expected
    assert http.output_tokens is not None and 0 < http.output_tokens <= MAX_TOKENS
    assert group is not None and not group_alive(group)


def test_bad_requests_get_errors_not_a_dead_model(tiny_published) -> None:
    with TritonServer(tiny_published.root / "triton") as server:
        with pytest.raises(InferenceFailed, match="max_seq_len"):
            generate(server.http_url, "model", PROMPT, max_tokens=1000)
        with pytest.raises(InferenceFailed):
            generate(server.grpc_url, "no_such_model", PROMPT, protocol="grpc")
        # Still serving after both.
        assert generate(server.http_url, "model", PROMPT, max_tokens=2).text is not None
