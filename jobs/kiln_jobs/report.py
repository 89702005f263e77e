"""The run report: `report/report.md` and its plots, published beside the manifest.

What a person reads to decide whether to trust the optimized model: the gate's verdict, every
task baseline against optimized with its standard error, every rung of the escalation ladder
with its score and cost, sizes, where the time went, and what produced the checkpoint.

The same renderer serves three readers: the runner (a published plan, with plots), `kiln run`
when the gate failed (nothing is published, the report says why), and `kiln report` for a
resource whose store it cannot read (from the resource's status, without plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kiln_jobs.contract import REPORT_FILE
from kiln_jobs.manifest import Attempt, CheckpointInfo, Manifest, Metrics, StageResult
from kiln_jobs.plan import Plan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ReportFacts",
    "markdown_row",
    "new_figure",
    "render_markdown",
    "save_png",
    "write_report",
]

_TASKS_PLOT = "tasks.png"
_LADDER_PLOT = "attempts.png"
_STAGES_PLOT = "stages.png"


@dataclass(frozen=True)
class ReportFacts:
    """Everything a report shows, whichever record it comes from."""

    title: str
    plan_hash: str
    model: str
    techniques: str
    metrics: Metrics
    passed: bool
    attempts: Sequence[Attempt] = ()
    stages: Sequence[StageResult] = ()
    max_degradation_percent: float | None = None
    checkpoint: CheckpointInfo | None = None
    serving_runtime: str | None = None
    created_at: str | None = None
    # Why the run ended without publishing, when it did.
    failure: str | None = None
    notes: Sequence[str] = field(default_factory=tuple)
    # Rungs the ladder left off, each with why (EvaluationPlan.ladder_notes).
    ladder_notes: Sequence[str] = field(default_factory=tuple)

    @property
    def published_stack(self) -> str:
        """The stack whose model was published: the asked one unless escalation went further."""
        passing = next((a.techniques for a in self.attempts if a.passed), None)
        return passing or self.techniques

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ReportFacts:
        """A published plan: it passed the gate."""
        return cls.from_plan(
            manifest.plan,
            manifest.metrics,
            passed=True,
            attempts=manifest.attempts,
            stages=manifest.stages,
            checkpoint=manifest.checkpoint,
            serving_runtime=manifest.serving_runtime,
            created_at=manifest.created_at,
        )

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        metrics: Metrics,
        *,
        passed: bool,
        attempts: Sequence[Attempt] = (),
        stages: Sequence[StageResult] = (),
        checkpoint: CheckpointInfo | None = None,
        serving_runtime: str | None = None,
        created_at: str | None = None,
        failure: str | None = None,
    ) -> ReportFacts:
        """The facts of a run of `plan`, published or not."""
        where = plan.metadata.namespace
        return cls(
            title=f"{where}/{plan.metadata.name}" if where else plan.metadata.name,
            plan_hash=plan.hash(),
            model=plan.model.source,
            techniques=plan.summary(),
            metrics=metrics,
            passed=passed,
            attempts=attempts,
            stages=stages,
            max_degradation_percent=plan.evaluation.max_degradation_percent,
            checkpoint=checkpoint,
            serving_runtime=serving_runtime,
            created_at=created_at,
            failure=failure,
            ladder_notes=plan.evaluation.ladder_notes,
        )


def write_report(facts: ReportFacts, directory: Path, *, plots: bool = True) -> Path:
    """Write `report.md` (and its PNG plots unless `plots` is False) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn = _draw_plots(facts, directory) if plots else set()
    path = directory / REPORT_FILE
    path.write_text(render_markdown(facts, drawn))
    return path


# -- Markdown -------------------------------------------------------------------------------


