"""`kiln run`'s local flow: serve a published plan with the real Triton, check it, report.

The runner half is replaced by a published tiny plan here (the runner has its own tests); the
SmolLM2 test at the bottom runs the real thing end to end."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiln_jobs import local
from kiln_jobs.manifest import CheckpointInfo, Manifest, Metrics, StageResult
from kiln_jobs.plan import PerformancePlan
from kiln_jobs.serving.tritonserver import TritonServer
from tests.integration.serving.conftest import group_alive, reference_text
from tests.integration.serving.tiny_models import byte_tokenizer, tiny_llama

pytestmark = pytest.mark.integration


def _manifest(published) -> Manifest:
    return Manifest(
        plan_hash=published.plan.hash(),
        plan=published.plan,
        created_at=datetime.now(UTC).isoformat(),
        stages=[StageResult(name="ptq(fp8)", state="Succeeded", seconds=1.5)],
        metrics=Metrics(
            baseline_perplexity=23.76,
            perplexity=24.2,
            degradation_percent=1.85,
            baseline_size_bytes=538_000_000,
            size_bytes=270_000_000,
        ),
        checkpoint=CheckpointInfo(quant_algo="FP8"),
        serving_runtime="python",
        files=[],
    )


@pytest.fixture(scope="module")
def tiny_original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama the published FP8 checkpoint was quantized from, unquantized."""
    directory = tmp_path_factory.mktemp("original")
    tiny_llama(0).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def _measured(manifest: Manifest, original: Path, performance: PerformancePlan) -> Manifest:
    """The manifest of a plan of `original` that asks for a performance measurement."""
    plan = manifest.plan
    evaluation = plan.evaluation.model_copy(update={"performance": performance})
    model = plan.model.model_copy(update={"source": original.as_uri()})
    return manifest.model_copy(
        update={"plan": plan.model_copy(update={"evaluation": evaluation, "model": model})}
    )


def test_serve_published_checks_every_protocol_and_the_checkpoint(
    tiny_published, tiny_original: Path, tmp_path: Path
) -> None:
    groups = set(TritonServer.started_groups)
    seen = []
    performance = PerformancePlan(concurrency=(1, 2), requests=3, max_tokens=8)
    manifest = _measured(_manifest(tiny_published), tiny_original, performance)
    report = local.serve_published(
        manifest,
        tiny_published.root,
        prompt="Kiln serves",
        on_ready=seen.append,
        work_dir=tmp_path / "work",
    )
    expected = reference_text(tiny_published.export, "Kiln serves", local.SMOKE_TOKENS)
    assert report.text == expected
    assert report.protocols_agree and report.matches_checkpoint and report.stopped
    assert report.http_url and report.grpc_url and report.ready_seconds > 0
    assert report.stream_chunks > 1
    assert report.openai_url.startswith("http://127.0.0.1:") and report.openai_url.endswith("/v1")
    assert seen == [report]
    assert not any(group_alive(g) for g in TritonServer.started_groups - groups)
    # The load test streamed every request of each level to its last token, on the original
    # model first (served alone from a dense checkpoint), then on the published one.
    for levels in (report.baseline_performance, report.performance):
        one, two = levels
        assert (one.concurrency, one.requests, two.concurrency, two.requests) == (1, 3, 2, 3)
        for level in (one, two):
            assert 0 < level.ttft_p50 <= level.ttft_p95 < level.seconds
            assert level.itl_p50 is not None and level.itl_p50 > 0
            assert level.output_tokens_per_second == pytest.approx(3 * 8 / level.seconds)
    assert [r.concurrency for r in report.speed] == [1, 2] and all(r.passed for r in report.speed)
    assert report.speed[1].speedup == pytest.approx(
        report.performance[1].output_tokens_per_second
        / report.baseline_performance[1].output_tokens_per_second
    )
    assert (tmp_path / "work" / "baseline").is_dir()
    print("\n".join(r.summary() for r in report.speed))


