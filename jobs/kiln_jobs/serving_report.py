"""The serving report `kiln run` writes after it served the published model: `serving.md` and
`serving.png` under the run's `report/` directory.

What the published report cannot hold, because it is measured after publishing: each task scored
again on the served endpoint against its in-process score (`kiln_jobs.served_eval`), and the
served model's latency and throughput per concurrency level beside the original's
(`kiln_jobs.serving.loadtest`, `kiln_jobs.speed_gate`), with a plot of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln_jobs.report import markdown_row, new_figure, save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from kiln_jobs.served_eval import ServedTaskResult
    from kiln_jobs.serving.loadtest import LevelStats
    from kiln_jobs.speed_gate import SpeedResult

__all__ = ["SERVING_REPORT_FILE", "ServingFacts", "render_serving_markdown", "write_serving_report"]

SERVING_REPORT_FILE = "serving.md"
_PLOT = "serving.png"
_SPEED_COLUMNS = (
    "clients",
    "TTFT p50 / p95",
    "ITL p50",
    "tokens/s",
    "requests/s",
    "original tokens/s",
    "speedup",
)


@dataclass(frozen=True)
class ServingFacts:
    """What serving the published model measured."""

    title: str
    runtime: str
    served_tasks: Sequence[ServedTaskResult] = ()
    performance: Sequence[LevelStats] = ()
    baseline: Sequence[LevelStats] = ()
    speed: Sequence[SpeedResult] = ()

    def measured(self) -> bool:
        """Whether there is anything to report."""
        return bool(self.served_tasks or self.performance)


def write_serving_report(facts: ServingFacts, directory: Path, *, plots: bool = True) -> Path:
    """Write `serving.md` (and `serving.png` when there are speed numbers) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn = plots and bool(facts.performance)
    if drawn:
        save_png(_speed_figure(facts), directory / _PLOT)
    path = directory / SERVING_REPORT_FILE
    path.write_text(render_serving_markdown(facts, plotted=drawn))
    return path


def render_serving_markdown(facts: ServingFacts, *, plotted: bool = False) -> str:
    """The serving report as Markdown."""
    parts = [f"# Serving {facts.title}", "", f"Served by the `{facts.runtime}` runtime."]
    if facts.served_tasks:
        parts += ["", _tasks(facts.served_tasks)]
    if facts.performance:
        parts += ["", _speed(facts, plotted)]
    return "\n".join(parts) + "\n"


def _tasks(results: Sequence[ServedTaskResult]) -> str:
    lines = [
        "## Tasks on the served model",
        "",
        "Each task scored again through the OpenAI-compatible endpoint, on the same samples as "
        "in process.",
        "",
        markdown_row("task", "metric", "in process", "served", "samples", "verdict"),
        markdown_row(*["---"] * 6),
    ]
    for r in results:
        if r.served is None:
            verdict = f"not scored: {r.skipped}"
        else:
            verdict = "passed" if r.passed else "**ServingRegression**"
        served = f"{r.served:.3f}" if r.served is not None else ""
        lines.append(
            markdown_row(r.name, r.metric, f"{r.in_process:.3f}", served, str(r.samples), verdict)
        )
    return "\n".join(lines)


def _speed(facts: ServingFacts, plotted: bool) -> str:
    original = {level.concurrency: level for level in facts.baseline}
    speedups = {result.concurrency: result for result in facts.speed}
    lines = [
        "## Speed",
        "",
        "Per level, a closed loop of that many clients streaming greedy requests over Triton's "
        "HTTP generate endpoint; tokens per second count every client's output over the level's "
        "wall time.",
        "",
        markdown_row(*_SPEED_COLUMNS),
        markdown_row(*["---"] * 7),
    ]
    for level in facts.performance:
        before = original.get(level.concurrency)
        result = speedups.get(level.concurrency)
        speedup = ""
        if result is not None:
            speedup = f"{result.speedup:.2f}x" + ("" if result.passed else " **below minSpeedup**")
        itl = f"{level.itl_p50 * 1000:.1f} ms" if level.itl_p50 is not None else ""
        lines.append(
            markdown_row(
                str(level.concurrency),
                f"{level.ttft_p50:.3f} / {level.ttft_p95:.3f} s",
                itl,
                f"{level.output_tokens_per_second:.1f}",
                f"{level.requests_per_second:.2f}",
                f"{before.output_tokens_per_second:.1f}" if before else "",
                speedup,
            )
        )
    if plotted:
        lines += ["", f"![throughput and time to first token per level]({_PLOT})"]
    return "\n".join(lines)


def _speed_figure(facts: ServingFacts) -> Figure:
    figure = new_figure(8.0, 3.2)
    throughput, first_token = figure.subplots(1, 2)
    for name, levels, style in (
        ("optimized", facts.performance, "o-"),
        ("original", facts.baseline, "s--"),
    ):
        if not levels:
            continue
        clients = [level.concurrency for level in levels]
        throughput.plot(clients, [lv.output_tokens_per_second for lv in levels], style, label=name)
        first_token.plot(clients, [lv.ttft_p50 for lv in levels], style, label=name)
    throughput.set(xlabel="concurrent clients", ylabel="output tokens / s")
    first_token.set(xlabel="concurrent clients", ylabel="time to first token p50 (s)")
    for axes in (throughput, first_token):
        axes.set_xscale("log", base=2)
        axes.grid(alpha=0.3)
        axes.legend()
    return figure
