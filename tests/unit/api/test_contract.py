"""The shared contract: one table per fact, and nothing outside a table slips through."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from kiln_jobs import hardware
from kiln_jobs.contract import (
    FORMATS,
    KV_CACHES,
    RUNTIMES,
    EngineBackend,
    format_spec,
    runtime_for,
    shortfall,
)
from kiln_jobs.manifest import Metrics, TaskResult
from kiln_jobs.plan import PTQPlan
from kiln_operator.api import ModelOptimization
from kiln_operator.api.status import MetricsStatus, ModelOptimizationStatus
from kiln_operator.hardware import format_support_problem
from kiln_operator.kube import merge_patched

pytestmark = pytest.mark.unit

HOPPER = hardware.Accelerator("cuda", "NVIDIA H100", "hopper", (9, 0))
CPU = hardware.Accelerator("cpu", "CPU")


def _enum(schema: dict[str, Any], *path: str) -> list[str]:
    node = schema
    for part in path:
        node = node["$defs"][part] if part[0].isupper() else node["properties"][part]
        node = next((o for o in node.get("anyOf", [node]) if "enum" in o or "$ref" in o), node)
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return list(node["enum"])


def test_the_api_offers_exactly_the_formats_in_the_table() -> None:
    schema = ModelOptimization.model_json_schema(by_alias=True)
    assert _enum(schema, "PTQSpec", "format") == list(FORMATS)
    assert _enum(schema, "PTQSpec", "kvCache") == list(KV_CACHES)
    assert set(get_args(PTQPlan.model_fields["format"].annotation)) == set(FORMATS)


@pytest.mark.parametrize("fmt", ["int3", "FP8", ""])
def test_an_unknown_format_is_refused_by_every_hardware_check(fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown quantization format"):
        format_spec(fmt)
    with pytest.raises(ValueError, match="unknown quantization format"):
        shortfall(fmt, "none", "blackwell")
    # The job's device check, on a GPU and on a CPU.
    for accelerator in (HOPPER, CPU):
        with pytest.raises(ValueError, match="unknown quantization format"):
            hardware.format_problem(fmt, "none", accelerator)
    # The operator's admission check, for a known generation and for an unknown GPU.
    for family in ("hopper", None, "some-future-family"):
        with pytest.raises(ValueError, match="unknown quantization format"):
            format_support_problem(fmt, family)


def test_an_unknown_kv_cache_is_refused_too() -> None:
    with pytest.raises(ValueError, match="unknown KV-cache format"):
        format_support_problem("fp8", "hopper", kv_cache="int2")
    with pytest.raises(ValueError, match="unknown KV-cache format"):
        hardware.format_problem("fp8", "int2", HOPPER)


def test_both_sides_agree_on_every_format_and_generation() -> None:
    for fmt, spec in FORMATS.items():
        for family in ("ampere", "ada", "hopper", "blackwell"):
            accelerator = hardware.Accelerator("cuda", "GPU", family, (0, 0))
            job_refuses = hardware.format_problem(fmt, "none", accelerator) is not None
            operator_refuses = format_support_problem(fmt, family) is not None
            assert job_refuses == operator_refuses, (fmt, family)
        assert (hardware.format_problem(fmt, "none", CPU) is None) == spec.cpu


def test_every_engine_backend_has_one_runtime() -> None:
    backends = [spec.backend for spec in RUNTIMES.values()]
    assert sorted(backends) == sorted(get_args(EngineBackend))
    for backend in backends:
        assert RUNTIMES[runtime_for(backend)].backend == backend
        assert runtime_for(backend, fallback_reason="no GPU") == "python"


def test_status_has_a_field_for_every_measured_number() -> None:
    measured = set(Metrics.model_fields)
    assert measured <= set(MetricsStatus.model_fields), measured - set(MetricsStatus.model_fields)
    task = TaskResult(
        name="arc_easy",
        metric="acc",
        baseline=0.52,
        optimized=0.5,
        stderr=0.079,
        samples=40,
        passed=True,
    )
    examples = {"tasks": [task]}
    full = Metrics(
        **{name: examples.get(name, 1.5 if "perplexity" in name else 1) for name in measured}
    )
    assert MetricsStatus.from_metrics(full).to_metrics() == full


def test_a_status_patch_clears_what_the_previous_plan_left() -> None:
    previous = {
        "planHash": "a" * 16,
        "metrics": {"perplexity": 21.0, "latencyMs": 90.0},
        "endpoint": "http://x:8000",
        "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "m"}],
    }
    status = ModelOptimizationStatus(plan_hash="b" * 16)
    status.metrics = MetricsStatus(perplexity=22.0)
    patched = merge_patched(previous, status.merge_patch())
    assert patched["planHash"] == "b" * 16
    assert patched["metrics"] == {"perplexity": 22.0}  # latencyMs of the old plan is gone
    assert "endpoint" not in patched and "conditions" not in patched


def test_merge_patch_semantics() -> None:
    target = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    assert merge_patched(target, {"a": None, "b": {"c": None, "x": 4}, "e": [3]}) == {
        "b": {"d": 3, "x": 4},
        "e": [3],
    }
    assert merge_patched(target, {}) == target
