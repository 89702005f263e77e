"""What a platform team watches: Prometheus metrics, JSON logs, and two replicas that never
both act (kopf peering with distinct priorities)."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.kube import REPO_ROOT, Cluster
from tests.integration.operator.harness import (
    OperatorProcess,
    condition,
    mopt,
    status_of,
    wait_until,
)

pytestmark = pytest.mark.integration
_SERVING = "app.kubernetes.io/component=serving"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(kube: Cluster, ns: str, name: str, operator: OperatorProcess) -> None:
    wait_until(
        f"{name} Ready",
        lambda: condition(status_of(kube, ns, name), "Ready").get("status") == "True",
        timeout=120,
        describe=operator.log,
    )


def _peer_priorities(kube: Cluster) -> list[int]:
    got = kube.kubectl("get", "clusterkopfpeering", "kiln-test", "-o", "json", check=False)
    if got.returncode != 0:
        return []
    peers = (json.loads(got.stdout).get("status") or {}).values()
    return sorted(int(peer["priority"]) for peer in peers if peer)


def test_metrics_and_json_logs(kube: Cluster, namespace: str, tmp_path: Path) -> None:
    kube.create_bound_pvc(namespace, "artifacts")
    port = _free_port()
    # Only this namespace: the gauges count every resource the operator watches, and earlier
    # tests leave theirs behind in other namespaces.
    operator = OperatorProcess(
        kube,
        tmp_path,
        args=("--standalone", "--json-logs", "--namespace", namespace),
        metrics_port=str(port),
    ).start()
    try:
        kube.apply(mopt("watched"), namespace=namespace)
        _ready(kube, namespace, "watched", operator)

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()

        def scrape_when_ready() -> str:
            metrics = scrape()
            return metrics if 'kiln_model_optimizations{phase="Ready"} 1.0' in metrics else ""

        # The gauges follow the status write, so a scrape right after it may lag by one step.
        metrics = wait_until("the Ready gauge", scrape_when_ready, timeout=30, describe=scrape)
        reconciles = [
            line
            for line in metrics.splitlines()
            if line.startswith('kiln_reconciles_total{outcome="Ready"}')
        ]
        assert reconciles and float(reconciles[0].split()[-1]) >= 1
        assert 'kiln_model_optimizations{phase="Deploying"} 0.0' in metrics
        assert "kiln_phase_seconds_bucket" in metrics
        assert "kiln_reconcile_seconds_count" in metrics
    finally:
        operator.stop()
    lines = [line for line in operator.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any("created Job watched-opt-" in r["message"] for r in records)
    assert all({"levelname", "name", "message"} <= set(r) for r in records)


def test_two_replicas_never_both_act(kube: Cluster, namespace: str, tmp_path: Path) -> None:
    peering_crds = REPO_ROOT / "charts" / "kiln" / "crds" / "kopf-peering.yaml"
    kube.kubectl("apply", "--server-side", "-f", str(peering_crds))
    kube.wait_for("crd/clusterkopfpeerings.kopf.dev", None, condition="Established")
    kube.apply(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": "kiln-test"},
        }
    )
    kube.create_bound_pvc(namespace, "artifacts")
    leader = OperatorProcess(
        kube, tmp_path / "a", args=("--peering", "kiln-test", "--priority", "200", "-v")
    )
    standby = OperatorProcess(
        kube, tmp_path / "b", args=("--peering", "kiln-test", "--priority", "100", "-v")
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        # The leader registers first, so the standby starts paused and never resumes (kopf
        # logs "Pausing operations" only when a running operator pauses, not at start).
        leader.start()
        wait_until("the leader to register", lambda: _peer_priorities(kube) == [200], 90)
        standby.start()
        wait_until(
            "the standby to register",
            lambda: _peer_priorities(kube) == [100, 200],
            timeout=90,
            describe=standby.log,
        )
        wait_until(
            "the standby's watch on ModelOptimizations to pause",
            lambda: "Pausing the watch-stream for modeloptimizations" in standby.log(),
            timeout=60,
            describe=standby.log,
        )
        kube.apply(mopt("shared"), namespace=namespace)
        _ready(kube, namespace, "shared", leader)
        assert "created Job shared-opt-" in leader.log()
        assert "created Job shared-opt-" not in standby.log()
        assert "Resuming the watch-stream for modeloptimizations" not in standby.log()
        jobs = json.loads(kube.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)
        assert len(jobs["items"]) == 1

        # The leader goes away: the standby takes over and keeps the resource converged.
        leader.stop()
        wait_until(
            "the standby to resume",
            lambda: "Resuming operations after the pause" in standby.log(),
            timeout=120,
            describe=standby.log,
        )
        kube.apply(
            mopt("shared", serving={"replicas": 2, "smokeTest": {"enabled": False}}),
            namespace=namespace,
        )
        serving = ["get", "deployment", "-n", namespace, "-o", "json", "-l", _SERVING]
        wait_until(
            "the standby to scale Triton",
            lambda: json.loads(kube.kubectl(*serving).stdout)["items"][0]["spec"]["replicas"] == 2,
            timeout=60,
            describe=standby.log,
        )
    finally:
        leader.stop()
        standby.stop()
        kube.kubectl("delete", "clusterkopfpeering", "kiln-test", check=False)


def test_an_operator_without_its_peering_says_so_and_exits(kube: Cluster, tmp_path: Path) -> None:
    # Whether or not this cluster has the peering CRDs by now, this peering does not exist.
    operator = OperatorProcess(kube, tmp_path, args=("--peering", "nobody-made-this")).start()
    try:
        wait_until("the operator to exit", lambda: not operator.alive(), timeout=60)
        assert operator.proc is not None and operator.proc.returncode == 2
        log = operator.log()
        assert "kopf peering" in log and "--standalone" in log, log[-2000:]
        assert "Traceback" not in log
    finally:
        operator.stop()
