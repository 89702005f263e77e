"""kwok Stage objects: how simulated nodes and pods live, and the pod fates tests choose.

kwok ships stock Stages (``kustomize/stage/`` in its module; ``build.sh`` copies them into the
cache). We load the node ones unchanged and add two selector expressions to the stock
``pod-ready``/``pod-complete`` Stages, as a kustomize patch would, so that they leave alone the
pods a test gave a fate and the pods the local executor runs. Our own Stages then implement
the fates. Every pod Stage here is mutually exclusive with the others, so kwok never has to
pick one by weight.

A fate is the pod label :data:`FATE_LABEL`; its parameters are pod annotations. Labels are
mutable, so a test can also relabel a running pod (e.g. a ``run-forever`` pod) to decide its
end at the moment it wants.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ANNOTATION_DELAY",
    "ANNOTATION_DISRUPTION_REASON",
    "ANNOTATION_EXIT_CODE",
    "ANNOTATION_MESSAGE",
    "FATES",
    "FATE_LABEL",
    "LOCAL_EXEC_NODE_PREFIX",
    "STOCK_STAGES",
    "all_stages",
    "fate_stages",
    "write_kwok_config",
]

FATE_LABEL = "test.kiln.dev/fate"
ANNOTATION_EXIT_CODE = "test.kiln.dev/exit-code"
ANNOTATION_MESSAGE = "test.kiln.dev/message"
ANNOTATION_DELAY = "test.kiln.dev/delay"
ANNOTATION_DISRUPTION_REASON = "test.kiln.dev/disruption-reason"

#: fate -> what happens once the pod is Running.
FATES = {
    "succeed": "exit 0, phase Succeeded (restartPolicy Never/OnFailure)",
    "fail": "exit code/message from annotations; Failed, or CrashLoopBackOff if restarted",
    "oom": "exit 137, reason OOMKilled; Failed, or CrashLoopBackOff if restarted",
    "disrupt": "phase Failed with a DisruptionTarget condition (preemption/eviction)",
    "never-ready": "Running, containers running, Ready=False forever",
    "run-forever": "Running and Ready, never terminates",
}

#: Nodes whose name starts with this are left to the local executor once their pods run.
#: kwok selectors see the pod only, so the node name is what tells them apart.
LOCAL_EXEC_NODE_PREFIX = "local-exec-"

#: Stock Stages used, relative to the copied ``kustomize/stage`` directory.
STOCK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)

_FATE_KEY = f'.metadata.labels["{FATE_LABEL}"]'
_ON_LOCAL_NODE = f'(.spec.nodeName // "") | startswith("{LOCAL_EXEC_NODE_PREFIX}")'
_NOT_DELETED = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_NOT_LOCAL = {"key": _ON_LOCAL_NODE, "operator": "NotIn", "values": ["true"]}
_READY_STATUS = '.status.conditions.[] | select( .type == "Ready" ) | .status'
# A long-running pod the local executor runs: it reports the pod's readiness itself.
_LOCAL_SERVICE = f'({_ON_LOCAL_NODE}) and (.spec.restartPolicy != "Never")'


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    expr: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        expr["values"] = list(values)
    return expr


def _restart_never(on: bool) -> dict[str, Any]:
    return _expr(".spec.restartPolicy", "In" if on else "NotIn", "Never")


def _stage(name: str, selector: list[dict[str, Any]], template: str) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": [_NOT_DELETED, _NOT_LOCAL, *selector]},
            "delay": {
                "durationMilliseconds": 0,
                "durationFrom": {"expressionFrom": f'.metadata.annotations["{ANNOTATION_DELAY}"]'},
            },
            "next": {"statusTemplate": textwrap.dedent(template).strip() + "\n"},
        },
    }


# Go-template preamble shared by the terminating fates: exit code and message come from the
# pod's annotations (sprig's `default` keeps the fallback when the annotation is absent).
_PARAMS = f"""
{{{{ $now := Now }}}}
{{{{ $ann := or .metadata.annotations dict }}}}
{{{{ $code := index $ann "{ANNOTATION_EXIT_CODE}" | default "__CODE__" }}}}
{{{{ $msg := index $ann "{ANNOTATION_MESSAGE}" | default "" }}}}
"""

_NOT_READY_CONDITIONS = """
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: __REASON__
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: __REASON__
  type: ContainersReady
"""

_TERMINATED = """
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {{ $code }}
      reason: __TREASON__
      message: {{ __MSG__ | Quote }}
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: __PHASE__
"""

# What a kubelet reports for a container that keeps exiting under restartPolicy Always/OnFailure.
_CRASHLOOP = """
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 1
  started: false
  lastState:
    terminated:
      exitCode: {{ $code }}
      reason: __TREASON__
      message: {{ $msg | Quote }}
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
  state:
    waiting:
      reason: CrashLoopBackOff
      message: back-off restarting failed container
{{ end }}
phase: Running
"""


def _terminal(code: str, treason: str, phase: str, ready_reason: str, msg: str = "$msg") -> str:
    body = _PARAMS + _NOT_READY_CONDITIONS + _TERMINATED
    return (
        body.replace("__CODE__", code)
        .replace("__MSG__", msg)
        .replace("__TREASON__", treason)
        .replace("__PHASE__", phase)
        .replace("__REASON__", ready_reason)
    )


def _crashloop(code: str, treason: str) -> str:
    body = _PARAMS + _NOT_READY_CONDITIONS + _CRASHLOOP
    return (
        body.replace("__CODE__", code)
        .replace("__TREASON__", treason)
        .replace("__REASON__", "ContainersNotReady")
    )


_DISRUPT = (
    _PARAMS
    + f"""
{{{{ $why := index $ann "{ANNOTATION_DISRUPTION_REASON}" | default "PreemptionByScheduler" }}}}
conditions:
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "True"
  type: DisruptionTarget
  reason: {{{{ $why | Quote }}}}
  message: {{{{ $msg | default "the pod was disrupted by the test cluster" | Quote }}}}
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  reason: PodFailed
  type: Ready
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  reason: PodFailed
  type: ContainersReady
