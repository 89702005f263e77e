"""The accuracy gate: how much worse the optimized model may be than the baseline.

`degradation_percent = (perplexity - baseline) / baseline * 100` (lower perplexity is better, so
a positive number is a loss of accuracy). The gate passes when the Plan sets no limit or the
degradation is at most `max_degradation_percent`.

When it fails, `on_gate_failure: fail` stops the job (`AccuracyGateFailed`, nothing published);
`escalate` tries the stacks in `evaluation.escalation` in order, each on a fresh copy of the
loaded model, and keeps the first that passes. `attempt_stacks` lists what will be tried.
"""

from __future__ import annotations

from kiln_jobs.manifest import Attempt
from kiln_jobs.plan import EvaluationPlan, Technique, technique_label

__all__ = ["attempt_stacks", "degradation_percent", "failure_message", "passes", "stack_label"]


def degradation_percent(baseline: float, perplexity: float) -> float:
    """Relative perplexity increase over the baseline, in percent."""
    return (perplexity - baseline) / baseline * 100.0


def passes(evaluation: EvaluationPlan, degradation: float) -> bool:
    """True when `degradation` is within the Plan's limit (or there is no limit)."""
    limit = evaluation.max_degradation_percent
    return limit is None or degradation <= limit


def attempt_stacks(
    techniques: tuple[Technique, ...], evaluation: EvaluationPlan
) -> list[tuple[Technique, ...]]:
    """The Plan's stack, then (when escalating) each escalation stack."""
    stacks = [techniques]
    if evaluation.on_gate_failure == "escalate":
        stacks.extend(evaluation.escalation)
    return stacks


def stack_label(stack: tuple[Technique, ...]) -> str:
    """`ptq(int8_sq)+qat`-style label of a stack."""
    return "+".join(technique_label(t) for t in stack) or "none"


def failure_message(evaluation: EvaluationPlan, attempts: list[Attempt]) -> str:
    """One line naming the limit and what each attempt reached."""
    tried = "; ".join(
        f"{a.techniques}: {a.degradation_percent:+.2f}%"
        for a in attempts
        if a.degradation_percent is not None
    )
    return (
        f"accuracy gate failed: perplexity degradation above "
        f"{evaluation.max_degradation_percent}% ({tried})"
    )
