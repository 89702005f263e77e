"""pytest fixtures for the real test cluster (registered by ``tests/conftest.py``).

* ``kube`` (session): a started :class:`tests.cluster.kube.Cluster`.
* ``namespace`` (function): a fresh namespace, deleted afterwards.
* ``restricted_namespace`` (function): the same, enforcing the ``restricted`` Pod Security
  Standard.
* ``make_namespace`` (function): a factory, ``make_namespace(labels={...}) -> name``.
* ``local_exec_node`` (session): a node whose pods the local executor runs for real.
* ``kueue`` (session): the same cluster with Kueue running (installed on first use).
* ``minio`` (session): a real MinIO server (no cluster needed), buckets ``kiln`` and ``models``.

A test that uses the cluster and fails gets a report section listing every component's log.
If the binaries are not built the fixture fails (never skips) and says to run
``make cluster-bins``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.kube import REPO_ROOT, Cluster, ClusterBinariesMissing
from tests.cluster.minio import MinIO

__all__ = [
    "kube",
    "kueue",
    "local_exec_node",
    "make_namespace",
    "minio",
    "namespace",
    "restricted_namespace",
]

_CLUSTER_KEY = pytest.StashKey[Cluster]()
#: Debugging aid: a directory of CRDs to install instead of crds/ ("" installs none).
CRDS_ENV = "KILN_TEST_CLUSTER_CRDS"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's cluster: started once, stopped (and checked for leftovers) at the end."""
    crds = os.environ.get(CRDS_ENV)
    crds_dir = REPO_ROOT / "crds" if crds is None else (Path(crds) if crds else None)
    cluster = Cluster(crds_dir=crds_dir)
    try:
        cluster.start()
    except ClusterBinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    request.config.stash[_CLUSTER_KEY] = cluster
    yield cluster
    stragglers = cluster.stop()
    if request.session.testsfailed:
        print(f"\n{cluster.describe_logs()}")
    else:
        cluster.remove()
    if stragglers:
        raise RuntimeError(f"processes outlived their components and were killed: {stragglers}")


@pytest.fixture(scope="session")
def local_exec_node(kube: Cluster) -> str:
    """Name of a tainted H100 node whose pods the local executor really runs.

    Pods get there with ``nodeSelector`` ``nodes.LOCAL_EXEC_NODE_SELECTOR`` and toleration
    ``nodes.LOCAL_EXEC_TOLERATION``.
    """
    return kube.add_local_exec_node("local-exec-0")


@pytest.fixture(scope="session")
def kueue(kube: Cluster) -> Cluster:
    """The session's cluster with Kueue installed and running (started on first use)."""
    try:
        kube.enable_kueue()
    except ClusterBinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return kube


@pytest.fixture(scope="session")
def minio() -> Iterator[MinIO]:
    """A MinIO server for the session (S3 for the store tests)."""
    try:
        server = MinIO().start()
    except ClusterBinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40].strip("-")


@pytest.fixture
def make_namespace(kube: Cluster, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Factory for namespaces named after the test; all are deleted after it."""
    made: list[str] = []

    def make(labels: dict[str, str] | None = None) -> str:
        name = f"{_slug(request.node.name)}-{uuid.uuid4().hex[:6]}"
        manifest: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}},
        }
        kube.apply(manifest)
        made.append(name)
        return name

    yield make
    for name in made:
        # Deletion finishes in the background (the namespace controller); tests never wait.
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(make_namespace: Callable[..., str]) -> str:
    """A fresh namespace for one test."""
    return make_namespace()


@pytest.fixture
def restricted_namespace(make_namespace: Callable[..., str]) -> str:
    """A fresh namespace that enforces the ``restricted`` Pod Security Standard."""
    return make_namespace(labels=RESTRICTED)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the cluster's log paths to the report of a failed test that used it."""
    report = yield
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if report.failed and cluster is not None and "kube" in getattr(item, "fixturenames", ()):
        report.sections.append(("test cluster logs", cluster.describe_logs()))
    return report
