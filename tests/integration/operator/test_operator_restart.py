"""Killing the operator at any point loses nothing and duplicates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.kube import Cluster
from tests.integration.operator.harness import (
    MoptWatch,
    OperatorProcess,
    condition,
    let_the_runner_finish,
    mopt,
    status_of,
    wait_until,
)

pytestmark = pytest.mark.integration


def _count(kube: Cluster, kind: str, ns: str) -> int:
    return len(json.loads(kube.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"])


def test_killed_and_restarted_operator_converges_without_duplicates(
    kube: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    kube.create_bound_pvc(ns, "artifacts")
    watch = MoptWatch(kube, ns)
    operator = OperatorProcess(kube, tmp_path).start()
    try:
        body = mopt("phoenix", scheduling={"podLabels": {"test.kiln.dev/fate": "run-forever"}})
        kube.apply(body, namespace=ns)
        wait_until(
            "the Job's pod running",
            lambda: json.loads(kube.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"],
        )
        operator.kill()
        operator.start()
        operator.kill()  # killed again right after start, mid-reconcile
        operator.start()
        wait_until(
            "Optimizing",
            lambda: (
                (status_of(kube, ns, "phoenix").get("status") or {}).get("phase") == "Optimizing"
            ),
        )
        assert _count(kube, "jobs", ns) == 1
        assert _count(kube, "configmaps", ns) == 2  # the plan + kube-root-ca.crt
        pod = json.loads(kube.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"][0]
        let_the_runner_finish(kube, ns, pod["metadata"]["name"])
        operator.kill()
        operator.start()
        obj = wait_until(
            "Ready",
            lambda: (
                (o := status_of(kube, ns, "phoenix"))
                and condition(o, "Ready").get("status") == "True"
                and o
            ),
            describe=operator.log,
        )
        assert _count(kube, "jobs", ns) == 1
        assert _count(kube, "deployments", ns) == 1
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        annotations = obj["metadata"].get("annotations") or {}
        assert not [k for k in annotations if k.startswith("kiln.dev/") and "progress" in k], (
            "kopf left handler progress behind"
        )
        # kopf's finalizer lets it stop the resource's timer; it must not outlive the operator's
        # absence: delete while the operator is down, then start it, and the resource goes.
        assert obj["metadata"].get("finalizers") == ["kiln.dev/cleanup"]
        operator.kill()
        kube.kubectl("delete", "mopt", "phoenix", "-n", ns, "--wait=false")
        operator.start()
        wait_until(
            "the resource deleted",
            lambda: not status_of(kube, ns, "phoenix"),
            describe=operator.log,
        )
        wait_until("its Job collected", lambda: _count(kube, "jobs", ns) == 0)
    finally:
        operator.stop()
        watch.close()
        print(operator.log()[-10000:])
