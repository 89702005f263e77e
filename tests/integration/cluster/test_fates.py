"""Pod fates chosen by label drive the real Job, Deployment and garbage-collector controllers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster.kube import Cluster
from tests.cluster.stages import ANNOTATION_EXIT_CODE, ANNOTATION_MESSAGE
from tests.integration.cluster.manifests import deployment, job

pytestmark = pytest.mark.integration

FAIL_ON_USER_ERROR = [
    {
        "action": "FailJob",
        "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]},
    },
]
IGNORE_DISRUPTIONS = [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return None


def _wait_pods(
    kube: Cluster, namespace: str, app: str, count: int, phase: str
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    pods: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pods = kube.pods(namespace, f"app={app}")
        if len(pods) >= count and pods[count - 1]["status"].get("phase") == phase:
            return pods
        time.sleep(0.2)
    raise AssertionError(
        f"wanted {count} pods, the last {phase}; got {[p['status'].get('phase') for p in pods]}"
    )


def test_exit_code_under_fail_job_rule_fails_the_job_at_once(kube: Cluster, namespace: str) -> None:
    annotations = {ANNOTATION_EXIT_CODE: "42", ANNOTATION_MESSAGE: "calibration data not found"}
    kube.apply(job("user-error", fate="fail", annotations=annotations, backoff_limit=6,
                   pod_failure_policy=FAIL_ON_USER_ERROR), namespace=namespace)  # fmt: skip
    kube.wait_for("job/user-error", namespace, condition="Failed")
    done = kube.get("job", "user-error", namespace)
    failed = _condition(done, "Failed")
    assert failed is not None and failed["reason"] == "PodFailurePolicy"
    assert "exit code 42" in failed["message"]
    assert _condition(done, "FailureTarget") is not None
    assert done["status"]["failed"] == 1
    (p,) = kube.pods(namespace, "app=user-error")  # no retry despite backoffLimit 6
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["message"]) == (42, "calibration data not found")


def test_other_exit_codes_are_retried_up_to_the_backoff_limit(
    kube: Cluster, namespace: str
) -> None:
    kube.apply(job("crash", fate="fail", annotations={ANNOTATION_EXIT_CODE: "3"}, backoff_limit=1,
                   pod_failure_policy=FAIL_ON_USER_ERROR), namespace=namespace)  # fmt: skip
    kube.wait_for("job/crash", namespace, condition="Failed", timeout=90)
    done = kube.get("job", "crash", namespace)
    assert _condition(done, "Failed")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
    assert done["status"]["failed"] == 2
    assert len(kube.pods(namespace, "app=crash")) == 2


def test_oom_killed_pod(kube: Cluster, namespace: str) -> None:
    kube.apply(job("oom", fate="oom", backoff_limit=0), namespace=namespace)
    kube.wait_for("job/oom", namespace, condition="Failed")
    (p,) = kube.pods(namespace, "app=oom")
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "OOMKilled")


def test_disrupted_pod_is_retried_without_counting(kube: Cluster, namespace: str) -> None:
    # backoffLimit 0: a single counted failure would fail the Job.
    kube.apply(job("preempted", fate="run-forever", backoff_limit=0,
                   pod_failure_policy=IGNORE_DISRUPTIONS), namespace=namespace)  # fmt: skip
    first = _wait_pods(kube, namespace, "preempted", 1, "Running")[0]
    kube.set_fate(namespace, first["metadata"]["name"], "disrupt")
    second = _wait_pods(kube, namespace, "preempted", 2, "Running")[1]
    kube.set_fate(namespace, second["metadata"]["name"], "succeed")
    kube.wait_for("job/preempted", namespace, condition="Complete")

    done = kube.get("job", "preempted", namespace)
    assert done["status"].get("failed", 0) == 0
    assert done["status"]["succeeded"] == 1
    gone = kube.get("pod", first["metadata"]["name"], namespace)
    assert gone["status"]["phase"] == "Failed"
    disruption = _condition(gone, "DisruptionTarget")
    assert disruption is not None and disruption["status"] == "True"


def test_disruption_without_an_ignore_rule_counts(kube: Cluster, namespace: str) -> None:
    kube.apply(job("counted", fate="disrupt", backoff_limit=0), namespace=namespace)
    kube.wait_for("job/counted", namespace, condition="Failed")
    assert kube.get("job", "counted", namespace)["status"]["failed"] == 1


def test_deployment_becomes_available_with_ready_pods_and_endpoints(
    kube: Cluster, namespace: str
) -> None:
    kube.apply(deployment("triton", replicas=2), namespace=namespace)
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "triton"},
                "spec": {"selector": {"app": "triton"}, "ports": [{"port": 8000}]}},
               namespace=namespace)  # fmt: skip
    kube.wait_for("deployment/triton", namespace, condition="Available")
    dep = kube.get("deployment", "triton", namespace)
    assert dep["status"]["readyReplicas"] == 2
    for p in kube.pods(namespace, "app=triton"):
        assert _condition(p, "Ready")["status"] == "True"  # type: ignore[index]
    # The endpointslice controller publishes both ready pods behind the Service.
    kube.wait_for("endpointslice", namespace, selector="kubernetes.io/service-name=triton",
                  jsonpath="{.endpoints[1].conditions.ready}=true")  # fmt: skip


def test_never_ready_deployment_misses_its_progress_deadline(kube: Cluster, namespace: str) -> None:
    kube.apply(deployment("stuck", fate="never-ready", progress_deadline=3), namespace=namespace)
    progressing = "{.status.conditions[?(@.type=='Progressing')].reason}"
    kube.wait_for("deployment/stuck", namespace, jsonpath=f"{progressing}=ProgressDeadlineExceeded")
    dep = kube.get("deployment", "stuck", namespace)
    assert _condition(dep, "Available")["status"] == "False"  # type: ignore[index]
    (p,) = kube.pods(namespace, "app=stuck")
    assert p["status"]["phase"] == "Running"
    assert _condition(p, "Ready")["status"] == "False"  # type: ignore[index]


def test_crashing_deployment_pod_loops(kube: Cluster, namespace: str) -> None:
    kube.apply(deployment("crashy", fate="fail"), namespace=namespace)
    waiting = "{.status.containerStatuses[0].state.waiting.reason}"
    kube.wait_for("pods", namespace, selector="app=crashy", jsonpath=f"{waiting}=CrashLoopBackOff")


def test_deleting_the_owner_removes_its_job_and_pods(kube: Cluster, namespace: str) -> None:
    kube.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = kube.get("configmap", "owner", namespace)["metadata"]["uid"]
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid,
             "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    kube.apply(job("owned", fate="run-forever", owner=owner), namespace=namespace)
    _wait_pods(kube, namespace, "owned", 1, "Running")

    kube.kubectl("delete", "configmap", "owner", "-n", namespace)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = kube.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.split()
        if not jobs and not kube.pods(namespace, "app=owned"):
            return
        time.sleep(0.3)
    raise AssertionError("the garbage collector did not remove the owned Job and pods")


def test_unknown_fate_fails_loudly(kube: Cluster, namespace: str) -> None:
    kube.apply(job("typo", fate="sucess", backoff_limit=0), namespace=namespace)
    kube.wait_for("job/typo", namespace, condition="Failed")
    (p,) = kube.pods(namespace, "app=typo")
    assert (
        'unknown test.kiln.dev/fate "sucess"'
        in p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )
