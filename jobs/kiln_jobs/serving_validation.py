"""The served-model evaluation Job: a rolled-out Triton revision measured before it takes traffic.

    python -m kiln_jobs validate-serving --plan plan.json --http http://CANDIDATE:8000 \\
        --workdir DIR [--termination-log /dev/termination-log]

The operator runs it (CPU, the job image) once a new revision serves the published plan and
before traffic moves to it. It checks the candidate as `kiln run` checks a local one: the Plan's
generative tasks scored again through an OpenAI-compatible relay in this process, in front of the
candidate's Triton (`kiln_jobs.served_eval`), and latency and throughput over the Plan's
concurrency ladder (`kiln_jobs.serving.loadtest`). What it measured is in the termination message
(`JobResult.serving`) whether it passed or not, so the operator can show it in the status.

Comparing with the original model (`evaluation.performance.baseline`, `min_speedup`) needs the
original served beside the candidate; only `kiln run` measures that.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from kiln_jobs import served_eval
from kiln_jobs.errors import KilnJobError, SourceNotFound, UserError
from kiln_jobs.manifest import JobResult, ServedLevel, ServedTask, ServingMeasurements
from kiln_jobs.plan import Plan
from kiln_jobs.publish import Published, Store, open_store
from kiln_jobs.serving.client import InferenceFailed
from kiln_jobs.serving.loadtest import LevelStats, measure_performance

__all__ = [
    "WEIGHT_SUFFIXES",
    "ServingValidation",
    "failed_result",
    "find_published",
    "openai_relay",
    "refuse_original_comparison",
    "served_level",
    "served_task",
    "tokenizer_dir",
    "triton_address",
]

log = logging.getLogger(__name__)

# What a tokenizer never reads: weights, which can be gigabytes.
WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz",
)  # fmt: skip
# The candidate is normally ready when the Job starts; a model still loading gets this long.
READY_TIMEOUT_S = 120.0
_READY_POLL_S = 2.0


class ServingValidation:
    """One validation of a candidate. It keeps what it measured, so that a failure (a regression
    above all) still reports the numbers."""

    def __init__(self, plan: Plan, http_url: str, workdir: Path) -> None:
        """Args:
        plan: The Plan the candidate serves (its served and performance settings apply).
        http_url: The candidate's Triton HTTP endpoint, `http://host:port`.
        workdir: Scratch: task sources, a fetched tokenizer.
        """
        self.plan = plan
        self.plan_hash = plan.hash()
        self.http_url = http_url
        self.workdir = workdir
        self.tasks: list[served_eval.ServedTaskResult] = []
        self.levels: list[LevelStats] = []

    def execute(self) -> ServingMeasurements:
        """Score and time the candidate.

        Raises:
            UserError: The Plan asks for the comparison with the original, or `--http` is not
                an http:// URL.
            SourceNotFound: The plan is not published in its store.
            InferenceFailed: The candidate does not serve the model.
            ServingRegression: A task scored below the published model by more than
                `evaluation.served.max_drop` (what was measured stays in `job_result`).
        """
        refuse_original_comparison(self.plan)
        triton = triton_address(self.http_url)
        self.workdir.mkdir(parents=True, exist_ok=True)
        store = open_store(self.plan.output.store, self.workdir)
        published = find_published(store, self.plan)
        tokenizer = tokenizer_dir(store, published, self.workdir)
        # The Job's Plan, not the published one: served and performance settings are not
        # hashed, so they may have changed since publishing without a new optimization.
        manifest = published.manifest.model_copy(update={"plan": self.plan})
        model = self.plan.serving.model_name
        log.info("validating %s (plan %s) served at %s", model, self.plan_hash, self.http_url)
        with openai_relay(triton, model, tokenizer) as relay_url:
            self.tasks = served_eval.evaluate_served(
                manifest, relay_url, tokenizer, self.workdir / "cache"
            )
            if (performance := self.plan.evaluation.performance) is not None:
                self.levels = measure_performance(triton, model, performance)
        served = self.plan.evaluation.served
        if served is not None and not all(result.passed for result in self.tasks):
            raise served_eval.regression(self.tasks, served)
        return self.measurements()

    def measurements(self) -> ServingMeasurements:
        """What was measured so far, in the termination message's units."""
        return ServingMeasurements(
            tasks=[served_task(result) for result in self.tasks],
            performance=[served_level(level) for level in self.levels],
        )

    def job_result(self, error: BaseException | None = None) -> JobResult:
        """The termination message: the verdict, and the measurements whenever there are some."""
        if error is None:
            return JobResult(ok=True, plan_hash=self.plan_hash, serving=self.measurements())
        measured = self.measurements() if self.tasks or self.levels else None
        return failed_result(error, self.plan_hash, measured)


