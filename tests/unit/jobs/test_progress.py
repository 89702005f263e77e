"""Progress: the JSON line format the operator parses, throttling, and the progress file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kiln_jobs.manifest import Progress
from kiln_jobs.progress import PROGRESS_KEY, ProgressLog, parse_progress_line

pytestmark = pytest.mark.unit


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line)[PROGRESS_KEY] for line in stream.getvalue().splitlines()]


def test_each_update_is_one_json_line_with_stage_percent_and_message(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = ProgressLog(tmp_path / "progress.json", stream=stream, min_interval=0, bars=False)
    with log.stage("qat") as progress:
        progress(42, "step 21/50")
    lines = _lines(stream)
    assert lines[0] == {"stage": "qat", "percent": 0.0, "message": "qat: started"}
    assert {"stage": "qat", "percent": 42.0, "message": "step 21/50"} in lines
    assert stream.getvalue().splitlines()[1] == (
        '{"kiln_progress":{"stage":"qat","percent":42.0,"message":"step 21/50"}}'
    )


def test_the_progress_file_holds_the_latest_update(tmp_path: Path) -> None:
    path = tmp_path / "status" / "progress.json"
    log = ProgressLog(path, stream=io.StringIO(), min_interval=0, bars=False)
    with log.stage("baseline") as progress:
        progress(50, "window 2/4")
        assert Progress.model_validate_json(path.read_text()).percent == 50.0
        progress(100, "window 4/4")
    latest = Progress.model_validate_json(path.read_text())
    assert (latest.stage, latest.percent) == ("baseline", 100.0)
    assert not list(path.parent.glob(".*partial"))


def test_updates_are_throttled_but_start_end_and_last_are_written() -> None:
    stream = io.StringIO()
    log = ProgressLog(stream=stream, min_interval=3600, bars=False)
    with log.stage("ptq") as progress:
        for step in range(1, 50):
            progress(step, f"sample {step}")
    with log.stage("export") as progress:
        progress(100, "written")
    lines = _lines(stream)
    assert [(line["stage"], line["percent"]) for line in lines] == [
        ("ptq", 0.0),
        ("ptq", 49.0),  # the last update before the stage closed
        ("export", 0.0),
        ("export", 100.0),
    ]


def test_percent_is_clamped_to_the_contract_range() -> None:
    stream = io.StringIO()
    with ProgressLog(stream=stream, min_interval=0, bars=False).stage("x") as progress:
        progress(140, "over")
        progress(-3, "under")
    percents = [line["percent"] for line in _lines(stream)]
    assert percents[1:] == [100.0, 0.0]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"kiln_progress": {"stage": "qat", "percent": 5, "message": "m"}}', ("qat", 5.0)),
        ('  {"kiln_progress":{"stage":"load","percent":100}}\n', ("load", 100.0)),
        ("Inserted 56 quantizers", None),
        ('{"other": 1}', None),
        ('{"kiln_progress": {"stage": "qat", "percent": 400}}', None),
        ("{not json kiln_progress", None),
        # A progress bar's carriage-return output before the line, as in a `2>&1` log.
        (
            'qat:  10%|███ | 00:00 , step 6\r{"kiln_progress":{"stage":"qat","percent":10}}',
            ("qat", 10.0),
        ),
    ],
)
def test_parse_progress_line(line: str, expected: tuple[str, float] | None) -> None:
    parsed = parse_progress_line(line)
    assert (None if parsed is None else (parsed.stage, parsed.percent)) == expected


def test_overall_percent_is_weighted_and_never_goes_back() -> None:
    import io

    from kiln_jobs.progress import ProgressLog

    log = ProgressLog(stream=io.StringIO(), min_interval=0.0, bars=False)
    log.expect([("load", 10.0), ("ptq(fp8)", 30.0), ("evaluate", 10.0)])
    with log.stage("load") as progress:
        progress(50.0)
        assert log.latest is not None and log.latest.overall == 10.0
    with log.stage("ptq(fp8)") as progress:
        progress(50.0)
        assert log.latest.overall == 50.0
    # An escalation attempt the plan did not announce stretches the total, never the past.
    with log.stage("qat#2") as progress:
        progress(0.0)
        assert log.latest.overall >= 80.0
    with log.stage("evaluate") as progress:
        progress(100.0)
    assert log.latest.overall <= 100.0


def test_stage_weights_follow_the_plan() -> None:
    from kiln_jobs.plan import (
        DataRef,
        EvaluationPlan,
        ModelRef,
        OutputPlan,
        Plan,
        PlanMetadata,
        PTQPlan,
        QATPlan,
        TrainingPlan,
    )
    from kiln_jobs.runner import stage_weights

    data = DataRef(samples=2, seq_length=8)
    plan = Plan(
        metadata=PlanMetadata(name="p"), model=ModelRef(source="file:///m"),
        techniques=(PTQPlan(format="fp8", calibration=data),
                    QATPlan(training=TrainingPlan(steps=1, learning_rate=1e-5, batch_size=1,
                                                  data=data, checkpoint_every=1))),
        evaluation=EvaluationPlan(data=data, stride=8), output=OutputPlan(store="file:///s"),
    )  # fmt: skip
    names = [name for name, _ in stage_weights(plan)]
    assert names == [
        "preflight",
        "load",
        "baseline",
        "ptq(fp8)",
        "qat",
        "evaluate",
        "export",
        "verify-export",
        "engine",
        "repository",
        "publish",
    ]
