"""A closed-loop load generator for Kiln's serving endpoints (asyncio + aiohttp).

`concurrency` workers each send one request, wait for its answer, and send the next, until a level's
request count is spent; a level's throughput is what completed over its wall time, its latencies
are per request. Two request shapes come with it, both non-streaming with a fixed prompt and
`max_tokens`: Triton's generate extension (`triton_generate`) and the OpenAI-compatible
completions endpoint (`openai_completion`). Another benchmark reuses it like this:

    from bench.loadgen import run_levels, triton_generate

    target = triton_generate("127.0.0.1:8000", "model", "The GNU GPL is", max_tokens=16)
    for level in run_levels(target, {1: 32, 4: 32, 16: 64}):
        print(level.concurrency, level.requests_per_second, level.p95_seconds)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

__all__ = [
    "LevelResult",
    "RequestResult",
    "Target",
    "openai_completion",
    "percentile",
    "run_level",
    "run_levels",
    "triton_generate",
]

# Sends one request on a session; returns the number of generated tokens.
Send = Callable[[aiohttp.ClientSession], Awaitable[int]]


@dataclass(frozen=True)
class Target:
    """One kind of request against one endpoint."""

    name: str
    send: Send


@dataclass(frozen=True)
class RequestResult:
    """One request: how long it took, how many tokens came back, or why it failed."""

    seconds: float
    output_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level's numbers (latencies over the requests that succeeded)."""

    target: str
    concurrency: int
    requests: int
    failed: int
    wall_seconds: float
    requests_per_second: float
    tokens_per_second: float
    output_tokens: int
    p50_seconds: float | None
    p95_seconds: float | None
    mean_seconds: float | None
    max_seconds: float | None
    first_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def triton_generate(http_url: str, model: str, prompt: str, *, max_tokens: int) -> Target:
    """POST `/v2/models/<model>/generate` (Triton's generate extension, Kiln's contract)."""
    url = f"http://{http_url}/v2/models/{model}/generate"
    body = {"text_input": prompt, "streaming": False, "sampling_param_max_tokens": max_tokens}

    async def send(session: aiohttp.ClientSession) -> int:
        async with session.post(url, json=body) as response:
            reply = await _json_or_raise(response)
        count = reply.get("num_output_tokens")
        return int(count[0] if isinstance(count, list) else count or 0)

    return Target("triton-generate", send)


def openai_completion(base_url: str, model: str, prompt: str, *, max_tokens: int) -> Target:
    """POST `<base_url>/completions` (the OpenAI-compatible endpoint beside Triton)."""
    url = f"{base_url.rstrip('/')}/completions"
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}

    async def send(session: aiohttp.ClientSession) -> int:
        async with session.post(url, json=body) as response:
            reply = await _json_or_raise(response)
        return int((reply.get("usage") or {}).get("completion_tokens") or 0)

    return Target("openai-completions", send)


async def _json_or_raise(response: aiohttp.ClientResponse) -> dict[str, Any]:
    if response.status != 200:
        detail = (await response.text())[:300]
        raise RuntimeError(f"HTTP {response.status}: {detail}")
    reply: dict[str, Any] = await response.json(content_type=None)
    return reply


async def _one(target: Target, session: aiohttp.ClientSession) -> RequestResult:
    began = time.perf_counter()
    try:
        tokens = await target.send(session)
    except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError) as error:
        return RequestResult(time.perf_counter() - began, error=f"{type(error).__name__}: {error}")
    return RequestResult(time.perf_counter() - began, output_tokens=tokens)


async def _worker(
    target: Target, session: aiohttp.ClientSession, remaining: list[int], out: list[RequestResult]
) -> None:
    # `remaining` is a one-element counter shared by the workers of a level (one event loop).
    while remaining[0] > 0:
        remaining[0] -= 1
        out.append(await _one(target, session))


async def run_level(
    target: Target, concurrency: int, requests: int, *, timeout: float = 600.0
) -> LevelResult:
    """Send `requests` requests with `concurrency` in flight at a time."""
    # As many connections as workers, so the client never queues requests itself.
    connector = aiohttp.TCPConnector(limit=concurrency)
    results: list[RequestResult] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:
        remaining = [requests]
        began = time.perf_counter()
        workers = [_worker(target, session, remaining, results) for _ in range(concurrency)]
        await asyncio.gather(*workers)
        wall = time.perf_counter() - began
    return summarize(target.name, concurrency, results, wall)


def summarize(
    name: str, concurrency: int, results: list[RequestResult], wall: float
) -> LevelResult:
    """A level's numbers from its requests and its wall time."""
    ok = sorted(r.seconds for r in results if r.error is None)
    tokens = sum(r.output_tokens for r in results if r.error is None)
    errors = [r.error for r in results if r.error is not None]
    return LevelResult(
        target=name,
        concurrency=concurrency,
        requests=len(results),
        failed=len(errors),
        wall_seconds=round(wall, 3),
        requests_per_second=round(len(ok) / wall, 3),
        tokens_per_second=round(tokens / wall, 2),
        output_tokens=tokens,
        p50_seconds=_rounded(percentile(ok, 50)),
        p95_seconds=_rounded(percentile(ok, 95)),
        mean_seconds=_rounded(sum(ok) / len(ok) if ok else None),
        max_seconds=_rounded(ok[-1] if ok else None),
        first_error=errors[0] if errors else None,
    )


def percentile(ordered: list[float], percent: float) -> float | None:
    """The `percent` percentile of sorted values, interpolated linearly between ranks."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * percent / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def run_levels(
    target: Target, requests_by_concurrency: dict[int, int], *, timeout: float = 600.0
) -> list[LevelResult]:
    """Run each level in turn (in the dict's order), from synchronous code."""

    async def levels() -> list[LevelResult]:
        return [
            await run_level(target, concurrency, requests, timeout=timeout)
            for concurrency, requests in requests_by_concurrency.items()
        ]

    return asyncio.run(levels())
