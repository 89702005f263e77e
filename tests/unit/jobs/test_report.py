"""The run report: what it says for a passed and a failed gate, and its plots."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kiln_jobs import local
from kiln_jobs.errors import AccuracyGateFailed
from kiln_jobs.manifest import Attempt, CheckpointInfo, Metrics, StageResult, TaskResult
from kiln_jobs.plan import DataRef, PTQPlan
from kiln_jobs.report import ReportFacts, render_markdown, write_report
from tests.unit.jobs.tiny import tiny_plan

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n"
CALIBRATION = DataRef(samples=2, seq_length=32)


def _task(name: str, baseline: float, optimized: float, passed: bool, reason: str | None = None):
    return TaskResult(
        name=name,
        metric="acc",
        baseline=baseline,
        optimized=optimized,
        stderr=0.06,
        samples=40,
        passed=passed,
        reason=reason,
    )


def _escalated(tmp_path: Path) -> ReportFacts:
    plan = tiny_plan(
        tmp_path / "model",
        tmp_path / "store",
        (PTQPlan(format="int8_sq", calibration=CALIBRATION),),
        max_degradation_percent=5.0,
    )
    lossy = _task("cloze", 0.825, 0.35, False, "AboveMaxDrop")
    recovered = _task("cloze", 0.825, 0.80, True)
    return ReportFacts.from_plan(
        plan,
        Metrics(
            baseline_perplexity=21.09,
            perplexity=21.88,
            exported_perplexity=21.9,
            degradation_percent=3.75,
            baseline_size_bytes=538_000_000,
            size_bytes=270_000_000,
            tasks=[recovered],
        ),
        passed=True,
        attempts=[
            Attempt(
                techniques="ptq(int8_sq)",
                perplexity=25.95,
                degradation_percent=23.0,
                passed=False,
                seconds=31.0,
                tasks=[lossy],
            ),
            Attempt(
                techniques="ptq(int8_sq)+qat",
                perplexity=21.88,
                degradation_percent=3.75,
                passed=True,
                seconds=95.5,
                tasks=[recovered],
            ),
        ],
        stages=[
            StageResult(name="load", state="Succeeded", seconds=4.2),
            StageResult(name="ptq(int8_sq)", state="Succeeded", seconds=20.0, message="8 samples"),
            StageResult(name="publish", state="Succeeded"),
        ],
        checkpoint=CheckpointInfo(quant_algo="W8A8_SQ_PER_CHANNEL", tools={"torch": "2.9"}),
        serving_runtime="llm-api",
        created_at="2026-11-30T12:00:00+00:00",
    )


def test_a_passed_report_shows_the_verdict_every_attempt_and_every_task(tmp_path: Path) -> None:
    text = render_markdown(_escalated(tmp_path))
    print(text)
    assert (
        "**passed the accuracy gate** with attempt 2 of 2, which published ptq(int8_sq)+qat" in text
    )
    assert "| perplexity (lower is better) | 21.090 | 21.880 | +3.75% | at most +5% |  |" in text
    assert "| cloze (acc, 40 samples) | 0.825 | 0.800 | -0.025 | passed | stderr ±0.060 |" in text
    assert "| 1 | ptq(int8_sq) | 25.950 | +23.00% | 0/1 | 31.0 | failed |" in text
    assert "| 2 | ptq(int8_sq)+qat | 21.880 | +3.75% | 1/1 | 95.5 | passed |" in text
    assert "| weights | 538.0 MB | 270.0 MB | 1.99x smaller |" in text
    assert "## Where the time went (24.2 s)" in text
    assert "| quantization | W8A8_SQ_PER_CHANNEL |" in text and "| served by | llm-api |" in text
    assert "![" not in text  # no plots were drawn, so none is linked
    assert "Not on the ladder" not in text


def test_the_report_says_why_a_rung_is_not_on_the_ladder(tmp_path: Path) -> None:
    facts = _escalated(tmp_path)
    plan = tiny_plan(tmp_path / "model", tmp_path / "store", ())
    evaluation = plan.evaluation.model_copy(update={"ladder_notes": ("qad was not tried: why",)})
    noted = plan.model_copy(update={"evaluation": evaluation})
    assert noted.hash() == plan.hash()
    text = render_markdown(
        ReportFacts.from_plan(noted, facts.metrics, passed=True, attempts=facts.attempts)
    )
    assert "Not on the ladder: qad was not tried: why." in text


def test_a_failed_report_says_nothing_was_published_and_why(tmp_path: Path) -> None:
    facts = _escalated(tmp_path)
    failed = ReportFacts.from_plan(
        tiny_plan(tmp_path / "model", tmp_path / "store", ()),
        Metrics(tasks=[_task("cloze", 0.5, 0.9, False, "AnomalousImprovement")]),
        passed=False,
        attempts=facts.attempts[:1],
        failure="cloze scored 0.900 against 0.500: better than the original beyond its stderr",
    )
    text = render_markdown(failed)
    assert "**nothing was published**." in text
    assert "> cloze scored 0.900 against 0.500" in text
    assert "| **failed** | stderr ±0.060 AnomalousImprovement |" in text


def test_plots_are_written_linked_and_reproducible(tmp_path: Path) -> None:
    facts = _escalated(tmp_path)
    path = write_report(facts, tmp_path / "one")
    text = path.read_text()
    for plot in ("tasks.png", "attempts.png", "stages.png"):
        assert f"]({plot})" in text
        assert (tmp_path / "one" / plot).read_bytes().startswith(PNG)
    write_report(facts, tmp_path / "two")
    for produced in (tmp_path / "one").iterdir():
        assert produced.read_bytes() == (tmp_path / "two" / produced.name).read_bytes()


def test_kiln_run_writes_the_report_when_the_gate_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln_jobs import runner

    plan = tiny_plan(
        tmp_path / "model",
        tmp_path / "store",
        (PTQPlan(format="int4_awq", calibration=CALIBRATION),),
    )
    tried = Attempt(techniques="ptq(int4_awq)", degradation_percent=40.0, passed=False)

    def gate_fails(self: runner.Run) -> runner.RunResult:
        self.attempts.append(tried)
        raise AccuracyGateFailed("perplexity +40.00% is above 5%")

    monkeypatch.setattr(runner.Run, "execute", gate_fails)
    out = io.StringIO()
    with pytest.raises(AccuracyGateFailed):
        local.run_local(plan, tmp_path / "work", out=out)
    report = tmp_path / "work" / "report" / "report.md"
    assert f"report {report}" in out.getvalue()
    text = report.read_text()
    assert "> perplexity +40.00% is above 5%" in text and "| 1 | ptq(int4_awq) |" in text
    assert (tmp_path / "work" / "report" / "attempts.png").read_bytes().startswith(PNG)
