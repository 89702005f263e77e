"""The speed gate: the optimized model served against the original, on the same machine.

`evaluation.performance` measures the served optimized model (`kiln_jobs.serving.loadtest`).
With `baseline` on, the original model is served the same way first: loaded from the Plan's
model reference, saved as a dense checkpoint with a Triton repository written by the same code
as the published one (same runtime choice, same model name), measured with the same load, and
stopped before the optimized model starts, so the two never share the machine. Per concurrency
level the speedup is the optimized output tokens per second over the original's; with
`min_speedup` every level must reach it, else `SpeedGateFailed`.

The dense checkpoint is built once per model reference under the work directory.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln_jobs.contract import CHECKPOINT_DIR, TRITON_DIR
from kiln_jobs.errors import SpeedGateFailed
from kiln_jobs.plan import PerformancePlan, Plan
from kiln_jobs.serving.loadtest import LevelStats
from kiln_jobs.serving.repository import write_repository
from kiln_jobs.sources.models import load_model

__all__ = ["SpeedResult", "baseline_repository", "compare", "failure"]


@dataclass(frozen=True)
class SpeedResult:
    """One concurrency level, optimized against the original."""

    concurrency: int
    baseline_tokens_per_second: float
    tokens_per_second: float
    passed: bool

    @property
    def speedup(self) -> float:
        """Optimized output tokens per second over the original's."""
        return self.tokens_per_second / self.baseline_tokens_per_second

    def summary(self) -> str:
        """`c=4: 61.5 tok/s against 30.2 for the original, 2.04x`."""
        verdict = "" if self.passed else " (below minSpeedup)"
        return (
            f"c={self.concurrency}: {self.tokens_per_second:.1f} tok/s against "
            f"{self.baseline_tokens_per_second:.1f} for the original, {self.speedup:.2f}x{verdict}"
        )


def compare(
    baseline: list[LevelStats], optimized: list[LevelStats], plan: PerformancePlan
) -> list[SpeedResult]:
    """Pair the two measurements level by level and hold each to `min_speedup`."""
    results = []
    for before, after in zip(baseline, optimized, strict=True):
        if before.concurrency != after.concurrency:
            raise ValueError("baseline and optimized were measured at different levels")
        speedup = after.output_tokens_per_second / before.output_tokens_per_second
        results.append(
            SpeedResult(
                concurrency=after.concurrency,
                baseline_tokens_per_second=before.output_tokens_per_second,
                tokens_per_second=after.output_tokens_per_second,
                passed=plan.min_speedup is None or speedup >= plan.min_speedup,
            )
        )
    return results


def failure(results: list[SpeedResult], plan: PerformancePlan) -> SpeedGateFailed:
    """The error for the levels below `min_speedup` (call only when one is)."""
    slow = "; ".join(r.summary() for r in results if not r.passed)
    return SpeedGateFailed(
        f"the served model is not {plan.min_speedup}x faster than the original "
        f"(evaluation.performance.minSpeedup): {slow}; a format the runtime accelerates on "
        "this GPU (FP8 on Hopper, NVFP4 on Blackwell) or a larger concurrency may reach it"
    )


def baseline_repository(plan: Plan, work_dir: Path) -> Path:
    """A directory holding the original model as a dense checkpoint and its Triton repository
    (`checkpoint/`, `triton/`), built on first use."""
    key = hashlib.sha256(plan.model.model_dump_json().encode()).hexdigest()[:16]
    root = work_dir / "baseline" / key
    if (root / TRITON_DIR).is_dir():
        return root
    staging = root.with_name(f"{key}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    loaded = load_model(plan.model, device=torch.device("cpu"), cache_dir=work_dir / "cache")
    loaded.model.save_pretrained(staging / CHECKPOINT_DIR)
    loaded.tokenizer.save_pretrained(staging / CHECKPOINT_DIR)
    del loaded
    # The original serves alone: no draft, whatever the Plan's techniques trained.
    write_repository(plan.model_copy(update={"techniques": ()}), staging)
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root
