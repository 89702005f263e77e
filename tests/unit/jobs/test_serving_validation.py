"""`python -m kiln_jobs validate-serving`: the served-model evaluation Job's refusals, numbers and
termination message. The run against a real tritonserver is in
tests/integration/jobs/test_smollm2_tasks.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from obstore.store import MemoryStore

from kiln_jobs import served_eval, serving_validation
from kiln_jobs.__main__ import main
from kiln_jobs.errors import ExitCode, SourceNotFound, UserError
from kiln_jobs.manifest import (
    TERMINATION_MESSAGE_LIMIT,
    CheckpointInfo,
    JobResult,
    Manifest,
    Metrics,
    ServedLevel,
    ServedTask,
    ServingMeasurements,
    TaskResult,
)
from kiln_jobs.plan import (
    DataRef,
    EvaluationPlan,
    ModelRef,
    OutputPlan,
    PerformancePlan,
    Plan,
    PlanMetadata,
    ServedEvaluationPlan,
    TaskPlan,
)
from kiln_jobs.publish import DirectoryStore, ObjectStore, digest_files
from kiln_jobs.serving.loadtest import LevelStats
from kiln_jobs.serving_validation import ServingValidation, served_level, served_task
from kiln_jobs.sources.s3 import Bucket

pytestmark = pytest.mark.unit

SPEED_ONLY = PerformancePlan(concurrency=(1, 4), requests=4, max_tokens=8, baseline=False)
PUBLISHED = TaskResult(
    name="qa", metric="exact_match", baseline=0.4, optimized=0.375, samples=40, passed=True
)
FELL_SHORT = served_eval.ServedTaskResult(
    name="qa", metric="exact_match", in_process=0.375, served=0.2, samples=40, passed=False
)
LEVEL = LevelStats(
    concurrency=4,
    requests=8,
    seconds=2.0,
    ttft_p50=0.21034,
    ttft_p95=0.38,
    itl_p50=0.04826,
    output_tokens_per_second=61.4567,
    requests_per_second=2.0,
    latency_p50=0.5,
    latency_p95=0.75,
)


def _plan(store: str, performance: PerformancePlan | None = SPEED_ONLY) -> Plan:
    task = TaskPlan(name="qa", source="file:///tasks/qa", limit=40, metric="exact_match")
    return Plan(
        metadata=PlanMetadata(name="p"),
        model=ModelRef(source="file:///m"),
        techniques=(),
        evaluation=EvaluationPlan(
            data=DataRef(samples=1, seq_length=8),
            stride=8,
            tasks=(task,),
            served=ServedEvaluationPlan(max_drop=0.05),
            performance=performance,
        ),
        output=OutputPlan(store=store),
    )


def _publish(store: DirectoryStore | ObjectStore, plan: Plan) -> None:
    """A published plan whose checkpoint holds weights, tokenizer files and a draft's config."""
    staging = store.staging(plan.hash())
    (staging / "checkpoint" / "draft").mkdir(parents=True)
    (staging / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    (staging / "checkpoint" / "tokenizer.json").write_text("{}")
    (staging / "checkpoint" / "config.json").write_text("{}")
    (staging / "checkpoint" / "draft" / "config.json").write_text("{}")
    manifest = Manifest(
        plan_hash=plan.hash(), plan=plan, created_at="now", stages=[],
        metrics=Metrics(tasks=[PUBLISHED]), checkpoint=CheckpointInfo(),
        files=digest_files(staging),
    )  # fmt: skip
    store.commit(staging, manifest)


def test_results_become_the_termination_messages_units() -> None:
    assert served_task(FELL_SHORT) == ServedTask(
        name="qa", metric="exact_match", in_process=0.375, served=0.2, samples=40, passed=False
    )
    skipped = served_eval.ServedTaskResult(
        "mc", "acc", 0.8, None, 0, True, served_eval.NOT_SCORED_WHEN_SERVED
    )
    assert served_task(skipped).skipped == served_eval.NOT_SCORED_WHEN_SERVED
    assert served_level(LEVEL) == ServedLevel(
        concurrency=4, requests=8, ttft_p50_ms=210.3, ttft_p95_ms=380.0, itl_p50_ms=48.3,
        latency_p50_ms=500.0, latency_p95_ms=750.0, output_tokens_per_second=61.46,
        requests_per_second=2.0,
    )  # fmt: skip
    bare = LevelStats(1, 1, 1.0, 0.1, 0.1, None, 4.0, 1.0)
    assert served_level(bare).itl_p50_ms is None and served_level(bare).latency_p50_ms is None


def test_the_termination_message_keeps_what_serving_measured() -> None:
    level = served_level(LEVEL)
    passed = served_task(FELL_SHORT).model_copy(update={"served": 0.375, "passed": True})
    skipped = passed.model_copy(update={"served": None, "skipped": "not scored"})
    failed = [served_task(FELL_SHORT).model_copy(update={"name": f"failed_{i}"}) for i in range(3)]
    tasks = [
        *[passed.model_copy(update={"name": f"task_{i:02d}"}) for i in range(40)],
        *failed,
        skipped,
    ]
    levels = [level.model_copy(update={"concurrency": c}) for c in range(1, 31)]
    result = JobResult(
        ok=False, plan_hash="0" * 16, reason="ServingRegression", message="x" * 3000,
        serving=ServingMeasurements(tasks=tasks, performance=levels),
    )  # fmt: skip
    text = result.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    kept = JobResult.model_validate_json(text)
    assert kept.reason == "ServingRegression" and kept.message == "x" * 1000
    assert kept.serving is not None and kept.serving.tasks and kept.serving.performance
    assert len(kept.serving.tasks) < len(tasks) and len(kept.serving.performance) < len(levels)
    # The failed tasks stay longest, the levels lose their optional numbers first, and the
    # tasks that measured nothing go before any measured one.
    assert [t.name for t in kept.serving.tasks if not t.passed] == [t.name for t in failed]
    assert all(t.served is not None for t in kept.serving.tasks)
    assert all(lv.itl_p50_ms is None and lv.ttft_p50_ms == 210.3 for lv in kept.serving.performance)
    # A few levels fit whole, with the message untouched.
    few = result.model_copy(
        update={"message": "short", "serving": ServingMeasurements(performance=levels[:4])}
    )
    assert JobResult.model_validate_json(few.to_termination_message()) == few


def test_the_comparison_with_the_original_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path.as_uri(), PerformancePlan(min_speedup=1.5))
    with pytest.raises(UserError, match="only `kiln run` measures"):
        ServingValidation(plan, "http://candidate:8000", tmp_path / "work").execute()