def failed_result(
    error: BaseException, plan_hash: str = "", serving: ServingMeasurements | None = None
) -> JobResult:
    """A failure's JobResult: a user-facing error's reason and message, or `Bug`."""
    if isinstance(error, KilnJobError):
        reason, message = error.reason, error.message
    else:
        reason, message = "Bug", f"{type(error).__name__}: {error}"[:1000]
    return JobResult(ok=False, plan_hash=plan_hash, reason=reason, message=message, serving=serving)


def refuse_original_comparison(plan: Plan) -> None:
    """The speedup over the original needs the original served too, which this Job does not
    do (the operator's compiler refuses such Plans in the cluster; this is the second line)."""
    performance = plan.evaluation.performance
    if performance is not None and (performance.baseline or performance.min_speedup is not None):
        raise UserError(
            "evaluation.performance.baseline and minSpeedup compare with the original model, "
            "which only `kiln run` measures; set baseline: false and drop minSpeedup to measure "
            "the served model alone"
        )


def triton_address(url: str) -> str:
    """`host:port`, the serving client's form, from `--http`'s `http://host:port`."""
    address = url.removeprefix("http://").rstrip("/")
    if not address or "/" in address:
        raise UserError(f"--http {url}: expected Triton's HTTP endpoint as http://host:port")
    return address


def find_published(store: Store, plan: Plan) -> Published:
    """The plan's published artifacts: the candidate serves them, the manifest has the
    in-process scores the served ones are held against."""
    plan_hash = plan.hash()
    published = store.existing(plan_hash)
    if published is None:
        raise SourceNotFound(
            f"plan {plan_hash} is not published in {plan.output.store} (no manifest.json): "
            "there is nothing to compare the served model with; the optimization Job publishes it"
        )
    problem = published.manifest.scope_problem(plan_hash, plan.scope)
    if problem is not None:
        raise UserError(f"{published.uri} is not this plan's: {problem}")
    return published


def tokenizer_dir(store: Store, published: Published, workdir: Path) -> Path:
    """The published checkpoint's tokenizer: read in place from a directory store, fetched
    without the weights from an object store."""
    checkpoint = published.manifest.checkpoint_dir
    if published.directory is not None:
        return published.directory / checkpoint
    dest = workdir / "published"
    store.fetch(published.manifest.plan_hash, dest, under=checkpoint, select=_tokenizer_file)
    return dest / checkpoint


def _tokenizer_file(path: str) -> bool:
    """Files in the checkpoint folder itself (not a draft's), weights excepted."""
    return len(PurePosixPath(path).parts) == 2 and not path.endswith(WEIGHT_SUFFIXES)


@contextlib.contextmanager
def openai_relay(triton: str, model: str, tokenizer: Path) -> Iterator[str]:
    """The OpenAI-compatible endpoint lm-eval scores through, in this process in front of the
    candidate as `kiln run` has it; yields its base URL (`.../v1`) once the model is ready."""
    from kiln_jobs.serving.openai_api import OpenAIServer

    relay = OpenAIServer(triton, model, tokenizer, port=0).start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not relay.ready():
            if time.monotonic() > deadline:
                raise InferenceFailed(
                    f"the candidate at http://{triton} has no model '{model}' ready after "
                    f"{READY_TIMEOUT_S:.0f}s"
                )
            time.sleep(_READY_POLL_S)
        yield relay.url
    finally:
        relay.stop()


def served_task(result: served_eval.ServedTaskResult) -> ServedTask:
    """A served task result as the termination message carries it."""
    return ServedTask(
        name=result.name,
        metric=result.metric,
        in_process=result.in_process,
        served=result.served,
        samples=result.samples,
        passed=result.passed,
        skipped=result.skipped,
    )


def served_level(stats: LevelStats) -> ServedLevel:
    """A load-test level in milliseconds, rounded to what the measurement can tell."""
    return ServedLevel(
        concurrency=stats.concurrency,
        requests=stats.requests,
        ttft_p50_ms=_ms(stats.ttft_p50),
        ttft_p95_ms=_ms(stats.ttft_p95),
        itl_p50_ms=_optional_ms(stats.itl_p50),
        latency_p50_ms=_optional_ms(stats.latency_p50),
        latency_p95_ms=_optional_ms(stats.latency_p95),
        output_tokens_per_second=round(stats.output_tokens_per_second, 2),
        requests_per_second=round(stats.requests_per_second, 3),
    )


def _ms(seconds: float) -> float:
    # Tenths of a millisecond: finer than a streamed response's timing means.
    return round(seconds * 1000.0, 1)


def _optional_ms(seconds: float | None) -> float | None:
    return None if seconds is None else _ms(seconds)
