"""The serving report `kiln run` writes: served tasks, speed against the original, its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_jobs.served_eval import NOT_SCORED_WHEN_SERVED, ServedTaskResult
from kiln_jobs.serving.loadtest import LevelStats
from kiln_jobs.serving_report import ServingFacts, render_serving_markdown, write_serving_report
from kiln_jobs.speed_gate import SpeedResult

pytestmark = pytest.mark.unit


def _facts() -> ServingFacts:
    return ServingFacts(
        title="smollm2",
        runtime="python",
        served_tasks=[
            ServedTaskResult("words", "exact_match", 0.175, 0.15, 40, True),
            ServedTaskResult("cloze", "acc", 0.825, None, 0, True, NOT_SCORED_WHEN_SERVED),
        ],
        performance=[
            LevelStats(1, 8, 4.0, 0.21, 0.38, 0.0482, 61.5, 2.0),
            LevelStats(4, 8, 2.0, 0.30, 0.52, None, 120.0, 4.0),
        ],
        baseline=[
            LevelStats(1, 8, 8.0, 0.4, 0.5, 0.09, 30.2, 1.0),
            LevelStats(4, 8, 4.0, 0.5, 0.7, 0.1, 100.0, 2.0),
        ],
        speed=[SpeedResult(1, 30.2, 61.5, True), SpeedResult(4, 100.0, 120.0, False)],
    )


def test_the_report_lists_each_served_task_and_each_level_against_the_original() -> None:
    text = render_serving_markdown(_facts())
    print(text)
    assert "| words | exact_match | 0.175 | 0.150 | 40 | passed |" in text
    assert f"| cloze | acc | 0.825 |  | 0 | not scored: {NOT_SCORED_WHEN_SERVED} |" in text
    assert "| 1 | 0.210 / 0.380 s | 48.2 ms | 61.5 | 2.00 | 30.2 | 2.04x |" in text
    assert "| 4 | 0.300 / 0.520 s |  | 120.0 | 4.00 | 100.0 | 1.20x **below minSpeedup** |" in text
    assert "![" not in text


def test_the_plot_is_written_and_linked(tmp_path: Path) -> None:
    path = write_serving_report(_facts(), tmp_path)
    assert path == tmp_path / "serving.md"
    assert "![throughput and time to first token per level](serving.png)" in path.read_text()
    assert (tmp_path / "serving.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    tasks_only = ServingFacts("m", "python", served_tasks=_facts().served_tasks)
    assert tasks_only.measured() and not ServingFacts("m", "python").measured()
    assert "## Speed" not in render_serving_markdown(tasks_only)
