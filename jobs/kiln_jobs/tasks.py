"""Task accuracy with lm-evaluation-harness, scored on the model the runner holds.

Each task of `evaluation.tasks` is scored with lm-eval's `HFLM` wrapped around the in-memory model
(no reload, no export), on the first `limit` samples of the task's evaluation split: the baseline
and every optimized model answer exactly the same questions, in the same process.

Where a task comes from:

- with a `source` (`file://`, `pvc://`, `s3://`): a directory holding the task's lm-eval YAML and
  its data. Only that directory is indexed, and scoring runs with it as the working directory,
  so relative paths in the YAML (`dataset_kwargs.data_files`) are read from it;
- without one: a task lm-eval ships, whose data comes from the Hugging Face Hub (the `HF_HOME`
  cache; `HF_HUB_OFFLINE=1` uses only the cache).

lm-eval is imported only when a Plan has tasks, so perplexity-only runs and the operator image do
not need it. `prepare` runs in the preflight stage and loads each task's data once (a Hub task's
data is then in the cache): a missing source, an unknown task name or data that cannot be read
fails before any model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln_jobs.errors import SourceNotFound, UserError
from kiln_jobs.plan import TaskPlan
from kiln_jobs.sources import s3
from kiln_jobs.sources.uri import local_path, parse_uri
from kiln_jobs.techniques.context import ProgressReporter

__all__ = [
    "PreparedTask",
    "TaskScore",
    "evaluate",
    "prepare",
    "quiet_lm_eval",
    "read_score",
    "score_tasks",
    "working_directory",
]

log = logging.getLogger(__name__)

# Requests per forward pass. Multiple-choice contexts are short; 16 keeps a CPU busy and fits
# any GPU a Kiln job runs on.
BATCH_SIZE = 16
# Only metrics without a closed-form standard error are bootstrapped; lm-eval's default
# (100,000 resamples) takes minutes on a CPU for what a thousand estimate well enough.
BOOTSTRAP_ITERS = 1000


@dataclass(frozen=True)
class TaskScore:
    """What lm-eval measured for one task on one model."""

    score: float
    stderr: float | None
    samples: int
    higher_is_better: bool = True


@dataclass(frozen=True)
class PreparedTask:
    """A task whose source is on local disk and whose name lm-eval knows."""

    plan: TaskPlan
    directory: Path | None
    manager: Any  # lm_eval.tasks.TaskManager, indexed once and reused for every model
    # lm-eval's OUTPUT_TYPE (a group's: its first task's), e.g. generate_until; read when the
    # task is built in `prepare`, since building it again costs a read of its data.
    output_type: str


def prepare(tasks: tuple[TaskPlan, ...], cache_dir: Path) -> list[PreparedTask]:
    """Fetch every task's source, check that lm-eval knows its name and can read its data.

    Raises:
        UserError: lm-eval is not installed, a task is unknown or a source holds no task YAML.
        SourceNotFound: a source does not exist, or a task's data cannot be read.
    """
    if not tasks:
        return []
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(
            "evaluation.tasks needs lm-evaluation-harness, which this job image lacks: "
            "install kiln[jobs] (it pins lm-eval), or remove the tasks"
        )
    from lm_eval.tasks import TaskManager

    prepared = []
    managers: dict[Path | None, Any] = {}
    for index, task in enumerate(tasks):
        field = f"evaluation.tasks[{index}].source"
        directory = _task_directory(task.source, field, cache_dir) if task.source else None
        if directory not in managers:
            # A source is indexed alone: lm-eval's own ~15,000 task files take seconds to scan.
            managers[directory] = TaskManager(
                include_path=str(directory) if directory else None,
                include_defaults=directory is None,
            )
        manager = managers[directory]
        if task.name not in manager.all_tasks:
            where = task.source or "the tasks lm-eval ships"
            raise UserError(
                f"evaluation.tasks[{index}].name: {task.name!r} is not a task in {where}: "
                "name the task as its YAML does (task: ...)"
            )
        prepared.append(_load(task, directory, manager, index))
    return prepared


def score_tasks(
    model: Any,
    tokenizer: Any,
    prepared: list[PreparedTask],
    progress: ProgressReporter | None = None,
) -> list[TaskScore]:
    """Score `model` on every task, in order."""
    scores = []
    for index, task in enumerate(prepared, start=1):
        if progress is not None:
            progress(100.0 * (index - 1) / len(prepared), f"task {task.plan.name}")
        scores.append(_score(model, tokenizer, task))
    return scores


def read_score(results: dict[str, Any], task: TaskPlan) -> TaskScore:
    """The task's metric, standard error and sample count from `simple_evaluate`'s results.

    Raises:
        UserError: the task reported no score (a tag of several tasks) or not that metric.
    """
    field = f"evaluation.tasks ({task.name})"
    scores = results["results"].get(task.name)
    if scores is None:
        raise UserError(
            f"{field}.name: lm-eval reported no score for it (a tag of several tasks has "
            "none): name one task, or a group that aggregates its tasks"
        )
    key = _metric_key(scores, task.metric)
    value = scores.get(key) if key else None
    if key is None or not _is_number(value):
        reported = ", ".join(_metric_names(scores)) or "nothing"
        raise UserError(
            f"{field}.metric: the task reports no {task.metric!r} (it reports {reported}); "
            "set metric to one of those"
        )
    metric, _, filter_name = key.partition(",")
    stderr = scores.get(f"{metric}_stderr,{filter_name}")
    higher = results.get("higher_is_better", {}).get(task.name, {}).get(metric)
    return TaskScore(
        score=float(value),  # type: ignore[arg-type]
        stderr=float(stderr) if _is_number(stderr) else None,
        samples=_samples(results, task.name),
        higher_is_better=higher is not False,
    )


def _score(model: Any, tokenizer: Any, task: PreparedTask) -> TaskScore:
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        score = evaluate(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH_SIZE), task)
    finally:
        model.train(was_training)
    log.info(
        "task %s: %s %.4f (stderr %s, %d samples)",
        task.plan.name,
        task.plan.metric,
        score.score,
        "n/a" if score.stderr is None else f"{score.stderr:.4f}",
        score.samples,
    )
    return score


def evaluate(lm: Any, task: PreparedTask) -> TaskScore:
    """Score one task with an lm-eval model: one in this process, or a served endpoint."""
    import lm_eval

    with working_directory(task.directory), quiet_lm_eval():
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task.plan.name],
            limit=task.plan.limit,
            task_manager=task.manager,
            log_samples=False,
            bootstrap_iters=BOOTSTRAP_ITERS,
            # The runner seeded its generators; scoring must not reseed them under later
            # stages. The samples (the first `limit`) and few-shot picks do not depend on them.
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    if results is None:
        raise RuntimeError(f"lm-eval returned no results for {task.plan.name}")
    return read_score(results, task.plan)


def _load(task: TaskPlan, directory: Path | None, manager: Any, index: int) -> PreparedTask:
    """Build the task once, which reads (or downloads) its data."""
    try:
        with working_directory(directory), quiet_lm_eval():
            loaded = manager.load([task.name])
    except Exception as err:
        where = (
            f"check the paths in its YAML, relative to {task.source}"
            if task.source
            else "a task lm-eval ships reads its data from the Hugging Face Hub or its cache "
            "(HF_HOME); give it a source for an air-gapped cluster"
        )
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise SourceNotFound(
            f"evaluation.tasks[{index}] ({task.name}): its data cannot be read "
            f"({first_line}): {where}"
        ) from err
    return PreparedTask(task, directory, manager, str(_first_task(loaded).OUTPUT_TYPE))


def _first_task(loaded: Any) -> Any:
    while isinstance(loaded, dict):
        loaded = next(iter(loaded.values()))
    return loaded


def _task_directory(source: str, field: str, cache_dir: Path) -> Path:
    """A task source on local disk (an s3:// source is downloaded into the cache once)."""
    uri = parse_uri(source)
    match uri.scheme:
        case "file" | "pvc":
            directory = local_path(uri)
        case "s3":
            bucket, prefix = s3.split(uri)
            directory = cache_dir / "tasks" / hashlib.sha256(source.encode()).hexdigest()[:16]
            if not (directory / ".complete").exists():
                s3.open_bucket(bucket).download_prefix(prefix, directory, what=source)
                (directory / ".complete").touch()
        case _:
            raise UserError(f"{field}: {source} is not a file://, pvc:// or s3:// directory")
    if not directory.is_dir():
        raise SourceNotFound(f"{field}: {source} does not exist or is not a directory")
    if not any(directory.rglob("*.yaml")):
        raise UserError(f"{field}: {source} holds no lm-eval task YAML (*.yaml)")
    return directory


def _metric_key(scores: dict[str, Any], metric: str) -> str | None:
    """lm-eval's `metric,filter` key for `metric`: as written when it names a filter, else the
    unfiltered one, else the only filter reported."""
    if "," in metric:
        return metric if metric in scores else None
    if f"{metric},none" in scores:
        return f"{metric},none"
    filtered = [key for key in scores if key.partition(",")[0] == metric]
    return filtered[0] if len(filtered) == 1 else None


def _metric_names(scores: dict[str, Any]) -> list[str]:
    names = []
    for key in scores:
        metric, comma, filter_name = key.partition(",")
        if comma and not metric.endswith("_stderr"):
            names.append(metric if filter_name == "none" else key)
    return names


def _samples(results: dict[str, Any], name: str) -> int:
    """Samples scored for a task, or summed over a group's tasks."""
    counts = results.get("n-samples", {})
    if name in counts:
        return int(counts[name]["effective"])
    return sum(
        _samples(results, child) for child in results.get("group_subtasks", {}).get(name, [])
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@contextlib.contextmanager
def working_directory(directory: Path | None) -> Iterator[None]:
    if directory is None:
        yield
        return
    with contextlib.chdir(directory):
        yield


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval warns at every call that it was handed a built model, which is the point here."""
    logger = logging.getLogger("lm_eval")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)
