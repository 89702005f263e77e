"""The runner: one Plan, end to end, with the model loaded once.

Stages, in order (each reports progress and ends up in the manifest's `stages`):

1. `preflight`: is the work already published (then return the manifest: a no-op)? Can this
   machine run every technique of every stack that may be tried (e.g. NVFP4 needs Blackwell)?
   Are the store's credentials there, the task sources and the tasks? All before any model is
   loaded.
2. `load`: the model and tokenizer (`sources.models`), and the evaluation text.
3. `baseline`: perplexity of the loaded model (`evaluate`) and its task scores (`tasks`), once.
4. Each technique of the stack, in order (`techniques.registry`), then `evaluate` (perplexity and
   the same tasks on the same samples) and the gate (`gate`). When the gate fails and the Plan
   escalates, the next stack runs on a fresh copy of the loaded model; every try is recorded as
   an `Attempt`, with its task results.
5. `export`: the unified HF checkpoint, and the legacy TensorRT-LLM checkpoint if asked
   (`export`), written into the store's staging directory.
6. `engine` and `repository`: TensorRT-LLM engines when the Plan builds them, and the Triton model
   repository (`kiln_jobs.serving`).
7. `publish`: digests, manifest last, atomic move into `<store>/<plan hash>/` (`publish`).

Work that must survive a restarted pod (QAT/QAD checkpoints) lives under
`<workdir>/runs/<plan hash>/attempt-<n>/<index>-<kind>/`, removed once the plan is published;
downloads are cached under `<workdir>/cache/`.
"""

from __future__ import annotations

import copy
import errno
import functools
import gc
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from kiln_jobs import gate, hardware, tasks
from kiln_jobs.contract import CHECKPOINT_DIR, ENGINE_DIR, REPORT_DIR, REPORT_FILE, TRITON_DIR
from kiln_jobs.errors import (
    AccuracyGateFailed,
    KilnJobError,
    ResourceExhausted,
    UnsupportedHardware,
    UserError,
)
from kiln_jobs.evaluate import evaluation_tokens, perplexity
from kiln_jobs.export import export_hf, export_tensorrt_llm
from kiln_jobs.manifest import (
    Attempt,
    CheckpointInfo,
    EngineBuild,
    JobResult,
    Manifest,
    Metrics,
    StageResult,
    TaskResult,
)
from kiln_jobs.model_facts import count_parameters, parameter_bytes
from kiln_jobs.plan import DataRef, ModelRef, Plan, QADPlan, Technique, technique_label
from kiln_jobs.progress import ProgressLog, StageProgress
from kiln_jobs.publish import Published, Store, digest_files, open_store
from kiln_jobs.report import ReportFacts, write_report
from kiln_jobs.serving import engine, repository
from kiln_jobs.sources import data
from kiln_jobs.sources.models import LoadedModel, ModelFiles, load_model, resolve_model_files
from kiln_jobs.techniques import registry
from kiln_jobs.techniques.context import TechniqueContext, TechniqueOutcome

__all__ = ["TOOLS", "Run", "RunResult", "run_plan"]

log = logging.getLogger(__name__)

# Distributions whose versions say what produced a checkpoint.
TOOLS = ("kiln", "nvidia-modelopt", "torch", "transformers", "tensorrt_llm")


@dataclass(frozen=True)
class RunResult:
    """What a run published (or found already published)."""

    manifest: Manifest
    published_uri: str
    # The plan-hash directory for file:// and pvc:// stores; None for object stores.
    published_dir: Path | None
    # True when the manifest was already there and nothing ran.
    reused: bool = False

    def job_result(self) -> JobResult:
        """The termination message of a successful run."""
        return JobResult(
            ok=True,
            plan_hash=self.manifest.plan_hash,
            metrics=self.manifest.metrics,
            checkpoint=self.manifest.checkpoint,
            stages=self.manifest.stages,
            attempts=self.manifest.attempts,
            serving_runtime=self.manifest.serving_runtime,
            speculation=self.manifest.speculation,
            manifest_digest=self.manifest.digest(),
        )


