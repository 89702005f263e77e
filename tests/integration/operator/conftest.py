"""Fixtures for the operator's integration tests: the real operator, a store, a watcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.kube import Cluster
from tests.integration.operator.harness import MoptWatch, OperatorProcess
from tests.integration.operator.runner_standin import RunnerStandIn


@pytest.fixture(autouse=True)
def jobs_publish(runner_standin: RunnerStandIn) -> RunnerStandIn:
    """Every operator test's kwok-run Jobs publish through the stand-in runner."""
    return runner_standin


@pytest.fixture(scope="module")
def operator(kube: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for a module's tests, watching every namespace."""
    process = OperatorProcess(kube, tmp_path_factory.mktemp("operator")).start()
    yield process
    process.stop()
    print(f"\n--- operator log ---\n{process.log()[-20000:]}")


@pytest.fixture
def ns(namespace: str, kube: Cluster) -> Iterator[str]:
    """A namespace with a bound `artifacts` PVC, watched with `kubectl get mopt -w`."""
    kube.create_bound_pvc(namespace, "artifacts")
    watch = MoptWatch(kube, namespace)
    yield namespace
    watch.close()


@pytest.fixture
def store(kube: Cluster, ns: str) -> Path:
    """The local directory behind pvc://artifacts in the test's namespace."""
    return kube.pvc_dir(ns, "artifacts")
