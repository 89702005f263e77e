"""The operator with real Kueue: a queued resource waits for quota, shows Queued, and runs when
Kueue admits its Job (no test unsuspends anything)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.kube import Cluster
from tests.integration.cluster.test_kueue import _queues
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


def _phase(kube: Cluster, ns: str, name: str) -> str | None:
    return (status_of(kube, ns, name).get("status") or {}).get("phase")


def test_kueue_holds_a_resource_until_quota_frees(
    kueue: Cluster, namespace: str, tmp_path: Path
) -> None:
    kube, ns = kueue, namespace
    kube.create_bound_pvc(ns, "artifacts")
    cq = _queues(kube, ns, gpus=8)
    watch = MoptWatch(kube, ns)
    operator = OperatorProcess(kube, tmp_path).start()
    fate = {"test.kiln.dev/fate": "run-forever"}
    try:
        hog = mopt("hog", resources={"gpus": 8}, scheduling={"queueName": "lq", "podLabels": fate})
        kube.apply(hog, namespace=ns)
        wait_until(
            "the first to run",
            lambda: _phase(kube, ns, "hog") == "Optimizing",
            describe=operator.log,
        )
        kube.apply(mopt("waiter", scheduling={"queueName": "lq"}), namespace=ns)
        wait_until(
            "the second to queue",
            lambda: _phase(kube, ns, "waiter") == "Queued",
            describe=operator.log,
        )
        reconciling = condition(status_of(kube, ns, "waiter"), "Reconciling")
        assert reconciling["reason"] == "Queued" and "Kueue" in reconciling["message"]
        job = json.loads(
            kube.kubectl(
                "get", "jobs", "-n", ns, "-l", "kiln.dev/model-optimization=waiter", "-o", "json"
            ).stdout
        )
        assert job["items"][0]["spec"]["suspend"] is True
        assert job["items"][0]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lq"

        # The first finishes; Kueue admits the second by itself.
        pod = kube.pods(ns, "kiln.dev/model-optimization=hog,app.kubernetes.io/component=optimize")
        let_the_runner_finish(kube, ns, pod[0]["metadata"]["name"])
        wait_until(
            "the second to be Ready",
            lambda: condition(status_of(kube, ns, "waiter"), "Ready").get("status") == "True",
            timeout=120,
            describe=operator.log,
        )
    finally:
        operator.stop()
        watch.close()
        kube.kubectl("delete", "clusterqueue", cq, "--wait=false", check=False)