"""
    + _TERMINATED.replace("__TREASON__", "Error")
    .replace("__PHASE__", "Failed")
    .replace("__MSG__", "$msg")
    + "reason: {{ $why | Quote }}\n"
).replace("__CODE__", "137")

_NEVER_READY = """
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
{{ with NodeIPWith .spec.nodeName }}
hostIP: {{ . | Quote }}
{{ end }}
{{ with PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
podIP: {{ . | Quote }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _running(fate: str) -> list[dict[str, Any]]:
    return [_expr(_FATE_KEY, "In", fate), _expr(".status.phase", "In", "Running")]


def fate_stages() -> list[dict[str, Any]]:
    """Our Stages, one per fate and restart policy; see :data:`FATES`."""
    unknown_selector = [
        _expr(_FATE_KEY, "Exists"),
        _expr(_FATE_KEY, "NotIn", *FATES),
        _expr(".status.phase", "In", "Running"),
    ]
    # The message names the bad fate so that a typo in a test fails loudly instead of hanging.
    bad_fate = f'(printf "unknown {FATE_LABEL} %q" (index $.metadata.labels "{FATE_LABEL}"))'
    unknown = _terminal("2", "Error", "Failed", "PodFailed", msg=bad_fate)
    return [
        _stage("kiln-fate-succeed", [*_running("succeed"), _restart_never(True)],
               _terminal("0", "Completed", "Succeeded", "PodCompleted")),
        _stage("kiln-fate-fail", [*_running("fail"), _restart_never(True)],
               _terminal("1", "Error", "Failed", "PodFailed")),
        _stage("kiln-fate-fail-restarting", [*_running("fail"), _restart_never(False)],
               _crashloop("1", "Error")),
        _stage("kiln-fate-oom", [*_running("oom"), _restart_never(True)],
               _terminal("137", "OOMKilled", "Failed", "PodFailed")),
        _stage("kiln-fate-oom-restarting", [*_running("oom"), _restart_never(False)],
               _crashloop("137", "OOMKilled")),
        _stage("kiln-fate-disrupt", _running("disrupt"), _DISRUPT),
        _stage("kiln-fate-never-ready",
               [_expr(_FATE_KEY, "In", "never-ready"),
                _expr(".status.phase", "In", "Pending", "Running"),
                _expr(_READY_STATUS, "NotIn", "False")],
               _NEVER_READY),
        _stage("kiln-fate-unknown", unknown_selector, unknown),
    ]  # fmt: skip


def _local_service_stage() -> dict[str, Any]:
    """A long-running pod on a local-exec node starts Running but not Ready: the executor runs
    its containers and reports Ready when their probes answer."""
    stage = _stage(
        "kiln-local-exec-service",
        [_expr(".status.phase", "In", "Pending"), _expr(_READY_STATUS, "NotIn", "False")],
        _NEVER_READY,
    )
    exprs = stage["spec"]["selector"]["matchExpressions"]
    exprs.remove(_NOT_LOCAL)
    exprs.append(_expr(_LOCAL_SERVICE, "In", "true"))
    return stage


def _patched_stock(stock: dict[str, Any]) -> dict[str, Any]:
    stage = copy.deepcopy(stock)
    name = stage["metadata"]["name"]
    exprs = stage["spec"]["selector"]["matchExpressions"]
    if name == "pod-ready":
        # never-ready pods and the executor's long-running pods get their own Stages.
        exprs.append(_expr(_FATE_KEY, "NotIn", "never-ready"))
        exprs.append(_expr(_LOCAL_SERVICE, "NotIn", "true"))
    elif name == "pod-complete":
        # A fate decides how the pod ends; the executor decides for its own pods.
        exprs.append(_expr(_FATE_KEY, "DoesNotExist"))
        exprs.append(_NOT_LOCAL)
    return stage


def all_stages(stock_dir: Path) -> list[dict[str, Any]]:
    """The stock Stages (pod ones patched) followed by the fate Stages.

    Args:
        stock_dir: The copy of kwok's ``kustomize/stage`` directory.
    """
    stock = [yaml.safe_load((stock_dir / rel).read_text()) for rel in STOCK_STAGES]
    return [_patched_stock(s) for s in stock] + fate_stages() + [_local_service_stage()]


def write_kwok_config(stock_dir: Path, path: Path) -> Path:
    """Write every Stage as one multi-document YAML for ``kwok --config``."""
    path.write_text(yaml.safe_dump_all(all_stages(stock_dir), sort_keys=False))
    return path
