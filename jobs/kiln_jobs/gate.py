"""The accuracy gate: how much worse the optimized model may be than the baseline.

Perplexity: `degradation_percent = (perplexity - baseline) / baseline * 100` (lower perplexity is
better, so a positive number is a loss of accuracy). It passes when the Plan sets no limit or the
degradation is at most `max_degradation_percent`.

Tasks (`judge_task`), each scored on the same samples before and after, in the metric's
direction (lm-eval says whether higher is better):

- `min_recovery`: optimized / baseline must be at least this (0.97 keeps 97 % of the score);
- `max_drop`: baseline - optimized must be at most this, in the metric's units;
- an optimized score better than the baseline by more than the standard error is an anomaly
  (`AnomalousImprovement`: a broken task, leaked data or too few samples are likelier than a
  quantized model that knows more). It fails the gate like a loss does, unless the task sets
  `allow_improvement`; a task with no threshold only reports it.

The gate passes when perplexity and every task pass. When it fails, `on_gate_failure: fail` stops
the job (`AccuracyGateFailed`, nothing published); `escalate` tries the stacks in
`evaluation.escalation` in order, each on a fresh copy of the loaded model, and keeps the first
that passes. `attempt_stacks` lists what will be tried.
"""

from __future__ import annotations

from kiln_jobs.errors import AccuracyGateFailed, AnomalousImprovement
from kiln_jobs.manifest import Attempt, TaskResult
from kiln_jobs.plan import EvaluationPlan, PTQPlan, TaskPlan, Technique, technique_label
from kiln_jobs.tasks import TaskScore

__all__ = [
    "ABOVE_MAX_DROP",
    "ANOMALOUS_IMPROVEMENT",
    "BELOW_MIN_RECOVERY",
    "attempt_stacks",
    "degradation_percent",
    "exceeds",
    "failure",
    "failure_message",
    "improvement",
    "judge_task",
    "passes",
    "recovery",
    "stack_label",
]

BELOW_MIN_RECOVERY = "BelowMinRecovery"
ABOVE_MAX_DROP = "AboveMaxDrop"
ANOMALOUS_IMPROVEMENT = "AnomalousImprovement"
# Scores such as 0.825 - 0.775 are not exact in binary: a drop equal to the limit must pass.
_TOLERANCE = 1e-9
_DIGITS = 4


def degradation_percent(baseline: float, perplexity: float) -> float:
    """Relative perplexity increase over the baseline, in percent."""
    return (perplexity - baseline) / baseline * 100.0


def passes(evaluation: EvaluationPlan, degradation: float) -> bool:
    """True when `degradation` is within the Plan's limit (or there is no limit)."""
    limit = evaluation.max_degradation_percent
    return limit is None or degradation <= limit


def exceeds(value: float, limit: float) -> bool:
    """`value > limit`, forgiving binary rounding: a drop equal to its limit passes."""
    return value > limit + _TOLERANCE


def improvement(baseline: float, optimized: float, higher_is_better: bool = True) -> float:
    """How much better the optimized score is, in the metric's units (negative: a loss)."""
    return optimized - baseline if higher_is_better else baseline - optimized


def recovery(baseline: float, optimized: float, higher_is_better: bool = True) -> float:
    """The share of the baseline's score the optimized model keeps (1.0: all of it)."""
    kept, reference = (optimized, baseline) if higher_is_better else (baseline, optimized)
    if reference == 0:
        return 1.0 if kept == 0 else float("inf")
    return kept / reference


def judge_task(task: TaskPlan, baseline: TaskScore, optimized: TaskScore) -> TaskResult:
    """The task's verdict: its threshold first, then the anomaly rule (see the module doc)."""
    higher = baseline.higher_is_better
    errors = [e for e in (baseline.stderr, optimized.stderr) if e is not None]
    stderr = max(errors) if errors else None
    gain = improvement(baseline.score, optimized.score, higher)
    reason = _threshold_reason(task, baseline.score, optimized.score, higher)
    # Without a standard error any improvement is beyond it.
    if reason is None and exceeds(gain, stderr or 0.0):
        reason = ANOMALOUS_IMPROVEMENT
    blocks = reason is not None and task.gated()
    if reason == ANOMALOUS_IMPROVEMENT and task.allow_improvement:
        blocks = False
    return TaskResult(
        name=task.name,
        metric=task.metric,
        baseline=round(baseline.score, _DIGITS),
        optimized=round(optimized.score, _DIGITS),
        stderr=None if stderr is None else round(stderr, _DIGITS),
        samples=optimized.samples,
        passed=not blocks,
        reason=reason,
    )


