"""The API server is a real one: RBAC, TokenRequest, Pod Security admission, kubectl/helm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import install_kube_tools
from tests.cluster.kube import Cluster
from tests.integration.cluster.manifests import RESTRICTED_SECURITY, pod

pytestmark = pytest.mark.integration


def _as_token(
    kube: Cluster, token: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    kubeconfig = kube.kubeconfig_for_token(token, tmp_path / "sa.kubeconfig")
    cmd = [kube._kubectl, f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_rbac_denies_a_fresh_service_account_until_granted(
    kube: Cluster, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    kube.kubectl("create", "secret", "generic", "s1", "-n", namespace, "--from-literal=k=v")
    token = kube.sa_token(namespace, "robot")

    denied = _as_token(kube, token, tmp_path, "get", "secrets", "-n", namespace)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f"system:serviceaccount:{namespace}:robot" in denied.stderr

    # The token itself is valid: the same request succeeds once RBAC allows it.
    kube.kubectl("create", "role", "read-secrets", "-n", namespace, "--verb=list,get",
                 "--resource=secrets")  # fmt: skip
    kube.kubectl("create", "rolebinding", "robot-reads", "-n", namespace, "--role=read-secrets",
                 f"--serviceaccount={namespace}:robot")  # fmt: skip
    allowed = _as_token(kube, token, tmp_path, "get", "secrets", "-n", namespace, "-o", "name")
    assert allowed.returncode == 0, allowed.stderr
    assert "secret/s1" in allowed.stdout
    # ...and only there: other namespaces stay closed.
    other = _as_token(kube, token, tmp_path, "get", "secrets", "-n", "default")
    assert "Forbidden" in other.stderr


def test_a_garbage_token_is_unauthorized(kube: Cluster, tmp_path: Path) -> None:
    result = _as_token(kube, "not-a-token", tmp_path, "get", "namespaces")
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr or "provide credentials" in result.stderr


def test_restricted_namespace_rejects_a_privileged_pod(
    kube: Cluster, restricted_namespace: str
) -> None:
    bad = pod("privileged", security={"privileged": True})
    result = kube.kubectl("apply", "-n", restricted_namespace, "-f", "-",
                          input=json.dumps(bad), check=False)  # fmt: skip
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr
    assert "privileged" in result.stderr


def test_restricted_namespace_admits_a_restricted_pod_which_runs(
    kube: Cluster, restricted_namespace: str
) -> None:
    good = pod("restricted", security=RESTRICTED_SECURITY)
    kube.kubectl("apply", "-n", restricted_namespace, "-f", "-", input=json.dumps(good))
    kube.wait_for("pod/restricted", restricted_namespace, condition="Ready")


def test_service_account_admission_and_token_controller(kube: Cluster, namespace: str) -> None:
    # The serviceaccount controller makes "default" in every namespace; the root CA publisher
    # makes the ConfigMap that projected token volumes mount.
    kube.wait_for("serviceaccount/default", namespace, jsonpath="{.metadata.name}=default")
    kube.wait_for(
        "configmap/kube-root-ca.crt", namespace, jsonpath="{.metadata.name}=kube-root-ca.crt"
    )


def test_server_reports_the_built_version(kube: Cluster) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.35.4"


def test_helm_talks_to_the_cluster(kube: Cluster, namespace: str) -> None:
    helm = Path(kube._kubectl).with_name("helm")
    result = subprocess.run(
        [helm, "list", "-n", namespace, f"--kubeconfig={kube.kubeconfig}", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_kube_tools_are_installed_in_the_venv() -> None:
    bin_dir = Path(sys.prefix) / "bin"
    assert install_kube_tools.is_installed(bin_dir), "run `make kube-tools`"
    out = subprocess.run([bin_dir / "kubectl", "version", "--client"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "Client Version: v1.35" in out


def test_python_client_reaches_the_cluster(kube: Cluster) -> None:
    from kubernetes import client

    with kube.api_client() as api:
        names = {n.metadata.name for n in client.CoreV1Api(api).list_node().items if n.metadata}
    assert {"gpu-h100-0", "gpu-b200-0", "cpu-0"} <= names
