"""The validating webhook on a real API server: refusals at `kubectl apply` time."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster.kube import Cluster
from tests.integration.operator.harness import (
    OperatorProcess,
    condition,
    mopt,
    status_of,
    wait_until,
)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _certificates(directory: Path) -> Path:
    """A CA and a serving certificate for 127.0.0.1 (what the chart generates in a cluster)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=kiln-webhook-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "tls.crt",
    )
    return directory


class HangingServer:
    """A TCP server that accepts connections and never answers: a hung Triton."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def hung_triton() -> Iterator[HangingServer]:
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def webhook_operator(
    kube: Cluster, tmp_path_factory: pytest.TempPathFactory, hung_triton: HangingServer
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("webhook")
    port = _free_port()
    process = OperatorProcess(
        kube,
        workdir,
        webhook="true",
        webhook_port=str(port),
        webhook_cert_dir=str(_certificates(workdir)),
        webhook_url=f"https://127.0.0.1:{port}",
        default_store="pvc://artifacts/kiln",
        # Every smoke test of this module's resources hangs until its timeout.
        smoke_endpoint=f"http://127.0.0.1:{hung_triton.port}",
        smoke_timeout_seconds="120",
    ).start()
    wait_until(
        "the webhook configuration",
        lambda: (
            kube.kubectl(
                "get",
                "validatingwebhookconfiguration",
                "validate.modeloptimizations.kiln.dev",
                check=False,
            ).returncode
            == 0
        ),
        describe=process.log,
    )
    yield process
    process.stop()
    kube.kubectl(
        "delete",
        "validatingwebhookconfiguration",
        "validate.modeloptimizations.kiln.dev",
        check=False,
    )


def _apply(kube: Cluster, namespace: str, body: dict) -> subprocess.CompletedProcess[str]:
    return kube.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False
    )


def test_webhook_refuses_what_the_schema_allows(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str
) -> None:
    body = mopt(
        "backwards", techniques=[{"ptq": {"format": "fp8"}}, {"pruneDistill": {"targetLayers": 20}}]
    )
    proc = wait_until(
        "the webhook to answer",
        lambda: (p := _apply(kube, namespace, body)) and "admission webhook" in p.stderr and p,
        describe=webhook_operator.log,
    )
    assert proc.returncode != 0
    assert "spec.techniques[1].pruneDistill: prune before quantizing" in proc.stderr


def test_webhook_refuses_nvfp4_on_hopper(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str
) -> None:
    body = mopt(
        "fp4",
        techniques=[{"ptq": {"format": "nvfp4"}}],
        resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3"},
    )
    proc = _apply(kube, namespace, body)
    assert proc.returncode != 0 and "needs an NVIDIA Blackwell" in proc.stderr


def test_webhook_reads_the_gpu_family_from_node_labels(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str
) -> None:
    from tests.cluster.nodes import GpuProduct

    kube.add_node(
        "gpu-mystery-0", gpu=GpuProduct("Vendor-Mystery-Card", 24576, "ampere", 8, 6), gpus=2
    )
    body = mopt("mystery", resources={"gpuProduct": "Vendor-Mystery-Card"})
    proc = _apply(kube, namespace, body)
    assert proc.returncode != 0
    assert "fp8 needs an NVIDIA Ada or newer GPU, but Vendor-Mystery-Card is Ampere" in proc.stderr


def test_webhook_admits_a_good_spec(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str
) -> None:
    proc = _apply(kube, namespace, mopt("fine"))
    assert proc.returncode == 0, proc.stderr


def test_webhook_refuses_tensor_parallelism_beyond_one_node(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str
) -> None:
    body = mopt(
        "too-wide",
        engine={"backend": "tensorrt-llm", "tensorParallel": 16},
        resources={"gpus": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
    )
    proc = _apply(kube, namespace, body)
    assert proc.returncode != 0
    assert "= 16 GPUs, but the largest node with NVIDIA-H100-80GB-HBM3 has 8" in proc.stderr
    assert (
        _apply(
            kube, namespace, mopt("fits", engine={"tensorParallel": 8}, resources={"gpus": 8})
        ).returncode
        == 0
    )


def test_a_delete_finishes_when_the_checks_would_now_refuse(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str
) -> None:
    from tests.cluster.nodes import GpuProduct

    # A GPU whose generation only the node labels tell: Hopper, so fp8 is admitted.
    kube.add_node(
        "gpu-shifty-0", gpu=GpuProduct("Vendor-Shifty-Card", 81920, "hopper", 9, 0), gpus=2
    )
    body = mopt("shifty", resources={"gpuProduct": "Vendor-Shifty-Card"})
    assert _apply(kube, namespace, body).returncode == 0
    wait_until(
        "the operator's finalizer",
        lambda: kube.get("mopt", "shifty", namespace)["metadata"].get("finalizers"),
        describe=webhook_operator.log,
    )
    # The pool now reports Ampere: the same spec would be refused on CREATE.
    kube.kubectl("label", "node", "gpu-shifty-0", "nvidia.com/gpu.family=ampere", "--overwrite")
    assert _apply(kube, namespace, {**body, "metadata": {"name": "shifty-2"}}).returncode != 0
    # Metadata-only updates and the delete (the finalizer's removal) still go through.
    kube.kubectl("label", "mopt", "shifty", "-n", namespace, "team=a")
    proc = kube.kubectl("delete", "mopt", "shifty", "-n", namespace, "--timeout=60s", check=False)
    assert proc.returncode == 0, proc.stderr
    assert kube.kubectl("get", "mopt", "shifty", "-n", namespace, check=False).returncode != 0


def _grant(kube: Cluster, namespace: str, user: str, name: str, rules: list[dict]) -> None:
    kube.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{name}-{user}"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]},
        namespace=namespace,
    )  # fmt: skip


def test_a_user_cannot_borrow_kilns_access_to_secrets_and_volumes(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    kube.kubectl("create", "secret", "generic", "hf-team", "-n", ns, "--from-literal=HF_TOKEN=x")
    editor = [
        {"apiGroups": ["kiln.dev"], "resources": ["modeloptimizations"],
         "verbs": ["get", "list", "create", "update", "patch"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames":
         ["artifacts"], "verbs": ["get"]},
    ]  # fmt: skip
    for user in ("alice", "bob"):
        _grant(kube, ns, user, "mopt-editor", editor)
    secret = [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hf-team"],
               "verbs": ["get"]}]  # fmt: skip
    volume = [{"apiGroups": [""], "resources": ["persistentvolumeclaims"],
               "resourceNames": ["models"], "verbs": ["get"]}]  # fmt: skip
    _grant(kube, ns, "alice", "read-hf-team", secret)
    _grant(kube, ns, "alice", "read-models", volume)

    def apply_as(user: str, body: dict) -> subprocess.CompletedProcess[str]:
        return kube.kubectl(
            f"--as={user}", "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body), check=False
        )

    with_secret = mopt(
        "private", model={"source": "hf://org/private-model", "credentialsSecret": "hf-team"}
    )
    refused = apply_as("bob", with_secret)
    assert refused.returncode != 0
    assert "spec.model.credentialsSecret: bob may not read Secret hf-team" in refused.stderr, (
        refused.stderr
    )
    assert apply_as("alice", with_secret).returncode == 0
    on_volume = mopt("on-volume", model={"source": "pvc://models/llama"})
    refused = apply_as("bob", on_volume)
    assert refused.returncode != 0
    assert "bob may not read PersistentVolumeClaim models" in refused.stderr, refused.stderr
    assert apply_as("alice", on_volume).returncode == 0
    # The platform's policy holds for everybody (the chart allows ClusterIP only by default).
    exposed = mopt("exposed", serving={"service": {"type": "LoadBalancer"}})
    refused = apply_as("alice", exposed)
    assert refused.returncode != 0 and "LoadBalancer is not allowed here" in refused.stderr


def test_admission_answers_while_smoke_tests_hang(
    kube: Cluster, webhook_operator: OperatorProcess, namespace: str, hung_triton: HangingServer
) -> None:
    kube.create_bound_pvc(namespace, "artifacts")
    names = [f"hung-{i}" for i in range(8)]
    for name in names:
        assert (
            _apply(kube, namespace, mopt(name, serving={"smokeTest": {"enabled": True}})).returncode
            == 0
        )

    def smoke_testing() -> bool:
        reasons = [
            condition(status_of(kube, namespace, name), "Reconciling").get("reason")
            for name in names
        ]
        return reasons == ["SmokeTesting"] * len(names)

    wait_until("8 smoke tests in flight", smoke_testing, timeout=180, describe=webhook_operator.log)
    assert len(hung_triton.held) >= 4  # the smoke pool's threads are all stuck
    started = time.monotonic()
    late = _apply(kube, namespace, mopt("late"))
    elapsed = time.monotonic() - started
    print(f"admission with {len(hung_triton.held)} hung smoke tests: {elapsed:.2f}s")
    assert late.returncode == 0, late.stderr
    assert elapsed < 5, f"admission took {elapsed:.1f}s (the webhook times out at 10s)"
    # Reconciles go on too: the late resource (the same recipe, so already published) is
    # reconciled and rolled out while the smoke tests hang.
    wait_until(
        "the late resource reconciled",
        lambda: status_of(kube, namespace, "late").get("status", {}).get("observedGeneration"),
        timeout=30,
        describe=webhook_operator.log,
    )
    # Told to stop (SIGTERM, as when its pod is deleted), the operator exits well inside the
    # default 30 s grace period: hung smoke requests do not hold it up. (This is the module's
    # last test; the fixture's own stop is then a no-op.)
    began = time.monotonic()
    webhook_operator.stop(timeout=60)
    assert not webhook_operator.alive()
    assert time.monotonic() - began < 15, webhook_operator.log()[-2000:]
