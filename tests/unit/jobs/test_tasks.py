"""lm-eval in the runner: reading its results, preparing task sources, and a task-gated run of
the tiny Llama (the numbers on SmolLM2 are in tests/integration/jobs/test_smollm2_tasks.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln_jobs import gate, tasks
from kiln_jobs.errors import AccuracyGateFailed, SourceNotFound, UserError
from kiln_jobs.plan import DataRef, Plan, PTQPlan, QATPlan, TaskPlan, TrainingPlan
from kiln_jobs.progress import ProgressLog
from kiln_jobs.runner import Run
from tests.unit.jobs.cloze_task import GENERATIVE_TASK_NAME, TASK_NAME, write_cloze_task
from tests.unit.jobs.tiny import tiny_plan

pytestmark = pytest.mark.unit


def _results(name: str, scores: dict[str, Any], **more: Any) -> dict[str, Any]:
    """`simple_evaluate`'s results, in the shape lm-eval 0.4 writes them (trimmed)."""
    return {
        "results": {name: {"alias": name, **scores}},
        "higher_is_better": {name: {"acc": True, "acc_norm": True, "perplexity": False}},
        "n-samples": {name: {"original": 100, "effective": 40}},
        **more,
    }


def test_read_score_takes_the_unfiltered_metric_and_its_standard_error() -> None:
    results = _results(
        "arc_easy",
        {"acc,none": 0.825, "acc_stderr,none": 0.0608, "acc_norm,none": 0.875},
    )
    score = tasks.read_score(results, TaskPlan(name="arc_easy", limit=40))
    assert score == tasks.TaskScore(score=0.825, stderr=0.0608, samples=40, higher_is_better=True)
    norm = tasks.read_score(results, TaskPlan(name="arc_easy", limit=40, metric="acc_norm"))
    assert (norm.score, norm.stderr) == (0.875, None)


def test_read_score_finds_filtered_metrics_and_the_metric_direction() -> None:
    results = _results(
        "gsm8k",
        {
            "exact_match,strict-match": 0.3,
            "exact_match_stderr,strict-match": 0.07,
            "exact_match,flexible-extract": 0.35,
            "exact_match_stderr,flexible-extract": "N/A",
        },
    )
    strict = TaskPlan(name="gsm8k", limit=40, metric="exact_match,strict-match")
    assert tasks.read_score(results, strict).stderr == 0.07
    flexible = strict.model_copy(update={"metric": "exact_match,flexible-extract"})
    assert tasks.read_score(results, flexible) == tasks.TaskScore(0.35, None, 40)
    ambiguous = strict.model_copy(update={"metric": "exact_match"})
    with pytest.raises(UserError, match=r"reports exact_match,strict-match, exact_match,flex"):
        tasks.read_score(results, ambiguous)
    words = _results("wikitext", {"perplexity,none": 12.5})
    lower = tasks.read_score(words, TaskPlan(name="wikitext", limit=4, metric="perplexity"))
    assert lower.higher_is_better is False


def test_a_tag_without_its_own_score_is_refused_clearly() -> None:
    results = {"results": {"arc_easy": {"acc,none": 0.5}}, "n-samples": {}}
    with pytest.raises(UserError, match="name one task, or a group that aggregates"):
        tasks.read_score(results, TaskPlan(name="ai2_arc", limit=40))


def test_a_group_counts_the_samples_of_its_tasks() -> None:
    results = {
        "results": {"mmlu": {"acc,none": 0.4, "acc_stderr,none": 0.01}},
        "group_subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_anatomy", "mmlu_virology"]},
        "n-samples": {
            "mmlu_anatomy": {"original": 135, "effective": 40},
            "mmlu_virology": {"original": 166, "effective": 40},
        },
    }
    assert tasks.read_score(results, TaskPlan(name="mmlu", limit=40)).samples == 80


def test_prepare_needs_nothing_without_tasks(tmp_path: Path) -> None:
    assert tasks.prepare((), tmp_path) == []