def render_markdown(facts: ReportFacts, plots: set[str] | frozenset[str] = frozenset()) -> str:
    """The report as Markdown; `plots` names the PNG files beside it that it may show."""
    sections = [
        _header(facts),
        _accuracy(facts, plots),
        _ladder(facts, plots),
        _size(facts.metrics),
        _time(facts.stages, plots),
        _provenance(facts),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(facts: ReportFacts) -> str:
    if facts.passed:
        passing = next((i for i, a in enumerate(facts.attempts, 1) if a.passed), None)
        where = f" with attempt {passing} of {len(facts.attempts)}" if passing else ""
        verdict = f"**passed the accuracy gate**{where}"
        if facts.published_stack != facts.techniques:
            verdict += f", which published {facts.published_stack}"
    elif facts.failure:
        verdict = "**nothing was published**"
    else:
        verdict = "**not published yet**"
    lines = [
        f"# Kiln report: {facts.title}",
        "",
        f"Plan `{facts.plan_hash}`, {facts.techniques} on `{facts.model}`: {verdict}.",
    ]
    if facts.failure:
        lines += ["", f"> {facts.failure}"]
    lines += [f"\n> {note}" for note in facts.notes]
    return "\n".join(lines)


def _accuracy(facts: ReportFacts, plots: set[str] | frozenset[str]) -> str:
    metrics = facts.metrics
    rows = []
    if metrics.perplexity is not None and metrics.baseline_perplexity is not None:
        gate = facts.max_degradation_percent
        rows.append(
            markdown_row(
                "perplexity (lower is better)",
                f"{metrics.baseline_perplexity:.3f}",
                f"{metrics.perplexity:.3f}",
                _signed(metrics.degradation_percent, "%"),
                f"at most {gate:+g}%" if gate is not None else "none",
                "",
            )
        )
    if metrics.exported_perplexity is not None:
        rows.append(
            markdown_row(
                "perplexity of the published checkpoint",
                "",
                f"{metrics.exported_perplexity:.3f}",
                "",
                "",
                "reloaded with its exported scales",
            )
        )
    for task in metrics.tasks or []:
        rows.append(
            markdown_row(
                f"{task.name} ({task.metric}, {task.samples} samples)",
                f"{task.baseline:.3f}",
                f"{task.optimized:.3f}",
                _signed(task.optimized - task.baseline, ""),
                "passed" if task.passed else "**failed**",
                " ".join(
                    part
                    for part in (
                        f"stderr ±{task.stderr:.3f}" if task.stderr is not None else "",
                        task.reason or "",
                    )
                    if part
                ),
            )
        )
    heading = (
        "## Accuracy"
        if facts.passed or len(facts.attempts) < 2
        else ("## Accuracy of the last attempt")
    )
    if not rows:
        return f"{heading}\n\nNothing was measured."
    table = [
        heading,
        "",
        markdown_row("metric", "baseline", "optimized", "change", "gate", "note"),
        markdown_row(*["---"] * 6),
        *rows,
    ]
    if _TASKS_PLOT in plots:
        table += ["", f"![tasks, baseline against optimized]({_TASKS_PLOT})"]
    return "\n".join(table)


def _ladder(facts: ReportFacts, plots: set[str] | frozenset[str]) -> str:
    if not facts.attempts:
        return ""
    lines = [
        "## Attempts",
        "",
        "Each stack the gate judged, in the order tried (escalation starts each from the "
        "original model).",
        "",
        markdown_row(
            "#", "techniques", "perplexity", "change", "tasks passed", "seconds", "verdict"
        ),
        markdown_row(*["---"] * 7),
    ]
    for number, attempt in enumerate(facts.attempts, 1):
        tasks = attempt.tasks or []
        lines.append(
            markdown_row(
                str(number),
                attempt.techniques,
                f"{attempt.perplexity:.3f}" if attempt.perplexity is not None else "",
                _signed(attempt.degradation_percent, "%"),
                f"{sum(t.passed for t in tasks)}/{len(tasks)}" if tasks else "",
                f"{attempt.seconds:.1f}" if attempt.seconds is not None else "",
                "passed" if attempt.passed else "failed",
            )
        )
    lines += [f"\nNot on the ladder: {note}." for note in facts.ladder_notes]
    if _LADDER_PLOT in plots:
        lines += ["", f"![perplexity change per attempt]({_LADDER_PLOT})"]
    return "\n".join(lines)


def _size(metrics: Metrics) -> str:
    rows = []
    base, size = metrics.baseline_size_bytes, metrics.size_bytes
    if base and size:
        rows.append(markdown_row("weights", _mb(base), _mb(size), f"{base / size:.2f}x smaller"))
    if metrics.params_before and metrics.params_after:
        before, after = metrics.params_before, metrics.params_after
        rows.append(
            markdown_row("parameters", f"{before:,}", f"{after:,}", f"{after / before:.1%} kept")
        )
    if metrics.acceptance_length is not None:
        rows.append(
            markdown_row("draft tokens accepted per step", "", f"{metrics.acceptance_length:.2f}")
        )
    if not rows:
        return ""
    return "\n".join(
        [
            "## Size",
            "",
            markdown_row("", "baseline", "optimized", ""),
            markdown_row(*["---"] * 4),
            *rows,
        ]
    )


def _time(stages: Sequence[StageResult], plots: set[str] | frozenset[str]) -> str:
    if not stages:
        return ""
    total = sum(s.seconds or 0.0 for s in stages)
    lines = [
        f"## Where the time went ({total:.1f} s)",
        "",
        markdown_row("stage", "state", "seconds", "note"),
        markdown_row(*["---"] * 4),
    ]
    for stage in stages:
        seconds = f"{stage.seconds:.1f}" if stage.seconds is not None else ""
        measured = ", ".join(f"{key} {value}" for key, value in stage.metrics.items())
        note = "; ".join(part for part in (stage.message, measured) if part)
        lines.append(markdown_row(stage.name, stage.state, seconds, note))
    if _STAGES_PLOT in plots:
        lines += ["", f"![seconds per stage]({_STAGES_PLOT})"]
    return "\n".join(lines)


def _provenance(facts: ReportFacts) -> str:
    rows = [markdown_row("model", f"`{facts.model}`"), markdown_row("plan", f"`{facts.plan_hash}`")]
    if facts.created_at:
        rows.append(markdown_row("published", facts.created_at))
    checkpoint = facts.checkpoint
    if checkpoint is not None:
        rows.append(markdown_row("quantization", checkpoint.quant_algo or "none"))
        if checkpoint.kv_cache_quant_algo:
            rows.append(markdown_row("KV cache", checkpoint.kv_cache_quant_algo))
        if checkpoint.calibration_digest:
            rows.append(markdown_row("calibration data", f"`{checkpoint.calibration_digest}`"))
        tools = ", ".join(f"{name} {version}" for name, version in checkpoint.tools.items())
        if tools:
            rows.append(markdown_row("tools", tools))
    if facts.serving_runtime:
        rows.append(markdown_row("served by", facts.serving_runtime))
    return "\n".join(["## Provenance", "", markdown_row("", ""), markdown_row("---", "---"), *rows])


def markdown_row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _signed(value: float | None, unit: str) -> str:
    return "" if value is None else f"{value:+.2f}{unit}" if unit else f"{value:+.3f}"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# -- plots ----------------------------------------------------------------------------------


def _draw_plots(facts: ReportFacts, directory: Path) -> set[str]:
    """The PNGs that say more than the tables: tasks with error bars, the ladder, stage time."""
    drawn = set()
    if facts.metrics.tasks:
        save_png(_tasks_figure(facts), directory / _TASKS_PLOT)
        drawn.add(_TASKS_PLOT)
    if any(a.degradation_percent is not None for a in facts.attempts):
        save_png(_ladder_figure(facts), directory / _LADDER_PLOT)
        drawn.add(_LADDER_PLOT)
    if any(s.seconds for s in facts.stages):
        save_png(_stages_figure(facts.stages), directory / _STAGES_PLOT)
        drawn.add(_STAGES_PLOT)
    return drawn


def new_figure(width: float, height: float) -> Figure:
    # A bare Figure on the Agg canvas: no pyplot state, safe in any thread, no display needed.
    from matplotlib.figure import Figure as AggFigure

    return AggFigure(figsize=(width, height), dpi=100, layout="constrained")


def save_png(figure: Figure, path: Path) -> None:
    # No creation time or version in the file: the same numbers give the same bytes.
    figure.savefig(path, format="png", metadata={"Software": None})


def _tasks_figure(facts: ReportFacts) -> Figure:
    tasks = facts.metrics.tasks or []
    figure = new_figure(max(4.0, 1.6 * len(tasks) + 1.5), 3.2)
    axes = figure.subplots()
    positions = range(len(tasks))
    errors = [t.stderr or 0.0 for t in tasks]
    width = 0.38
    axes.bar(
        [p - width / 2 for p in positions],
        [t.baseline for t in tasks],
        width,
        yerr=errors,
        capsize=4,
        label="baseline",
        color="#9e9e9e",
    )
    axes.bar(
        [p + width / 2 for p in positions],
        [t.optimized for t in tasks],
        width,
        yerr=errors,
        capsize=4,
        label=facts.published_stack,
        color=["#2e7d32" if t.passed else "#c62828" for t in tasks],
    )
    axes.set_xticks(list(positions), [f"{t.name}\n({t.metric})" for t in tasks])
    axes.set_ylabel("score (±1 standard error)")
    axes.set_title("Task scores (red: below its threshold)")
    figure.legend(loc="outside lower center", ncol=2)
    return figure


def _ladder_figure(facts: ReportFacts) -> Figure:
    attempts = [a for a in facts.attempts if a.degradation_percent is not None]
    figure = new_figure(max(4.0, 1.4 * len(attempts) + 2.0), 3.2)
    axes = figure.subplots()
    axes.bar(
        [a.techniques for a in attempts],
        [a.degradation_percent or 0.0 for a in attempts],
        color=["#2e7d32" if a.passed else "#c62828" for a in attempts],
    )
    if facts.max_degradation_percent is not None:
        axes.axhline(facts.max_degradation_percent, linestyle="--", color="black", label="gate")
        axes.legend(loc="upper right")
    axes.set_ylabel("perplexity change (%)")
    axes.set_title("Attempts in the order tried (green: passed)")
    axes.tick_params(axis="x", labelrotation=15)
    return figure


def _stages_figure(stages: Sequence[StageResult]) -> Figure:
    timed = [s for s in stages if s.seconds]
    figure = new_figure(6.0, 0.35 * len(timed) + 1.2)
    axes = figure.subplots()
    axes.barh([s.name for s in timed], [s.seconds or 0.0 for s in timed], color="#1565c0")
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("Where the time went")
    return figure
