"""Evaluate what is served: the Plan's generative tasks, scored through the served endpoint.

The accuracy gate scores the model in the runner's process. What users get is that model
exported, loaded by a runtime and served with its KV cache: scales shared across fused layers,
other kernels and a quantized cache can change answers. Once the model is served, every task of
`evaluation.tasks` that generates its answer (lm-eval `output_type: generate_until`) is scored
again with lm-eval's `local-completions` model against the OpenAI-compatible endpoint in front of
Triton, on the same samples, and compared with the published model's in-process score:

    passed  ⇔  in-process - served ≤ served.max_drop   (in the metric's direction)

Tasks scored by log-likelihood (multiple choice) are not scored here: the serving contract, like
Triton's TensorRT-LLM model, returns no prompt log-probabilities. They are listed as skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kiln_jobs import gate
from kiln_jobs.errors import ServingRegression, UserError
from kiln_jobs.manifest import Manifest, TaskResult
from kiln_jobs.plan import ServedEvaluationPlan
from kiln_jobs.tasks import (
    PreparedTask,
    TaskScore,
    evaluate,
    prepare,
)

__all__ = [
    "GENERATIVE",
    "NOT_SCORED_WHEN_SERVED",
    "ServedTaskResult",
    "evaluate_served",
    "judge_served",
    "regression",
]

log = logging.getLogger(__name__)

GENERATIVE = "generate_until"
NOT_SCORED_WHEN_SERVED = "scored by log-likelihood, which the serving contract does not return"
# One request at a time: the served model answers in order and the comparison is exact.
_CONCURRENCY = 1
_TIMEOUT_S = 300


@dataclass(frozen=True)
class ServedTaskResult:
    """One task on the served endpoint against the published model's in-process score."""

    name: str
    metric: str
    in_process: float
    served: float | None
    samples: int
    passed: bool
    # Why it was not scored (NOT_SCORED_WHEN_SERVED), or None.
    skipped: str | None = None

    def summary(self) -> str:
        """`license_cloze_words exact_match 0.375 in process, 0.375 served (40 samples) passed`."""
        if self.served is None:
            return f"{self.name} not scored when served: {self.skipped}"
        verdict = "passed" if self.passed else "failed (ServingRegression)"
        return (
            f"{self.name} {self.metric} {self.in_process:.3f} in process, {self.served:.3f} "
            f"served ({self.samples} samples) {verdict}"
        )


def evaluate_served(
    manifest: Manifest, base_url: str, tokenizer_dir: Path, cache_dir: Path
) -> list[ServedTaskResult]:
    """Score the manifest's generative tasks on the endpoint at `base_url` (`.../v1`).

    Raises:
        UserError: the Plan asks for a served evaluation but none of its tasks generates.
    """
    plan = manifest.plan.evaluation
    if plan.served is None:
        return []
    in_process = {task.name: task for task in manifest.metrics.tasks or []}
    results = []
    for task in prepare(plan.tasks, cache_dir):
        measured = in_process[task.plan.name]
        if task.output_type != GENERATIVE:
            log.info("served task %s: skipped, %s", task.plan.name, NOT_SCORED_WHEN_SERVED)
            results.append(_skipped(measured))
            continue
        log.info("served task %s: scoring up to %d samples", task.plan.name, task.plan.limit)
        served = _score(task, base_url, manifest.plan.serving.model_name, tokenizer_dir)
        results.append(judge_served(measured, served, plan.served))
    if all(result.served is None for result in results):
        raise UserError(
            "evaluation.served: no task generates its answer (output_type generate_until); "
            "add one, or drop evaluation.served"
        )
    return results


def judge_served(
    in_process: TaskResult, served: TaskScore, plan: ServedEvaluationPlan
) -> ServedTaskResult:
    """Compare the served score with the in-process one, in the metric's direction."""
    gain = gate.improvement(in_process.optimized, served.score, served.higher_is_better)
    return ServedTaskResult(
        name=in_process.name,
        metric=in_process.metric,
        in_process=in_process.optimized,
        served=served.score,
        samples=served.samples,
        passed=not gate.exceeds(-gain, plan.max_drop),
    )


def regression(results: list[ServedTaskResult], plan: ServedEvaluationPlan) -> ServingRegression:
    """The error for the tasks that fell short (call only when one did)."""
    failed = "; ".join(r.summary() for r in results if not r.passed)
    return ServingRegression(
        f"the served model scores below the published one by more than {plan.max_drop} "
        f"(evaluation.served.maxDrop): {failed}; check the runtime's precision settings "
        "(KV cache, engine dtype) or rerun the evaluation with more samples"
    )


def _skipped(measured: TaskResult) -> ServedTaskResult:
    return ServedTaskResult(
        name=measured.name,
        metric=measured.metric,
        in_process=measured.optimized,
        served=None,
        samples=0,
        passed=True,
        skipped=NOT_SCORED_WHEN_SERVED,
    )


def _score(task: PreparedTask, base_url: str, model: str, tokenizer_dir: Path) -> TaskScore:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    endpoint = LocalCompletionsAPI(
        base_url=f"{base_url.rstrip('/')}/completions",
        model=model,
        tokenizer_backend="huggingface",
        tokenizer=str(tokenizer_dir),
        tokenized_requests=False,
        num_concurrent=_CONCURRENCY,
        max_retries=1,
        timeout=_TIMEOUT_S,
    )
    score = evaluate(endpoint, task)
    log.info("served task %s: %s %.4f", task.plan.name, task.plan.metric, score.score)
    return score