def test_prepare_checks_sources_and_names_before_any_model(tmp_path: Path) -> None:
    source = write_cloze_task(tmp_path / "task")
    (prepared,) = tasks.prepare(
        (TaskPlan(name=TASK_NAME, source=f"file://{source}", limit=40),), tmp_path / "cache"
    )
    assert prepared.directory == source
    unknown = TaskPlan(name="arc_easy", source=f"file://{source}", limit=40)
    with pytest.raises(UserError, match=r"evaluation.tasks\[0\].name: 'arc_easy' is not a task"):
        tasks.prepare((unknown,), tmp_path / "cache")
    missing = unknown.model_copy(update={"source": f"file://{tmp_path}/absent"})
    with pytest.raises(SourceNotFound, match=r"tasks\[0\].source: file://.*/absent does not exist"):
        tasks.prepare((missing,), tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    empty = unknown.model_copy(update={"source": f"file://{tmp_path}/empty"})
    with pytest.raises(UserError, match=r"tasks\[0\].source: file://.*/empty holds no lm-eval"):
        tasks.prepare((empty,), tmp_path / "cache")


def test_prepare_tells_how_each_task_is_scored(tmp_path: Path) -> None:
    source = write_cloze_task(tmp_path / "task")
    write_cloze_task(source, generative=True)
    choice, generative = tasks.prepare(
        tuple(
            TaskPlan(name=name, source=f"file://{source}", limit=40)
            for name in (TASK_NAME, GENERATIVE_TASK_NAME)
        ),
        tmp_path / "cache",
    )
    assert (choice.output_type, generative.output_type) == ("multiple_choice", "generate_until")


def test_prepare_reads_the_data_and_names_what_is_missing(tmp_path: Path) -> None:
    source = write_cloze_task(tmp_path / "task")
    (source / "questions.jsonl").unlink()
    task = TaskPlan(name=TASK_NAME, source=f"file://{source}", limit=40)
    with pytest.raises(SourceNotFound) as missing:
        tasks.prepare((task,), tmp_path / "cache")
    assert missing.value.message == (
        f"evaluation.tasks[0] ({TASK_NAME}): its data cannot be read (Unable to find "
        f"'{source}/questions.jsonl'): check the paths in its YAML, relative to file://{source}"
    )


def _with_task(plan: Plan, task: TaskPlan) -> Plan:
    evaluation = plan.evaluation.model_copy(update={"tasks": (task,)})
    return plan.model_copy(update={"evaluation": evaluation})


def test_an_unknown_task_fails_in_preflight(tmp_path: Path) -> None:
    source = write_cloze_task(tmp_path / "task")
    plan = tiny_plan(tmp_path / "no-model", tmp_path / "store", ())
    plan = _with_task(plan, TaskPlan(name="hellaswag", source=f"file://{source}", limit=40))
    run = Run(plan, tmp_path / "work", ProgressLog(bars=False))
    with pytest.raises(UserError, match="'hellaswag' is not a task"):
        run.execute()
    assert [(s.name, s.state) for s in run.stages] == [("preflight", "Failed")]


@pytest.mark.numerics
def test_a_failing_task_escalates_and_every_attempt_keeps_its_task_result(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    fp8 = PTQPlan(format="fp8", calibration=DataRef(samples=2, seq_length=32))
    qat = QATPlan(
        training=TrainingPlan(
            steps=2,
            learning_rate=1e-3,
            batch_size=2,
            data=DataRef(samples=4, seq_length=32),
            checkpoint_every=2,
        )
    )
    source = write_cloze_task(tmp_path / "task")
    # Keeping 150% of the baseline is impossible (the API caps minRecovery at 1): every attempt
    # fails on the task alone, whatever the tiny model scores.
    task = TaskPlan(name=TASK_NAME, source=f"file://{source}", limit=40, min_recovery=1.5)
    plan = tiny_plan(tiny_model_dir, tmp_path / "store", (fp8,), escalation=((fp8, qat),))
    run = Run(_with_task(plan, task), tmp_path / "work", ProgressLog(bars=False))
    with pytest.raises(AccuracyGateFailed, match=r"recovery .* below minRecovery 1.5") as failure:
        run.execute()
    first, second = run.attempts
    assert (first.techniques, second.techniques) == ("ptq(fp8)", "ptq(fp8)+qat")
    for attempt in (first, second):
        (result,) = attempt.tasks or []
        assert (result.name, result.samples, result.passed) == (TASK_NAME, 40, False)
        assert result.reason == gate.BELOW_MIN_RECOVERY
        assert result.baseline == first.tasks[0].baseline > 0  # type: ignore[index]
    message = json.loads(run.job_result(failure.value).to_termination_message())
    assert message["reason"] == "AccuracyGateFailed"
    assert message["metrics"]["tasks"][0]["optimized"] == second.tasks[0].optimized  # type: ignore[index]
    assert [len(a["tasks"]) for a in message["attempts"]] == [1, 1]
    assert not list((tmp_path / "store").glob("*"))
