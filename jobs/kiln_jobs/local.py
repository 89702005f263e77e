"""`kiln run`: the whole flow on one machine, no cluster.

`run_local` runs the Plan with the job runner (the same code as the Kubernetes Job), serves the
published Triton repository with the `tritonserver` from the `nvidia-pytriton` wheel and the
OpenAI-compatible endpoint beside it, sends a smoke prompt over HTTP, gRPC and as a stream, checks
the served continuation against the checkpoint's own, scores the generative tasks on the served
endpoint and measures latency and throughput over a concurrency ladder when the Plan asks
(`kiln_jobs.served_eval`, `kiln_jobs.serving.loadtest`), and prints a short plain-text report.
Every failure a user can act on is a `KilnJobError` with a one-line message; the CLI prints it
and exits with its code.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from kiln_jobs import served_eval, speed_gate
from kiln_jobs.contract import REPORT_DIR, TRITON_DIR
from kiln_jobs.errors import AccuracyGateFailed, UserError
from kiln_jobs.manifest import Manifest, Metrics
from kiln_jobs.plan import EvaluationPlan, PerformancePlan, Plan
from kiln_jobs.report import ReportFacts, write_report
from kiln_jobs.serving.loadtest import LevelStats, measure_performance
from kiln_jobs.serving_report import ServingFacts, write_serving_report

if TYPE_CHECKING:
    from kiln_jobs.runner import RunResult
    from kiln_jobs.serving.tritonserver import TritonServer

__all__ = [
    "SMOKE_TOKENS",
    "LocalReport",
    "ServeReport",
    "checkpoint_continuation",
    "run_local",
    "serve_published",
]

DEFAULT_PROMPT = "The GNU General Public License is"
# Enough tokens for a sentence, few enough for a CPU to answer in seconds.
SMOKE_TOKENS = 24


@dataclass
class ServeReport:
    """What serving the published repository showed."""

    runtime: str
    model: str
    http_url: str = ""
    grpc_url: str = ""
    metrics_url: str = ""
    openai_url: str = ""
    ready_seconds: float = 0.0
    prompt: str = ""
    text: str = ""
    http_seconds: float = 0.0
    grpc_seconds: float = 0.0
    output_tokens: int | None = None
    # Responses a streamed request arrived in.
    stream_chunks: int = 0
    protocols_agree: bool = False
    # None when not checked (the runtime is not Kiln's CPU runtime).
    matches_checkpoint: bool | None = None
    log_path: str = ""
    stopped: bool = True
    # The Plan's tasks scored again on the served endpoint (evaluation.served).
    served_tasks: list[served_eval.ServedTaskResult] = field(default_factory=list)
    # Latency and throughput per concurrency level (evaluation.performance), of the served
    # model and of the original served the same way, and the speedup per level.
    performance: list[LevelStats] = field(default_factory=list)
    baseline_performance: list[LevelStats] = field(default_factory=list)
    speed: list[speed_gate.SpeedResult] = field(default_factory=list)


@dataclass
class LocalReport:
    """What `kiln run` did."""

    plan_hash: str
    publish_dir: Path
    manifest: Manifest
    reused: bool = False
    serve: ServeReport | None = None
    skipped_serving: str | None = None
    # The serving report (served tasks, speed), when serving measured something.
    serving_report: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def serve_published(
    manifest: Manifest,
    publish_dir: Path,
    *,
    prompt: str = DEFAULT_PROMPT,
    keep_serving: bool = False,
    log_path: Path | None = None,
    work_dir: Path | None = None,
    on_ready: Callable[[ServeReport], None] | None = None,
    out: TextIO = sys.stdout,
) -> ServeReport:
    """Serve a published plan with a local Triton and check it answers.

    Args:
        manifest: The plan's manifest (says the runtime and where the repository is).
        publish_dir: The plan-hash directory.
        prompt: The smoke prompt.
        keep_serving: Block, serving, until interrupted (Ctrl-C or SIGTERM).
        log_path: Where the server log goes.
        work_dir: Scratch space: task sources for the served evaluation, the original model's
            dense checkpoint for the speed comparison (default: beside the published plan).
        on_ready: Called with the report once the checks are done, before serving on.
        out: Where the serving notices go (the report is the caller's).

    Raises:
        ServingRegression: The served model scored below the published one by more than
            `evaluation.served.max_drop` (after the report is handed to `on_ready`).
        SpeedGateFailed: It is slower than `evaluation.performance.min_speedup` allows (idem).
        KilnJobError: The runtime cannot be served here, Triton failed, or a request failed.
    """
    from kiln_jobs.serving.openai_api import OpenAIServer
    from kiln_jobs.serving.tritonserver import TritonServer

    runtime, repository = _servable(manifest, publish_dir)
    work_dir = work_dir or publish_dir.parent / ".work"
    evaluation = manifest.plan.evaluation
    report = ServeReport(runtime=runtime, model=manifest.plan.serving.model_name, prompt=prompt)
    if evaluation.performance is not None and evaluation.performance.baseline:
        report.baseline_performance = _measure_original(
            manifest.plan, evaluation.performance, work_dir, log_path
        )
    checkpoint = publish_dir / manifest.checkpoint_dir
    with TritonServer(repository, log_path=log_path) as server:
        _smoke_test(server, report)
        if runtime == "python":
            report.matches_checkpoint = checkpoint_continuation(checkpoint, prompt) == report.text
        openai = OpenAIServer(server.http_url, report.model, checkpoint, port=0).start()
        try:
            report.openai_url = openai.url
            _measure_served(manifest, checkpoint, work_dir, report)
            if on_ready is not None:
                on_ready(report)
            _check_serving_gates(evaluation, report)
            if keep_serving:
                _serve_until_interrupted(server, report, out)
        finally:
            openai.stop()
    report.stopped = server.pid is None
    return report


def _servable(manifest: Manifest, publish_dir: Path) -> tuple[str, Path]:
    """The runtime and the Triton repository to serve, if this machine can serve them."""
    runtime = manifest.serving_runtime or "python"
    problem = _serve_problem(runtime)
    if problem is not None:
        raise UserError(f"serve: runtime {runtime}: {problem}")
    if manifest.triton_repository is None:
        raise UserError("serve: the manifest names no Triton repository")
    return runtime, publish_dir / manifest.triton_repository


def _serve_problem(runtime: str) -> str | None:
    from kiln_jobs.serving.engine import llm_api_unavailable

    if runtime == "tensorrtllm-engine":
        return "the local tritonserver has no TensorRT-LLM backend; serve engines in the cluster"
    if runtime == "tensorrtllm-pytorch":
        return llm_api_unavailable()
    return None


def _smoke_test(server: TritonServer, report: ServeReport) -> None:
    """The smoke prompt over HTTP, gRPC and as a stream, and whether all three say the same."""
    from kiln_jobs.serving.client import generate

    report.http_url, report.grpc_url = server.http_url, server.grpc_url
    report.metrics_url, report.log_path = server.metrics_url, str(server.log_path)
    report.ready_seconds = server.ready_seconds or 0.0
    model, prompt = report.model, report.prompt
    http = generate(server.http_url, model, prompt, max_tokens=SMOKE_TOKENS)
    grpc = generate(server.grpc_url, model, prompt, max_tokens=SMOKE_TOKENS, protocol="grpc")
    streamed = generate(server.http_url, model, prompt, max_tokens=SMOKE_TOKENS, streaming=True)
    report.text, report.output_tokens = http.text, http.output_tokens
    report.http_seconds, report.grpc_seconds = http.seconds, grpc.seconds
    report.stream_chunks = len(streamed.chunks)
    report.protocols_agree = http.text == grpc.text == streamed.text


def checkpoint_continuation(checkpoint: Path, prompt: str, max_tokens: int = SMOKE_TOKENS) -> str:
    """The checkpoint's greedy continuation, computed in this process: what any runtime serving
    it must answer."""
    from transformers import AutoTokenizer

    from kiln_jobs.serving.checkpoint import load_checkpoint
    from kiln_jobs.serving.generation import SamplingParams, generate

    model = load_checkpoint(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return generate(model, tokenizer, prompt, SamplingParams(max_tokens=max_tokens)).text


def _measure_served(
    manifest: Manifest, checkpoint: Path, work_dir: Path, report: ServeReport
) -> None:
    """Score the tasks on the served endpoint and measure its speed, as the Plan asks."""
    report.served_tasks = served_eval.evaluate_served(
        manifest, report.openai_url, checkpoint, work_dir / "cache"
    )
    if (performance := manifest.plan.evaluation.performance) is not None:
        report.performance = measure_performance(report.http_url, report.model, performance)
        if report.baseline_performance:
            report.speed = speed_gate.compare(
                report.baseline_performance, report.performance, performance
            )


def _measure_original(
    plan: Plan, performance: PerformancePlan, work_dir: Path, log_path: Path | None
) -> list[LevelStats]:
    """Serve the original model alone, measure it, stop it."""
    from kiln_jobs.serving.tritonserver import TritonServer

    root = speed_gate.baseline_repository(plan, work_dir)
    log = log_path.with_name(f"baseline-{log_path.name}") if log_path else None
    with TritonServer(root / TRITON_DIR, log_path=log) as server:
        return measure_performance(server.http_url, plan.serving.model_name, performance)


def _check_serving_gates(evaluation: EvaluationPlan, report: ServeReport) -> None:
    if evaluation.served is not None and not all(r.passed for r in report.served_tasks):
        raise served_eval.regression(report.served_tasks, evaluation.served)
    if evaluation.performance is not None and not all(r.passed for r in report.speed):
        raise speed_gate.failure(report.speed, evaluation.performance)


def _serve_until_interrupted(server: object, report: ServeReport, out: TextIO) -> None:
    print(f"triton: http://{report.http_url} (gRPC {report.grpc_url})", file=out, flush=True)
    print(f"openai: {report.openai_url}", file=out, flush=True)
    print(f"serving model '{report.model}'; Ctrl-C to stop", file=out, flush=True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while getattr(server, "pid", None) is not None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping", file=out, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(
    plan: Plan,
    workdir: Path,
    *,
    serve: bool = True,
    keep_serving: bool = False,
    prompt: str = DEFAULT_PROMPT,
    out: TextIO = sys.stdout,
) -> LocalReport:
    """Run `plan` on this machine, serve the result with a local Triton, print a report.

    Args:
        plan: The compiled Plan (its store must be a local `file://` directory).
        workdir: Scratch space for the runner and the server log.
        serve: Start Triton and send the smoke requests.
        keep_serving: Keep Triton up after the report until interrupted.
        prompt: The smoke prompt.
        out: Where the report goes.

    Raises:
        KilnJobError: Any failure the user can act on (the CLI prints its one-line message).
    """
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    result = _optimize(plan, workdir, out)
    if result.published_dir is None:
        raise UserError(
            f"kiln run serves from a local store; {result.published_uri} is remote "
            "(use a file:// store)"
        )
    report = LocalReport(
        plan_hash=result.manifest.plan_hash,
        publish_dir=result.published_dir,
        manifest=result.manifest,
        reused=result.reused,
    )
    runtime = result.manifest.serving_runtime or "python"
    if serve and (problem := _serve_problem(runtime)) is not None:
        report.skipped_serving = f"runtime {runtime}: {problem}"
    elif serve:

        def print_report(serving: ServeReport) -> None:
            report.serve = serving
            report.serving_report = _write_serving_report(plan, serving, workdir)
            report.seconds = time.monotonic() - started
            print(format_report(report), file=out, flush=True)

        report.serve = serve_published(
            result.manifest,
            result.published_dir,
            prompt=prompt,
            keep_serving=keep_serving,
            log_path=workdir / "tritonserver.log",
            work_dir=workdir,
            on_ready=print_report,
            out=out,
        )
        print(f"triton stopped (log {report.serve.log_path})", file=out, flush=True)
        return report
    else:
        report.skipped_serving = "--no-serve"
    report.seconds = time.monotonic() - started
    print(format_report(report), file=out, flush=True)
    return report


def _write_serving_report(plan: Plan, serve: ServeReport, workdir: Path) -> Path | None:
    facts = ServingFacts(
        title=plan.metadata.name,
        runtime=serve.runtime,
        served_tasks=serve.served_tasks,
        performance=serve.performance,
        baseline=serve.baseline_performance,
        speed=serve.speed,
    )
    return write_serving_report(facts, workdir / REPORT_DIR) if facts.measured() else None


def _optimize(plan: Plan, workdir: Path, out: TextIO) -> RunResult:
    """Run the plan; when the gate fails, write the report of what was tried before raising."""
    from kiln_jobs.progress import ProgressLog
    from kiln_jobs.runner import Run

    run = Run(plan, workdir, ProgressLog(None, lines=False))
    try:
        return run.execute()
    except AccuracyGateFailed as error:
        record = run.job_result(error)
        facts = ReportFacts.from_plan(
            plan,
            record.metrics or Metrics(),
            passed=False,
            attempts=record.attempts,
            stages=record.stages,
            failure=error.message,
        )
        path = write_report(facts, workdir / REPORT_DIR)
        print(f"kiln run: the accuracy gate failed; report {path}", file=out, flush=True)
        raise


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value / 1e6:.1f} MB"


def _perplexity_line(manifest: Manifest) -> str:
    metrics = manifest.metrics
    if metrics.perplexity is None:
        return "not measured"
    gate = manifest.plan.evaluation.max_degradation_percent
    change = (
        f"{metrics.degradation_percent:+.1f}%" if metrics.degradation_percent is not None else ""
    )
    gate_text = f", gate {gate:g}%" if gate is not None else ""
    return f"{metrics.baseline_perplexity:.2f} -> {metrics.perplexity:.2f} ({change}{gate_text})"


def _stage_line(manifest: Manifest) -> str:
    parts = [f"{s.name} {s.seconds:.1f}s" for s in manifest.stages if s.seconds is not None]
    return ", ".join(parts) or "-"


def _serve_lines(serve: ServeReport) -> list[str]:
    tokens = serve.output_tokens
    rate = f", {tokens / serve.http_seconds:.1f} tok/s" if tokens and serve.http_seconds else ""
    check = {True: "yes", False: "NO", None: "not checked"}[serve.matches_checkpoint]
    return [
        f"  runtime      {serve.runtime} (model '{serve.model}')",
        f"  endpoints    http {serve.http_url}  grpc {serve.grpc_url}  metrics {serve.metrics_url}",
        f"  openai       {serve.openai_url or 'not started'}",
        f"  ready in     {serve.ready_seconds:.1f}s (server start + model load)",
        f"  prompt       {serve.prompt!r}",
        f"  generated    {serve.text!r}",
        f"  latency      http {serve.http_seconds:.2f}s ({tokens or '?'} tokens{rate}), "
        f"grpc {serve.grpc_seconds:.2f}s, stream {serve.stream_chunks} chunks; "
        f"same text: {'yes' if serve.protocols_agree else 'NO'}",
        f"  checkpoint   served text equals the checkpoint's greedy continuation: {check}",
        *(f"  served task  {task.summary()}" for task in serve.served_tasks),
        *(f"  performance  {level.summary()}" for level in serve.performance),
        *(f"  original     {level.summary()}" for level in serve.baseline_performance),
        *(f"  speedup      {result.summary()}" for result in serve.speed),
    ]


def format_report(report: LocalReport) -> str:
    """The plain-text summary `kiln run` prints."""
    manifest = report.manifest
    metrics = manifest.metrics
    lines = [
        f"kiln run: {manifest.plan.metadata.name} (plan {report.plan_hash})",
        f"  published    {report.publish_dir}{' (reused)' if report.reused else ''}",
        f"  techniques   {manifest.plan.summary()}  [{manifest.checkpoint.quant_algo or 'none'}]",
        f"  perplexity   {_perplexity_line(manifest)}",
        *(f"  task         {task.summary()}" for task in metrics.tasks or []),
        f"  size         {_size(metrics.baseline_size_bytes)} -> {_size(metrics.size_bytes)}",
        f"  stages       {_stage_line(manifest)}",
    ]
    if manifest.report:
        lines.append(f"  report       {report.publish_dir / manifest.report}")
    if manifest.speculation is not None:
        draft = manifest.speculation
        served = "served" if draft.served else f"not served: {draft.reason}"
        lines.append(
            f"  draft        {draft.algorithm} in {draft.draft_dir}/, {draft.max_draft_len} "
            f"tokens per step, {served}"
        )
    if report.serve is not None:
        lines += _serve_lines(report.serve)
    if report.serving_report is not None:
        lines.append(f"  serving      report {report.serving_report}")
    elif report.skipped_serving:
        lines.append(f"  serving      skipped ({report.skipped_serving})")
    lines.append(f"  wall time    {report.seconds:.1f}s")
    return "\n".join(lines)
