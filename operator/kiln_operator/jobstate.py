"""Read an optimization Job and its pods the way a person would: what is it doing, and why.

Pure functions over the objects the API server returns (as plain dicts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from kiln_jobs.manifest import JobResult, Progress

__all__ = ["JobView", "parse_progress", "view_job"]

Obj = dict[str, Any]
JobState = Literal[
    "Suspended", "Pending", "Unschedulable", "Blocked", "Running", "Succeeded", "Failed"
]

# Container waiting reasons that no amount of waiting fixes without the user.
_BLOCKED_REASONS = {
    "CreateContainerConfigError": "the pod cannot start",
    "ErrImagePull": "the image cannot be pulled",
    "ImagePullBackOff": "the image cannot be pulled",
    "InvalidImageName": "the image name is invalid",
    "CreateContainerError": "the container cannot be created",
}
_PROGRESS_KEY = "kiln_progress"


@dataclass(frozen=True)
class JobView:
    """What an optimization Job is doing."""

    state: JobState
    reason: str
    message: str
    result: JobResult | None = None


def _condition(obj: Obj, kind: str) -> Obj | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _newest(pods: list[Obj]) -> Obj | None:
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def _terminated(pod: Obj) -> Obj | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = status.get("state", {}).get("terminated")
        if terminated:
            return terminated
    return None


def _result(pods: list[Obj]) -> JobResult | None:
    """The runner's last word from the newest pod that wrote one."""
    finished = [p for p in pods if _terminated(p)]
    for pod in sorted(
        finished, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True
    ):
        terminated = _terminated(pod) or {}
        message = (terminated.get("message") or "").strip()
        try:
            return JobResult.model_validate_json(message)
        except ValidationError:
            pass
        if terminated.get("reason") == "OOMKilled":
            return JobResult(
                ok=False,
                plan_hash="",
                reason="OOMKilled",
                message="the optimization ran out of memory (OOMKilled): raise "
                "spec.resources.memory or lower batch sizes and sequence lengths",
            )
        if message:
            last = message.splitlines()[-1][:500]
            code = terminated.get("exitCode")
            return JobResult(
                ok=False,
                plan_hash="",
                reason="Crashed",
                message=f"the job exited with code {code}: {last}",
            )
    return None


def _failed(job: Obj, pods: list[Obj]) -> JobView:
    condition = _condition(job, "Failed") or _condition(job, "FailureTarget") or {}
    reason = condition.get("reason") or "JobFailed"
    result = _result(pods)
    if result and result.message:
        return JobView("Failed", result.reason or reason, result.message, result)
    if reason == "DeadlineExceeded":
        message = "the optimization ran past spec.scheduling.timeout; raise it or shrink the work"
    else:
        message = condition.get("message") or "the optimization Job failed"
    return JobView("Failed", reason, message, result)


def _pod_view(pod: Obj | None, create_failure: str | None = None) -> JobView:
    if pod is None and create_failure:
        # Quota, Pod Security, a missing ServiceAccount: the Job controller says why in an Event.
        return JobView(
            "Blocked", "FailedCreate", f"the Job cannot create its pod: {create_failure}"
        )
    if pod is None:
        return JobView("Pending", "PodPending", "waiting for the Job controller to create a pod")
    status = pod.get("status", {})
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return JobView(
                "Unschedulable",
                "Unschedulable",
                f"no node can run the Job yet: {condition.get('message', '')}".strip(),
            )
    for container in status.get("containerStatuses") or []:
        waiting = container.get("state", {}).get("waiting") or {}
        if waiting.get("reason") in _BLOCKED_REASONS:
            what = _BLOCKED_REASONS[waiting["reason"]]
            detail = waiting.get("message") or waiting["reason"]
            return JobView("Blocked", waiting["reason"], f"{what}: {detail}")
    if status.get("phase") == "Running":
        return JobView("Running", "JobRunning", "optimizing")
    return JobView("Pending", "PodPending", f"pod {pod['metadata']['name']} is starting")


def view_job(job: Obj, pods: list[Obj], create_failure: str | None = None) -> JobView:
    """Interpret a Job, the pods it owns, and why it could not create one (its latest
    FailedCreate Event), if it could not."""
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        result = _result(pods)
        return JobView("Succeeded", "JobSucceeded", "optimization finished", result)
    if _condition(job, "Failed") or _condition(job, "FailureTarget"):
        return _failed(job, pods)
    if job.get("spec", {}).get("suspend"):
        return JobView("Suspended", "Queued", "the Job is queued (suspended) until Kueue admits it")
    active = [p for p in pods if p.get("status", {}).get("phase") in ("Pending", "Running")]
    return _pod_view(_newest(active), create_failure)


def parse_progress(log_tail: str) -> Progress | None:
    """The last progress line the runner printed, if any."""
    for line in reversed(log_tail.splitlines()):
        line = line.strip()
        if not line.startswith("{") or _PROGRESS_KEY not in line:
            continue
        try:
            return Progress.model_validate(json.loads(line)[_PROGRESS_KEY])
        except (ValueError, ValidationError, TypeError, KeyError):
            continue
    return None