def run_plan(
    plan: Plan,
    workdir: Path,
    *,
    progress_file: Path | None = None,
    progress_lines: bool = True,
) -> RunResult:
    """Run `plan` end to end and publish its artifacts (a no-op if they are already published).

    Args:
        plan: The resolved Plan.
        workdir: Scratch space that survives a restart (checkpoints, downloads, S3 staging).
        progress_file: Rewritten with the latest progress update.

    Raises:
        KilnJobError: a failure the user can act on (each subclass has its exit code).
    """
    progress = ProgressLog(progress_file, lines=progress_lines)
    return Run(plan, workdir, progress).execute()


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools in `TOOLS` (absent ones are left out)."""
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# Larger models skip the reload of their exported checkpoint on the CPU (see _verify_export).
_VERIFY_EXPORT_MAX_PARAMS = 3_000_000_000

# Rough share of a CPU or GPU run's time per stage kind, for the overall percent only.
_TECHNIQUE_WEIGHTS = {
    "ptq": 15.0,
    "qat": 40.0,
    "qad": 45.0,
    "speculative": 40.0,
    "prune_distill": 50.0,
}


def stage_weights(plan: Plan) -> list[tuple[str, float]]:
    """The stages a run of `plan` goes through when its first stack passes, with weights."""
    # Each task costs about what the perplexity windows do.
    evaluation_weight = 5.0 * (1 + len(plan.evaluation.tasks))
    stages = [("preflight", 0.5), ("load", 5.0), ("baseline", evaluation_weight)]
    stages += [(technique_label(t), _TECHNIQUE_WEIGHTS[t.kind]) for t in plan.techniques]
    if plan.techniques:
        stages.append(("evaluate", evaluation_weight))
    engine_weight = 25.0 if plan.engine.backend == "tensorrt-llm" else 0.5
    stages += [
        ("export", 4.0),
        ("verify-export", 5.0),
        ("engine", engine_weight),
        ("repository", 0.5),
        ("publish", 1.0),
    ]
    return stages


class Run:
    """One execution of a Plan: what ran, what it measured, and the record a failure leaves."""

    def __init__(self, plan: Plan, workdir: Path, progress: ProgressLog) -> None:
        self.plan = plan
        self.plan_hash = plan.hash()
        self.workdir = workdir
        self.progress = progress
        self.cache_dir = workdir / "cache"
        self.scratch = workdir / "runs" / self.plan_hash
        self.stages: list[StageResult] = []
        self.attempts: list[Attempt] = []
        self.metrics = Metrics()
        self.checkpoint_facts: dict[str, Any] = {}
        self.device = torch.device("cpu")  # set by the preflight stage
        self.tasks: list[tasks.PreparedTask] = []  # set by the preflight stage
        self.baseline_scores: list[tasks.TaskScore] = []  # set by the baseline stage
        self._blocks: dict[tuple[DataRef, str], torch.Tensor] = {}
        progress.expect(stage_weights(plan))

    def job_result(self, error: KilnJobError) -> JobResult:
        """The termination message of a failed run: the reason and what happened before it."""
        return JobResult(
            ok=False,
            plan_hash=self.plan_hash,
            reason=error.reason,
            message=error.message,
            metrics=self.metrics,
            stages=self.stages,
            attempts=self.attempts,
        )

    def execute(self) -> RunResult:
        """Run every stage; see the module docstring."""
        try:
            return self._execute()
        except KilnJobError:
            raise
        except BaseException as err:
            translated = _resource_error(err)
            if translated is None:
                raise
            raise translated from err

    # -- the stages, top to bottom ------------------------------------------------------------

    def _execute(self) -> RunResult:
        torch.manual_seed(0)
        with self._stage("preflight") as progress:
            store = open_store(self.plan.output.store, self.workdir)
            existing = store.existing(self.plan_hash)
            if existing is not None:
                problem = existing.manifest.scope_problem(self.plan_hash, self.plan.scope)
                if problem is not None:
                    raise UserError(
                        f"{existing.uri} is not this plan's to reuse: {problem}; use a store of "
                        "your own (artifacts.store)"
                    )
                progress(100.0, f"already published at {existing.uri}")
                log.info("%s is already published; nothing to do", existing.uri)
                return RunResult(existing.manifest, existing.uri, existing.directory, reused=True)
            accelerator = hardware.detect()
            stacks = gate.attempt_stacks(self.plan.techniques, self.plan.evaluation)
            for stack in stacks:
                for technique in stack:
                    registry.preflight(technique, accelerator)
            self._preflight_engine()
            self.tasks = tasks.prepare(self.plan.evaluation.tasks, self.cache_dir)
            self.device = torch.device("cuda" if accelerator.is_cuda else "cpu")
            self._use_kernel_cache(accelerator)
            progress(100.0, f"running on {accelerator.name}")

        with self._stage("load") as progress:
            loaded = self._load(self.plan.model)
            progress(70.0, f"loaded {type(loaded.model).__name__}")
            eval_ref = self.plan.evaluation.data
            stream = data.token_stream(eval_ref, data.EVAL_ROLE, loaded.tokenizer, self.cache_dir)
            eval_tokens = evaluation_tokens(stream, eval_ref)
            original = _Original(
                loaded,
                keep=self._keeps_original(stacks),
                reload=lambda: self._load(self.plan.model, loaded.files).model,
            )

        with self._stage("baseline") as progress:
            baseline = self._perplexity(loaded.model, eval_tokens, progress)
            self.baseline_scores = tasks.score_tasks(
                loaded.model, loaded.tokenizer, self.tasks, progress
            )
            self.metrics.baseline_perplexity = baseline
            self.metrics.params_before = count_parameters(loaded.model)
            self.metrics.baseline_size_bytes = parameter_bytes(loaded.model)

        model, outcomes = self._attempts(stacks, loaded, original, eval_tokens, baseline)
        del original
        self.metrics.params_after = count_parameters(model)
        for outcome in outcomes:
            self.checkpoint_facts.update(outcome.checkpoint)
            if "acceptance_length" in outcome.metrics:
                self.metrics.acceptance_length = float(outcome.metrics["acceptance_length"])

        staging = store.staging(self.plan_hash)
        try:
            published = self._publish(
                store, staging, model, loaded.tokenizer, outcomes, eval_tokens
            )
        except BaseException:
            store.discard(staging)
            raise
        shutil.rmtree(self.scratch, ignore_errors=True)
        return RunResult(published.manifest, published.uri, published.directory)

    def _attempts(
        self,
        stacks: list[tuple[Technique, ...]],
        loaded: LoadedModel,
        original: _Original,
        eval_tokens: torch.Tensor,
        baseline: float,
    ) -> tuple[Any, list[TechniqueOutcome]]:
        """Apply each stack until one passes the gate; the passing model and its outcomes."""
        evaluation = self.plan.evaluation
        first: Any = loaded.model
        # The attempts own the loaded model now, so a failed attempt's model can be freed.
        loaded.model = None
        for number, stack in enumerate(stacks, start=1):
            began = time.monotonic()
            model = first if number == 1 else original.fresh()
            first = None
            model, outcomes = self._apply(stack, model, loaded, original, number)
            suffix = f"#{number}" if number > 1 else ""
            if stack:
                with self._stage(f"evaluate{suffix}") as progress:
                    measured = self._perplexity(model, eval_tokens, progress)
                    scores = tasks.score_tasks(model, loaded.tokenizer, self.tasks, progress)
            else:
                measured, scores = baseline, self.baseline_scores
            degradation = gate.degradation_percent(baseline, measured)
            task_results = self._judge_tasks(scores)
            passed = gate.passes(evaluation, degradation) and all(r.passed for r in task_results)
            self.attempts.append(
                Attempt(
                    techniques=gate.stack_label(stack, stacks[0]),
                    perplexity=measured,
                    degradation_percent=round(degradation, 4),
                    passed=passed,
                    seconds=round(time.monotonic() - began, 2),
                    tasks=task_results or None,
                )
            )
            self.metrics.perplexity = measured
            self.metrics.degradation_percent = round(degradation, 4)
            self.metrics.tasks = task_results or None
            log.info(
                "attempt %d (%s): perplexity %.3f vs %.3f baseline (%+.2f%%): %s",
                number,
                gate.stack_label(stack, stacks[0]),
                measured,
                baseline,
                degradation,
                "passed" if passed else "failed",
            )
            if passed:
                return model, outcomes
            del model, outcomes
            _release_memory()
        raise gate.failure(evaluation, self.attempts)

    def _judge_tasks(self, scores: list[tasks.TaskScore]) -> list[TaskResult]:
        """Each task's verdict, baseline against `scores`, logged."""
        results = []
        for task, before, after in zip(self.tasks, self.baseline_scores, scores, strict=True):
            result = gate.judge_task(task.plan, before, after)
            log.info(
                "task %s: %s %.4f vs %.4f baseline (stderr %s): %s%s",
                result.name,
                result.metric,
                result.optimized,
                result.baseline,
                result.stderr,
                "passed" if result.passed else "failed",
                f" ({result.reason})" if result.reason else "",
            )
            results.append(result)
        return results

    def _apply(
        self,
        stack: tuple[Technique, ...],
        model: Any,
        loaded: LoadedModel,
        original: _Original,
        attempt: int,
    ) -> tuple[Any, list[TechniqueOutcome]]:
        """Run one stack of techniques on `model`, in order."""
        outcomes = []
        for index, spec in enumerate(stack):
            suffix = f"#{attempt}" if attempt > 1 else ""
            with self._stage(f"{technique_label(spec)}{suffix}") as progress:
                ctx = self._context(model, loaded, original, progress, attempt, index, spec)
                outcome = registry.run(ctx, spec)
                self.stages[-1].metrics = dict(outcome.metrics)
            model = outcome.model
            outcomes.append(outcome)
        return model, outcomes

    def _publish(
        self,
        store: Store,
        staging: Path,
        model: Any,
        tokenizer: Any,
        outcomes: list[TechniqueOutcome],
        eval_tokens: torch.Tensor,
    ) -> Published:
        """Export, verify, build, write the Triton repository, then commit the staging
        directory."""
        with self._stage("export") as progress:
            facts = export_hf(model, tokenizer, staging / CHECKPOINT_DIR)
            # The exported checkpoint is the authority on what it holds.
            self.checkpoint_facts.update({k: v for k, v in facts.items() if v is not None})
            progress(60.0, f"HF checkpoint ({facts['quant_algo'] or 'unquantized'})")
            if self.plan.export.tensorrt_llm_checkpoint:
                export_tensorrt_llm(model, staging / engine.TRTLLM_CHECKPOINT_DIR, self.plan.engine)
            for name, path in _artifacts(outcomes).items():
                shutil.copytree(path, staging / name, dirs_exist_ok=True)
            self.metrics.size_bytes = _tree_bytes(staging / CHECKPOINT_DIR)

        self._verify_export(staging / CHECKPOINT_DIR, eval_tokens)

        with self._stage("engine") as progress:
            built = engine.build_engine(
                self.plan, staging / CHECKPOINT_DIR, staging / ENGINE_DIR, progress
            )
        with self._stage("repository"):
            served = repository.write_repository(self.plan, staging)

        with self._stage("publish") as progress:
            manifest = Manifest(
                plan_hash=self.plan_hash,
                plan=self.plan,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                stages=[stage.model_copy() for stage in self.stages],
                attempts=self.attempts,
                metrics=self.metrics.model_copy(),
                checkpoint=self._checkpoint_info(),
                checkpoint_dir=CHECKPOINT_DIR,
                triton_repository=TRITON_DIR,
                engine_dir=ENGINE_DIR if built is not None else None,
                engine_build=EngineBuild.model_validate(built.record()) if built else None,
                serving_runtime=served.runtime,
                speculation=served.speculation,
                report=f"{REPORT_DIR}/{REPORT_FILE}",
                files=[],
            )
            # The manifest records the publish stage as done: writing it is what completes it.
            manifest.stages[-1].state = "Succeeded"
            write_report(ReportFacts.from_manifest(manifest), staging / REPORT_DIR)
            progress(50.0, "report written")
            manifest = manifest.model_copy(update={"files": digest_files(staging)})
            published = store.commit(staging, manifest)
            progress(100.0, f"published {published.uri}")
        return published

    # -- helpers ------------------------------------------------------------------------------

    @contextmanager
    def _stage(self, name: str) -> Iterator[StageProgress]:
        """Time a stage, report its progress and record how it ended."""
        result = StageResult(name=name, state="Running")
        self.stages.append(result)
        began = time.monotonic()
        log.info("stage %s: started", name)
        with self.progress.stage(name) as progress:
            try:
                yield progress
            except BaseException as err:
                result.state = "Failed"
                result.message = _one_line(err)
                raise
            finally:
                result.seconds = round(time.monotonic() - began, 2)
            if result.state == "Running":
                result.state = "Succeeded"
            progress(100.0, f"{name}: done in {result.seconds:.1f}s")
        log.info("stage %s: %s in %.1fs", name, result.state.lower(), result.seconds)

    def _context(
        self,
        model: Any,
        loaded: LoadedModel,
        original: _Original,
        progress: StageProgress,
        attempt: int,
        index: int,
        spec: Technique,
    ) -> TechniqueContext:
        device = next(model.parameters()).device
        return TechniqueContext(
            model=model,
            tokenizer=loaded.tokenizer,
            device=device,
            workdir=self.scratch / f"attempt-{attempt}" / f"{index:02d}-{spec.kind}",
            progress=progress,
            load_original=original.fresh,
            load_model=lambda ref: self._load(ref).model,
            token_blocks=functools.partial(self._token_blocks, loaded.tokenizer),
            evaluation_data=self.plan.evaluation.data,
            resolve_model=lambda ref: resolve_model_files(ref, self.cache_dir).directory,
        )

    def _preflight_engine(self) -> None:
        """Engines need TensorRT-LLM on a GPU: without them, fail now rather than after the
        techniques (unless the Plan may fall back to the Python backend)."""
        plan_engine = self.plan.engine
        if plan_engine.backend != "tensorrt-llm" or plan_engine.allow_fallback:
            return
        reason = engine.unavailable_reason()
        if reason is not None:
            raise UnsupportedHardware(f"engine.backend tensorrt-llm: {reason}")

    def _token_blocks(self, tokenizer: Any, ref: DataRef, role: str) -> torch.Tensor:
        """Token blocks, tokenized once per run (escalation asks for the same data again)."""
        key = (ref, role)
        if key not in self._blocks:
            self._blocks[key] = data.token_blocks(ref, role, tokenizer, self.cache_dir)
        return self._blocks[key]

    def _use_kernel_cache(self, accelerator: hardware.Accelerator) -> None:
        """Point torch's extension builds at the shared kernel cache (KILN_KERNEL_CACHE, set
        by the operator on PVC stores) or, failing that, this run's cache directory."""
        base = Path(os.environ.get(hardware.KERNEL_CACHE_ENV) or self.cache_dir)
        directory = hardware.kernel_cache_dir(base, accelerator)
        if directory is not None and "TORCH_EXTENSIONS_DIR" not in os.environ:
            directory.mkdir(parents=True, exist_ok=True)
            os.environ["TORCH_EXTENSIONS_DIR"] = str(directory)
            log.info("CUDA kernels are built into and reused from %s", directory)

    def _load(self, ref: ModelRef, files: ModelFiles | None = None) -> LoadedModel:
        return load_model(ref, device=self.device, cache_dir=self.cache_dir, files=files)

    def _keeps_original(self, stacks: list[tuple[Technique, ...]]) -> bool:
        """Keep an in-memory copy of the loaded model when a fresh one will be needed:
        escalation, or QAD with the original model as teacher."""
        needs_teacher = any(
            isinstance(t, QADPlan) and t.teacher is None for stack in stacks for t in stack
        )
        return len(stacks) > 1 or needs_teacher

    def _verify_export(self, checkpoint: Path, eval_tokens: torch.Tensor) -> None:
        """Measure the exported checkpoint as it will be served, and hold it to the gate too.

        The exporter changes numerics (it shares one weight scale across fused q/k/v and gate/up,
        and averages their smoothing), so the evaluated model and the published one differ a
        little. Reloading the export with its real scales shows what serving will compute; it
        runs on the CPU, for models small enough to do so in reasonable time and memory.
        """
        if self.checkpoint_facts.get("quant_algo") is None or (
            (self.metrics.params_after or 0) > _VERIFY_EXPORT_MAX_PARAMS
        ):
            return
        from kiln_jobs.serving.checkpoint import load_checkpoint

        with self._stage("verify-export") as progress:
            served = load_checkpoint(checkpoint)
            progress(10.0, "reloaded the exported checkpoint")
            measured = self._perplexity(served, eval_tokens, progress)
            del served
            self.metrics.exported_perplexity = round(measured, 4)
            baseline = self.metrics.baseline_perplexity or measured
            degradation = gate.degradation_percent(baseline, measured)
            log.info("exported checkpoint: perplexity %.3f (%+.2f%%)", measured, degradation)
            if not gate.passes(self.plan.evaluation, degradation):
                raise AccuracyGateFailed(
                    f"the exported checkpoint degrades perplexity {degradation:+.2f}% "
                    f"({baseline:.3f} -> {measured:.3f}), more than the "
                    f"{self.plan.evaluation.max_degradation_percent}% allowed, although the "
                    "optimized model passed; nothing was published"
                )

    def _perplexity(self, model: Any, tokens: torch.Tensor, progress: StageProgress) -> float:
        evaluation = self.plan.evaluation
        return perplexity(
            model,
            tokens,
            seq_length=evaluation.data.seq_length,
            stride=evaluation.stride,
            progress=progress,
        )

    def _checkpoint_info(self) -> CheckpointInfo:
        facts = self.checkpoint_facts
        return CheckpointInfo(
            quant_algo=facts.get("quant_algo"),
            kv_cache_quant_algo=facts.get("kv_cache_quant_algo"),
            group_size=facts.get("group_size"),
            calibration_digest=facts.get("calibration_digest"),
            tools=tool_versions(),
        )