def _threshold_reason(
    task: TaskPlan, baseline: float, optimized: float, higher: bool
) -> str | None:
    if (
        task.min_recovery is not None
        and recovery(baseline, optimized, higher) < task.min_recovery - _TOLERANCE
    ):
        return BELOW_MIN_RECOVERY
    if task.max_drop is not None and exceeds(
        -improvement(baseline, optimized, higher), task.max_drop
    ):
        return ABOVE_MAX_DROP
    return None


def attempt_stacks(
    techniques: tuple[Technique, ...], evaluation: EvaluationPlan
) -> list[tuple[Technique, ...]]:
    """The Plan's stack, then (when escalating) each escalation stack."""
    stacks = [techniques]
    if evaluation.on_gate_failure == "escalate":
        stacks.extend(evaluation.escalation)
    return stacks


def stack_label(stack: tuple[Technique, ...], first: tuple[Technique, ...] = ()) -> str:
    """`ptq(int8_sq)+qat`-style label of a stack; a PTQ calibrated on other data than the
    one in `first` (the Plan's own stack) says on how much: `ptq(int8_sq,32x256)`."""
    asked = {t.format: t.calibration for t in first if isinstance(t, PTQPlan)}
    labels = []
    for technique in stack:
        label = technique_label(technique)
        if isinstance(technique, PTQPlan):
            data = technique.calibration
            if asked.get(technique.format, data) != data:
                label = f"{label[:-1]},{data.samples}x{data.seq_length})"
        labels.append(label)
    return "+".join(labels) or "none"


def failure(evaluation: EvaluationPlan, attempts: list[Attempt]) -> AccuracyGateFailed:
    """The error that ends a run whose every attempt failed: `AnomalousImprovement` when the
    last attempt lost nothing and failed only on anomalies."""
    message = failure_message(evaluation, attempts)
    last = attempts[-1]
    blocking = [t for t in last.tasks or [] if not t.passed]
    perplexity_failed = last.degradation_percent is not None and not passes(
        evaluation, last.degradation_percent
    )
    if (
        blocking
        and not perplexity_failed
        and all(t.reason == ANOMALOUS_IMPROVEMENT for t in blocking)
    ):
        return AnomalousImprovement(message)
    return AccuracyGateFailed(message)


def failure_message(evaluation: EvaluationPlan, attempts: list[Attempt]) -> str:
    """One line naming the limits and what each attempt reached."""
    if not evaluation.tasks:
        tried = "; ".join(
            f"{a.techniques}: {a.degradation_percent:+.2f}%"
            for a in attempts
            if a.degradation_percent is not None
        )
        return (
            f"accuracy gate failed: perplexity degradation above "
            f"{evaluation.max_degradation_percent}% ({tried})"
        )
    tasks = {task.name: task for task in evaluation.tasks}
    tried = "; ".join(
        f"{a.techniques}: " + ", ".join(_attempt_failures(evaluation, a, tasks)) for a in attempts
    )
    return f"accuracy gate failed ({tried})"


def _attempt_failures(
    evaluation: EvaluationPlan, attempt: Attempt, tasks: dict[str, TaskPlan]
) -> list[str]:
    found = []
    change = attempt.degradation_percent
    if change is not None and not passes(evaluation, change):
        found.append(
            f"perplexity {change:+.2f}% (maxDegradationPercent "
            f"{evaluation.max_degradation_percent})"
        )
    for result in attempt.tasks or []:
        if not result.passed:
            found.append(_task_failure(result, tasks[result.name]))
    return found or ["passed"]


def _task_failure(result: TaskResult, task: TaskPlan) -> str:
    """e.g. `arc_easy acc 0.520 -> 0.470: drop 0.050 above maxDrop 0.02`."""
    scores = f"{result.name} {result.metric} {result.baseline:.3f} -> {result.optimized:.3f}"
    if result.reason == BELOW_MIN_RECOVERY:
        # The score's direction is not recorded; a loss keeps the smaller of the two ratios.
        low, high = sorted((result.baseline, result.optimized))
        kept = low / high if high else 0.0
        return f"{scores}: recovery {kept:.3f} below minRecovery {task.min_recovery}"
    if result.reason == ABOVE_MAX_DROP:
        drop = abs(result.baseline - result.optimized)
        return f"{scores}: drop {drop:.3f} above maxDrop {task.max_drop}"
    return (
        f"{scores}: better than the baseline by more than its standard error "
        f"({result.stderr}), {ANOMALOUS_IMPROVEMENT}; check the task and its samples, or set "
        "allowImprovement"
    )
