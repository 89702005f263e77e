"""Serving performance of a running model: latency and throughput over a concurrency ladder.

The method, stated because numbers without it mean little: a closed loop per level. `concurrency`
workers (threads) each stream one request over the serving contract (Kiln's client, Triton's
HTTP generate endpoint), wait for the last token, and send the next, until the level's requests
are spent. Every request has the same prompt and asks for `max_tokens` new tokens, greedy. Per
request: time to first token (TTFT, when the first streamed response arrives) and inter-token
latency (ITL, the rest of the request's time over its remaining tokens), and its end-to-end
latency. Per level: the percentiles of those, and output tokens per second over the level's wall
time (all workers' tokens together, so it shows whether the server batches concurrent requests).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiln_jobs.serving.client import generate

if TYPE_CHECKING:
    from kiln_jobs.plan import PerformancePlan

__all__ = [
    "LevelStats",
    "RequestTiming",
    "level_stats",
    "measure",
    "measure_performance",
    "percentile",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestTiming:
    """One streamed request."""

    first_token_seconds: float
    seconds: float
    output_tokens: int

    @property
    def inter_token_seconds(self) -> float | None:
        """Mean time per token after the first; None for a one-token answer."""
        if self.output_tokens < 2:
            return None
        return (self.seconds - self.first_token_seconds) / (self.output_tokens - 1)


@dataclass(frozen=True)
class LevelStats:
    """One concurrency level."""

    concurrency: int
    requests: int
    seconds: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float | None
    output_tokens_per_second: float
    requests_per_second: float
    # End-to-end request time; None where a level is built from figures that lack it.
    latency_p50: float | None = None
    latency_p95: float | None = None

    def summary(self) -> str:
        """`c=4: TTFT p50 0.210 s (p95 0.380 s), ITL p50 48.2 ms, 61.5 tok/s, 2.0 req/s`."""
        itl = f"{self.itl_p50 * 1000:.1f} ms" if self.itl_p50 is not None else "n/a"
        return (
            f"c={self.concurrency}: TTFT p50 {self.ttft_p50:.3f} s (p95 {self.ttft_p95:.3f} s), "
            f"ITL p50 {itl}, {self.output_tokens_per_second:.1f} tok/s, "
            f"{self.requests_per_second:.1f} req/s"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between the nearest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def level_stats(concurrency: int, timings: Sequence[RequestTiming], seconds: float) -> LevelStats:
    """A level's numbers from its requests and its wall time."""
    ttft = [t.first_token_seconds for t in timings]
    latency = [t.seconds for t in timings]
    itl = [x for t in timings if (x := t.inter_token_seconds) is not None]
    return LevelStats(
        concurrency=concurrency,
        requests=len(timings),
        seconds=seconds,
        ttft_p50=percentile(ttft, 50),
        ttft_p95=percentile(ttft, 95),
        itl_p50=percentile(itl, 50) if itl else None,
        output_tokens_per_second=sum(t.output_tokens for t in timings) / seconds,
        requests_per_second=len(timings) / seconds,
        latency_p50=percentile(latency, 50),
        latency_p95=percentile(latency, 95),
    )


def measure(
    url: str,
    model: str,
    prompt: str,
    *,
    levels: Sequence[int],
    requests: int,
    max_tokens: int,
    timeout: float = 300.0,
) -> list[LevelStats]:
    """Run each concurrency level in turn against Triton's HTTP endpoint at `url`.

    Each level sends `max(requests, concurrency)` requests, so every worker sends at least one.

    Raises:
        InferenceFailed: A request failed.
    """
    stats = []
    for concurrency in levels:
        count = max(requests, concurrency)
        log.info(
            "load test: concurrency %d, %d requests of %d tokens", concurrency, count, max_tokens
        )
        stats.append(_level(url, model, prompt, concurrency, count, max_tokens, timeout))
        log.info("load test: %s", stats[-1].summary())
    return stats


def measure_performance(url: str, model: str, performance: PerformancePlan) -> list[LevelStats]:
    """`measure` as the Plan's `evaluation.performance` asks: one definition of the measurement
    for `kiln run` and the served-model evaluation Job, so their numbers compare."""
    return measure(
        url,
        model,
        performance.prompt,
        levels=performance.concurrency,
        requests=performance.requests,
        max_tokens=performance.max_tokens,
    )


def _level(
    url: str, model: str, prompt: str, concurrency: int, count: int, max_tokens: int, timeout: float
) -> LevelStats:
    remaining = [count]
    lock = threading.Lock()

    def worker() -> list[RequestTiming]:
        done: list[RequestTiming] = []
        while True:
            with lock:
                if remaining[0] == 0:
                    return done
                remaining[0] -= 1
            reply = generate(
                url, model, prompt, max_tokens=max_tokens, streaming=True, timeout=timeout
            )
            done.append(
                RequestTiming(
                    first_token_seconds=reply.first_seconds or reply.seconds,
                    seconds=reply.seconds,
                    output_tokens=reply.output_tokens or 0,
                )
            )

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        timings = [timing for future in futures for timing in future.result()]
    return level_stats(concurrency, timings, time.perf_counter() - began)
