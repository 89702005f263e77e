"""`kiln status NAME`: a ModelOptimization's story in a terminal — phase, progress bar,
conditions, stages, measured numbers and the endpoint."""

from __future__ import annotations

from typing import Any

from kiln_jobs.manifest import TaskResult
from kiln_operator.conditions import CONDITIONS

__all__ = ["progress_bar", "render_status"]

Obj = dict[str, Any]
_BAR_WIDTH = 30
_STATE_MARK = {
    "Succeeded": "ok",
    "Failed": "FAILED",
    "Running": "...",
    "Skipped": "skipped",
    "Pending": "pending",
}


def progress_bar(percent: float, width: int = _BAR_WIDTH) -> str:
    """`[#########.....]  60%`."""
    percent = max(0.0, min(100.0, percent))
    filled = round(width * percent / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:3.0f}%"


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000  # type: ignore[assignment]
    return str(value)


def _metrics_lines(metrics: Obj) -> list[str]:
    lines = []
    if metrics.get("perplexity") is not None:
        base = metrics.get("baselinePerplexity")
        change = metrics.get("degradationPercent")
        text = f"{base:.2f} → " if base is not None else ""
        text += f"{metrics['perplexity']:.2f}"
        if change is not None:
            text += f" ({change:+.2f}%)"
        lines.append(f"  perplexity   {text}")
    if metrics.get("sizeBytes") is not None:
        ratio = metrics.get("compressionRatio")
        tail = f" ({ratio:.2f}x smaller)" if ratio else ""
        lines.append(
            f"  size         {_size(metrics.get('baselineSizeBytes'))} → "
            f"{_size(metrics['sizeBytes'])}{tail}"
        )
    if metrics.get("paramsAfter") is not None:
        lines.append(f"  parameters   {metrics.get('paramsBefore')} → {metrics['paramsAfter']}")
    if metrics.get("acceptanceLength") is not None:
        lines.append(f"  acceptance   {metrics['acceptanceLength']:.2f} tokens/step")
    if metrics.get("latencyMs") is not None:
        lines.append(f"  latency      {metrics['latencyMs']:.0f} ms (smoke test through Triton)")
    for task in metrics.get("tasks") or []:
        lines.append(f"  task         {TaskResult.model_validate(task).summary(arrow='→')}")
    return lines


def render_status(obj: Obj) -> str:
    """The whole status as plain text."""
    meta = obj.get("metadata", {})
    status = obj.get("status") or {}
    plan = (status.get("planHash") or "")[:10]
    head = [
        f"{meta.get('name')} ({meta.get('namespace')})",
        status.get("phase", "Pending"),
        status.get("techniques"),
        f"plan {plan or '-'}",
    ]
    lines = ["  ".join(part for part in head if part)]
    progress = status.get("progress") or {}
    if progress:
        detail = " ".join(str(p) for p in (progress.get("stage"), progress.get("message")) if p)
        lines.append(f"  progress     {progress_bar(progress.get('percent', 0))}  {detail}")
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    for kind, _ in CONDITIONS:
        if kind in conditions:
            c = conditions[kind]
            lines.append(
                f"  {kind:<12} {c['status']:<6} {c.get('reason', '')}: {c.get('message', '')}"
            )
    stages = status.get("stages") or []
    if stages:
        lines.append("  stages")
        for stage in stages:
            seconds = f"{stage['seconds']:.1f}s" if stage.get("seconds") is not None else ""
            mark = _STATE_MARK.get(stage.get("state", ""), stage.get("state", ""))
            lines.append(
                f"    {stage['name']:<20} {mark:<8} {seconds:>8}  "
                f"{stage.get('message') or ''}".rstrip()
            )
    metrics = _metrics_lines(status.get("metrics") or {})
    if metrics:
        lines.append("  metrics")
        lines += ["  " + line for line in metrics]
    for attempt in status.get("attempts") or []:
        verdict = "passed" if attempt.get("passed") else "failed"
        change = attempt.get("degradationPercent")
        shown = f"{change:+.2f}%" if change is not None else "?"
        lines.append(f"  attempt      {attempt['techniques']}: {shown} ({verdict} the gate)")
    checkpoint = status.get("checkpoint") or {}
    if checkpoint.get("quantAlgo"):
        kv = checkpoint.get("kvCacheQuantAlgo") or "none"
        lines.append(f"  checkpoint   {checkpoint['quantAlgo']}, KV cache {kv}")
    speculation = status.get("speculation") or {}
    if speculation:
        served = (
            "served" if speculation.get("served") else f"not served: {speculation.get('reason')}"
        )
        lines.append(
            f"  draft        {speculation.get('algorithm')}, {speculation.get('maxDraftLen')} "
            f"tokens per step, {served}"
        )
    endpoints = status.get("endpoints") or {}
    if endpoints:
        lines.append(f"  model        {endpoints.get('model')}")
        lines.append(f"  triton       {endpoints.get('http')} (gRPC {endpoints.get('grpc')})")
        if endpoints.get("openai"):
            lines.append(f"  openai       {endpoints['openai']}")
    elif status.get("endpoint"):
        lines.append(f"  endpoint     {status['endpoint']}")
    return "\n".join(lines)