class _Original:
    """Fresh copies of the model as loaded: from a copy kept in host memory when the Plan will
    need several, else by loading the files again."""

    def __init__(self, loaded: LoadedModel, *, keep: bool, reload: Callable[[], Any]) -> None:
        self._device = next(loaded.model.parameters()).device
        self._reload = reload
        self._copy = copy.deepcopy(loaded.model).to("cpu") if keep else None

    def fresh(self) -> Any:
        """A new, unmodified copy of the loaded model on the job's device."""
        if self._copy is None:
            return self._reload()
        return copy.deepcopy(self._copy).to(self._device).eval()


def _release_memory() -> None:
    """Give a discarded model's memory back before the next attempt allocates its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _artifacts(outcomes: list[TechniqueOutcome]) -> dict[str, Path]:
    artifacts: dict[str, Path] = {}
    for outcome in outcomes:
        artifacts.update(outcome.artifacts)
    return artifacts


def _tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _one_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err).strip() or type(err).__name__
    return text.splitlines()[0][:500]


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _resource_error(err: BaseException) -> ResourceExhausted | None:
    """Out of memory or disk, as the user-facing error; None for anything else."""
    text = str(err).lower()
    if isinstance(err, torch.OutOfMemoryError | MemoryError) or (
        isinstance(err, RuntimeError) and any(m in text for m in _OOM_MARKERS)
    ):
        return ResourceExhausted(f"out of memory: {_one_line(err)}; use a larger GPU or node")
    if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "no space left on device" in text
    ):
        return ResourceExhausted(f"disk full: {_one_line(err)}; give the job more disk")
    return None
