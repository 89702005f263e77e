"""A flaky control plane: injected 500s, 409s, timeouts and dropped watches on the way to the
real API server. The operator keeps going and converges, with no duplicate children."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.kube import Cluster
from tests.faults import FaultProxy, Rule
from tests.integration.operator.harness import (
    MoptWatch,
    OperatorProcess,
    condition,
    mopt,
    status_of,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(kube: Cluster, tmp_path: Path) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy.for_kubeconfig(kube.kubeconfig, tmp_path).start()
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture
def flaky_operator(kube: Cluster, proxy: FaultProxy, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kube, tmp_path, api_timeout_seconds="3")
    process.env["KUBECONFIG"] = str(proxy.kubeconfig())
    yield process
    process.stop()
    print(process.log()[-8000:])


def _ready(kube: Cluster, ns: str, name: str, operator: OperatorProcess) -> dict:
    return wait_until(
        f"{name} Ready",
        lambda: (
            (o := status_of(kube, ns, name)) and condition(o, "Ready").get("status") == "True" and o
        ),
        timeout=120,
        describe=operator.log,
    )


def _count(kube: Cluster, kind: str, ns: str) -> int:
    return len(json.loads(kube.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"])


@pytest.fixture
def ns(namespace: str, kube: Cluster) -> Iterator[str]:
    kube.create_bound_pvc(namespace, "artifacts")
    watch = MoptWatch(kube, namespace)
    yield namespace
    watch.close()


def test_server_errors_on_status_writes(
    kube: Cluster, proxy: FaultProxy, flaky_operator: OperatorProcess, ns: str
) -> None:
    errors = Rule("PATCH", r"/modeloptimizations/[^/]+/status", status=500, times=6)
    proxy.add(errors)
    flaky_operator.start()
    kube.apply(mopt("errors"), namespace=ns)
    obj = _ready(kube, ns, "errors", flaky_operator)
    assert errors.hits == 6
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert _count(kube, "jobs", ns) == 1


def test_conflicts_on_create(
    kube: Cluster, proxy: FaultProxy, flaky_operator: OperatorProcess, ns: str
) -> None:
    conflicts = Rule("POST", r"/namespaces/[^/]+/jobs", status=409, reason="AlreadyExists", times=2)
    throttled = Rule("PATCH", r"/deployments/", status=429, reason="TooManyRequests", times=2)
    proxy.add(conflicts, throttled)
    flaky_operator.start()
    kube.apply(mopt("conflicts"), namespace=ns)
    _ready(kube, ns, "conflicts", flaky_operator)
    assert conflicts.hits == 2 and throttled.hits == 2
    assert _count(kube, "jobs", ns) == 1 and _count(kube, "deployments", ns) == 1


def test_timeouts(
    kube: Cluster, proxy: FaultProxy, flaky_operator: OperatorProcess, ns: str
) -> None:
    hangs = Rule("GET", r"/apis/batch/v1/namespaces/[^/]+/jobs/", delay=10, times=3)
    proxy.add(hangs)
    flaky_operator.start()
    kube.apply(mopt("slow"), namespace=ns)
    _ready(kube, ns, "slow", flaky_operator)
    assert hangs.hits >= 1
    assert _count(kube, "jobs", ns) == 1


def test_dropped_watch_streams(
    kube: Cluster, proxy: FaultProxy, flaky_operator: OperatorProcess, ns: str
) -> None:
    drops = Rule("GET", r"watch=", drop_after=2, times=0)
    proxy.add(drops)
    flaky_operator.start()
    kube.apply(mopt("dropped"), namespace=ns)
    _ready(kube, ns, "dropped", flaky_operator)
    # A spec change made while watches keep dropping is still picked up.
    kube.apply(
        mopt("dropped", serving={"replicas": 2, "smokeTest": {"enabled": False}}), namespace=ns
    )
    wait_until(
        "2 replicas",
        lambda: (
            json.loads(kube.kubectl("get", "deployment", "-n", ns, "-o", "json").stdout)["items"][
                0
            ]["spec"]["replicas"]
            == 2
        ),
    )
    assert drops.hits > 3