def test_run_local_prints_a_plain_report(
    tiny_published, tiny_original: Path, tmp_path: Path, monkeypatch
) -> None:
    from kiln_jobs import runner

    speed_only = PerformancePlan(concurrency=(1,), requests=2, max_tokens=4, baseline=False)
    manifest = _measured(_manifest(tiny_published), tiny_original, speed_only)
    result = runner.RunResult(
        manifest=manifest,
        published_uri=tiny_published.root.as_uri(),
        published_dir=tiny_published.root,
    )
    monkeypatch.setattr(runner.Run, "execute", lambda self: result)
    out = io.StringIO()
    report = local.run_local(tiny_published.plan, tmp_path, prompt="Kiln serves", out=out)
    text = out.getvalue()
    print(text)
    assert report.serve is not None and report.serve.matches_checkpoint
    assert "perplexity   23.76 -> 24.20 (+1.9%" in text
    assert "size         538.0 MB -> 270.0 MB" in text
    assert f"generated    {report.serve.text!r}" in text
    assert "same text: yes" in text and "Traceback" not in text
    assert f"openai       {report.serve.openai_url}" in text
    assert "triton stopped" in text
    assert (tmp_path / "tritonserver.log").is_file()
    # What serving measured is in its own report beside the run's.
    (level,) = report.serve.performance
    assert f"performance  {level.summary()}" in text and not report.serve.baseline_performance
    serving = tmp_path / "report" / "serving.md"
    assert report.serving_report == serving and f"serving      report {serving}" in text
    assert "| 1 | " in serving.read_text() and (tmp_path / "report" / "serving.png").is_file()


def test_no_serve(tiny_published, tmp_path: Path, monkeypatch) -> None:
    from kiln_jobs import runner

    result = runner.RunResult(
        manifest=_manifest(tiny_published),
        published_uri=tiny_published.root.as_uri(),
        published_dir=tiny_published.root,
    )
    monkeypatch.setattr(runner.Run, "execute", lambda self: result)
    out = io.StringIO()
    report = local.run_local(tiny_published.plan, tmp_path, serve=False, out=out)
    assert report.serve is None and "serving      skipped (--no-serve)" in out.getvalue()


def test_a_served_score_short_of_the_published_one_is_a_serving_regression(
    tiny_published, tmp_path: Path
) -> None:
    """Kiln's CPU runtime serves exactly what was measured, so the shortfall is injected: the
    manifest claims an in-process score the tiny random model cannot reach when served."""
    from kiln_jobs.errors import ServingRegression
    from kiln_jobs.manifest import TaskResult
    from kiln_jobs.plan import ServedEvaluationPlan, TaskPlan
    from tests.unit.jobs.cloze_task import GENERATIVE_TASK_NAME, write_cloze_task

    source = write_cloze_task(tmp_path / "task", questions=8, generative=True)
    task = TaskPlan(
        name=GENERATIVE_TASK_NAME, source=source.as_uri(), limit=8, metric="exact_match"
    )
    plan = tiny_published.plan
    evaluation = plan.evaluation.model_copy(
        update={"tasks": (task,), "served": ServedEvaluationPlan(max_drop=0.1)}
    )
    claimed = TaskResult(
        name=task.name, metric="exact_match", baseline=1.0, optimized=1.0, samples=8, passed=True
    )
    manifest = _manifest(tiny_published).model_copy(
        update={"plan": plan.model_copy(update={"evaluation": evaluation})}
    )
    manifest.metrics.tasks = [claimed]
    groups = set(TritonServer.started_groups)
    seen = []
    with pytest.raises(ServingRegression) as failure:
        local.serve_published(
            manifest, tiny_published.root, work_dir=tmp_path / "work", on_ready=seen.append
        )
    # The report was handed over first, so `kiln run` prints what was measured.
    ((result,),) = [report.served_tasks for report in seen]
    assert (result.in_process, result.samples, result.passed) == (1.0, 8, False)
    assert result.served is not None and result.served < 0.9
    assert failure.value.message.startswith("the served model scores below the published one")
    assert f"{GENERATIVE_TASK_NAME} exact_match 1.000 in process" in failure.value.message
    assert not any(group_alive(g) for g in TritonServer.started_groups - groups)