def test_an_unpublished_plan_is_a_clear_error(tmp_path: Path) -> None:
    plan = _plan((tmp_path / "store").as_uri())
    with pytest.raises(SourceNotFound, match=f"plan {plan.hash()} is not published in file://"):
        ServingValidation(plan, "http://candidate:8000", tmp_path / "work").execute()


def test_the_tokenizer_is_read_in_place_or_fetched_without_the_weights(tmp_path: Path) -> None:
    directory = DirectoryStore(tmp_path / "store")
    plan = _plan(directory.uri)
    _publish(directory, plan)
    published = serving_validation.find_published(directory, plan)
    in_place = serving_validation.tokenizer_dir(directory, published, tmp_path / "work")
    assert in_place == tmp_path / "store" / plan.hash() / "checkpoint"
    objects = ObjectStore(Bucket(MemoryStore()), "kiln", "s3://bucket/kiln", tmp_path / "staging")
    _publish(objects, plan)
    published = serving_validation.find_published(objects, plan)
    fetched = serving_validation.tokenizer_dir(objects, published, tmp_path / "work")
    assert fetched == tmp_path / "work" / "published" / "checkpoint"
    assert sorted(p.name for p in fetched.rglob("*")) == ["config.json", "tokenizer.json"]


@pytest.mark.parametrize("url", ["https://candidate:8000", "http://", "http://host:8000/v2"])
def test_the_candidate_is_named_by_its_http_url(url: str) -> None:
    assert serving_validation.triton_address("http://candidate:8000/") == "candidate:8000"
    with pytest.raises(UserError, match="expected Triton's HTTP endpoint"):
        serving_validation.triton_address(url)


def test_a_regression_exits_9_and_its_measurements_reach_the_termination_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's wiring only: the relay, the scoring and the load test are stand-ins here."""
    store = DirectoryStore(tmp_path / "store")
    plan = _plan(store.uri)
    _publish(store, plan)
    seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def relay(triton: str, model: str, tokenizer: Path) -> Iterator[str]:
        seen["relay"] = (triton, model, tokenizer)
        yield "http://127.0.0.1:1/v1"

    def evaluate(manifest: Manifest, url: str, tokenizer: Path, cache: Path) -> list[Any]:
        seen["evaluate"] = (manifest.plan, url)
        return [FELL_SHORT]

    def measure(url: str, model: str, performance: PerformancePlan) -> list[LevelStats]:
        seen["measure"] = (url, model, performance)
        return [LEVEL]

    monkeypatch.setattr(serving_validation, "openai_relay", relay)
    monkeypatch.setattr(served_eval, "evaluate_served", evaluate)
    monkeypatch.setattr(serving_validation, "measure_performance", measure)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    termination = tmp_path / "termination-log"
    code = main(
        [
            "validate-serving", "--plan", str(plan_file), "--http", "http://candidate:8000",
            "--workdir", str(tmp_path / "work"), "--termination-log", str(termination),
        ]
    )  # fmt: skip
    assert code == ExitCode.SERVING_REGRESSION
    err = capsys.readouterr().err
    expected = served_eval.regression([FELL_SHORT], ServedEvaluationPlan(max_drop=0.05))
    failure = [line for line in err.splitlines() if line.startswith("kiln:")]
    assert failure == [f"kiln: ServingRegression: {expected.message}"]
    assert "Traceback" not in err
    checkpoint = tmp_path / "store" / plan.hash() / "checkpoint"
    assert seen["relay"] == ("candidate:8000", plan.serving.model_name, checkpoint)
    assert seen["evaluate"] == (plan, "http://127.0.0.1:1/v1")
    assert seen["measure"] == ("candidate:8000", plan.serving.model_name, SPEED_ONLY)
    result = JobResult.model_validate_json(termination.read_text())
    assert (result.ok, result.plan_hash, result.reason) == (
        False,
        plan.hash(),
        "ServingRegression",
    )
    assert result.serving == ServingMeasurements(
        tasks=[served_task(FELL_SHORT)], performance=[served_level(LEVEL)]
    )


def test_a_refused_plan_still_writes_its_termination_log(tmp_path: Path) -> None:
    plan = _plan(tmp_path.as_uri(), PerformancePlan())
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    termination = tmp_path / "termination-log"
    argv = ["validate-serving", "--plan", str(plan_file), "--http", "http://c:8000"]
    argv += ["--workdir", str(tmp_path / "work"), "--termination-log", str(termination)]
    assert main(argv) == ExitCode.USER_ERROR
    written = json.loads(termination.read_text())
    assert (written["ok"], written["plan_hash"], written["reason"]) == (
        False,
        plan.hash(),
        "UserError",
    )
    assert "serving" not in written
