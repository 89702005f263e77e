"""A real Kubernetes control plane on loopback, with kwok nodes: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok and the local executor.

Importable by tests (:class:`Cluster`) and runnable by hand::

    python -m tests.cluster.kube        # prints one line KUBECONFIG=/abs/path, runs until Ctrl-C

The binaries come from ``tests/cluster/build.sh`` (``make cluster-bins``).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import crilog
from tests.cluster import nodes as nodes_mod
from tests.cluster.nodes import DEFAULT_NODES, NodeSpec, node_manifest
from tests.cluster.pki import Pki, make_pki
from tests.cluster.procs import Supervisor, free_port, reap_stale_runs
from tests.cluster.provisioner import storage_class
from tests.cluster.stages import LOCAL_EXEC_NODE_PREFIX, write_kwok_config

__all__ = [
    "CONTROLLERS",
    "REPO_ROOT",
    "Cluster",
    "ClusterBinariesMissing",
    "KubectlError",
    "cache_dir",
    "kwok_logs_crd",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

#: Controllers the flows need; the rest of kube-controller-manager's set stays off to keep
#: the cluster light. Names as ``kube-controller-manager --controllers`` spells them.
CONTROLLERS = (
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "endpointslice-controller",
    "endpoints-controller",
    "disruption-controller",
    "pod-garbage-collector-controller",
    "ttl-after-finished-controller",
    "resourcequota-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    # Aggregated ClusterRoles (e.g. a chart's aggregate-to-edit rules for the CRD).
    "clusterrole-aggregation-controller",
    "service-cidr-controller",
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ClusterBinariesMissing(RuntimeError):
    """The Go binaries are not built."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call; its message includes kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


def cache_dir() -> Path:
    """Where ``build.sh`` puts binaries and stock Stages."""
    return Path(os.environ.get("KILN_CLUSTER_CACHE", REPO_ROOT / ".cache" / "cluster"))


def kwok_logs_crd() -> Path:
    """kwok's ``Logs`` CRD, copied from its module by ``build.sh``."""
    return cache_dir() / "kwok-crds" / "kwok.x-k8s.io_logs.yaml"


def _find_kubectl() -> str:
    venv_kubectl = REPO_ROOT / ".venv" / "bin" / "kubectl"
    if venv_kubectl.exists():
        return str(venv_kubectl)
    here = Path(sys.prefix) / "bin" / "kubectl"
    if here.exists():
        return str(here)
    raise ClusterBinariesMissing("kubectl is not installed: run `make kube-tools`")


def _check_binaries(bin_dir: Path, stages_dir: Path) -> None:
    missing = [b for b in BINARIES if not (bin_dir / b).exists()]
    missing += [f.name for f in (stages_dir, kwok_logs_crd()) if not f.exists()]
    if missing:
        raise ClusterBinariesMissing(
            f"test cluster binaries missing in {bin_dir} ({', '.join(missing)}): "
            "run `make cluster-bins` (builds them from the pinned Go modules, ~10 min cold)"
        )


def _write_kubeconfig(path: Path, server: str, ca: Path, user: str, creds: dict[str, str]) -> Path:
    cluster = {"server": server, "certificate-authority": str(ca)}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kiln-test", "cluster": cluster}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "kiln-test", "context": {"cluster": "kiln-test", "user": user}}],
        "current-context": "kiln-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _kubeconfig(path: Path, server: str, pki: Pki, user: str) -> Path:
    client = pki.clients[user]
    creds = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    return _write_kubeconfig(path, server, pki.ca.cert, user, creds)


def _wait(what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    """The whole test control plane. Use :meth:`start`/:meth:`stop` or a ``with`` block.

    Attributes:
        run_dir: Temp directory of this run (logs in ``logs/``, PVC directories in ``pvc/``).
        kubeconfig: Admin kubeconfig (``system:masters``).
        server: The API server's URL.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec] = DEFAULT_NODES,
        crds_dir: Path | None = REPO_ROOT / "crds",
        executor: bool = True,
        base_tmp: Path | None = None,
        log: Callable[[str], None] | None = None,
        audit_policy: dict[str, Any] | None = None,
    ) -> None:
        """Configure, without starting anything.

        Args:
            nodes: Nodes to create at start.
            crds_dir: Directory whose ``*.yaml`` files are applied at start (may be empty), with
                kwok's Logs CRD, which is always installed.
            executor: Start the local executor for ``local-exec-*`` nodes.
            base_tmp: Parent of the run directory (system temp by default).
            log: Progress messages (to stderr by default).
            audit_policy: An ``audit.k8s.io/v1`` Policy: the API server then writes an audit
                log (JSON lines) to :attr:`audit_log`, e.g. to count a client's requests.
        """
        self._nodes = list(nodes)
        self._crds_dir = crds_dir
        self._with_executor = executor
        self._base_tmp = base_tmp
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._audit_policy = audit_policy
        self._sup: Supervisor | None = None
        self._kueue_started = False
        self._pki: Pki | None = None
        self._kubectl = ""
        self.kubeconfig = Path()
        self.server = ""
        self.run_dir = Path()

    @property
    def audit_log(self) -> Path:
        """Where the API server writes its audit log (with ``audit_policy`` only)."""
        return self.run_dir / "logs" / "audit.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start everything and wait until pods can be scheduled onto ready nodes."""
        bin_dir, stages_dir = cache_dir() / "bin", cache_dir() / "stages"
        _check_binaries(bin_dir, stages_dir)
        self._kubectl = _find_kubectl()
        for stale in reap_stale_runs(self._base_tmp):
            self._log(f"removed the leftovers of an earlier run: {stale}")
        started = time.monotonic()
        self._sup = Supervisor.create(self._base_tmp)
        self.run_dir = self._sup.run_dir
        try:
            self._start_all(bin_dir, stages_dir)
        except BaseException:
            self._log(self.describe_logs())
            self.stop()
            raise
        self._log(f"cluster ready in {time.monotonic() - started:.1f} s: {self.run_dir}")
        return self

    def _start_all(self, bin_dir: Path, stages_dir: Path) -> None:
        pki = self._pki = make_pki(self.run_dir / "pki")
        etcd_url = self._start_etcd(bin_dir)
        self._start_apiserver(bin_dir, etcd_url, pki)
        self._write_kubeconfigs(pki)
        health = {
            "kube-controller-manager": self._start_controller_manager(bin_dir, pki),
            "kube-scheduler": self._start_scheduler(bin_dir),
        }
        # kwok watches its Logs objects from the start, so their CRD comes first.
        self._install_crds()
        self._start_kwok(bin_dir, stages_dir, pki)
        self.apply(storage_class(), *(node_manifest(spec) for spec in self._nodes))
        if self._with_executor:
            self._start_executor()
        for name, url in health.items():
            _wait(f"{name} /healthz", functools.partial(_http_ok, url, None), 60, self._alive)
        _wait("the default ServiceAccount", self._default_sa_exists, 60, self._alive)
        for spec in self._nodes:
            self.wait_node_schedulable(spec.name)

    def stop(self) -> list[int]:
        """Stop every process of the run (the run directory stays; see :meth:`remove`).

        Returns:
            Pids that survived the graceful stop and had to be killed.
        """
        if self._sup is None:
            return []
        return self._sup.stop()

    def remove(self) -> None:
        """Delete the run directory."""
        if self._sup is not None:
            self._sup.remove()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.remove()

    def _alive(self) -> None:
        assert self._sup is not None
        self._sup.check_alive()

    def describe_logs(self) -> str:
        """One line per component: whether it still runs, and its log file."""
        if self._sup is None:
            return "test cluster: not started"
        lines = [f"test cluster run directory: {self.run_dir}"]
        for c in self._sup.components:
            code = c.proc.poll()
            state = "running" if code is None else f"EXITED {code}"
            lines.append(f"  {c.name:<24} {state:<10} {c.log}")
        return "\n".join(lines)

    # -- components --------------------------------------------------------------------------

    def _start_etcd(self, bin_dir: Path) -> str:
        assert self._sup is not None
        client, peer = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._sup.start("etcd", [
            str(bin_dir / "etcd"), "--name=default", f"--data-dir={self.run_dir / 'etcd'}",
            f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip
        _wait("etcd", lambda: _http_ok(f"{url}/health", None), 30, self._alive)
        return url

    def _start_apiserver(self, bin_dir: Path, etcd_url: str, pki: Pki) -> None:
        assert self._sup is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._sup.start("kube-apiserver", [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.run_dir / 'pki'}",
            f"--tls-cert-file={pki.server.cert}", f"--tls-private-key-file={pki.server.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC",
            # On top of the default plugins (PodSecurity, ServiceAccount, LimitRanger,
            # ResourceQuota, webhooks, ...), what kubeadm enables.
            "--enable-admission-plugins=NodeRestriction",
            # PodSecurity, not this flag, is what must reject privileged pods.
            "--allow-privileged=true",
            "--profiling=false",
            # pods/log (kubectl logs) is proxied to the pod's node: kwok serves the kubelet API
            # of every node it manages at the node's InternalIP and kubelet port (_start_kwok).
            f"--kubelet-client-certificate={pki.clients['apiserver-kubelet-client'].cert}",
            f"--kubelet-client-key={pki.clients['apiserver-kubelet-client'].key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            *self._audit_flags(),
        ])  # fmt: skip
        ctx = self._admin_ssl(pki)
        _wait(
            "kube-apiserver /readyz",
            lambda: _http_ok(f"{self.server}/readyz", ctx),
            60,
            self._alive,
        )

    def _audit_flags(self) -> list[str]:
        if self._audit_policy is None:
            return []
        policy = self.run_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(self._audit_policy))
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        # Blocking mode: an event is in the file when its request has been answered.
        # One file, never rotated (rotation at 100 MB is the default): readers keep an offset.
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking", "--audit-log-maxsize=1000000"]  # fmt: skip

    def _write_kubeconfigs(self, pki: Pki) -> None:
        d = self.run_dir
        self.kubeconfig = _kubeconfig(d / "kubeconfig", self.server, pki, "admin")
        for user in ("controller-manager", "scheduler", "kwok", "executor"):
            _kubeconfig(d / f"{user}.kubeconfig", self.server, pki, user)

    def _start_controller_manager(self, bin_dir: Path, pki: Pki) -> str:
        assert self._sup is not None
        port, kc = free_port(), self.run_dir / "controller-manager.kubeconfig"
        self._sup.start("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.run_dir / 'pki' / 'kcm'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--controllers={','.join(CONTROLLERS)}",
            # Notice new kwok nodes quickly so their not-ready taint goes away fast.
            "--node-monitor-period=1s",
            # A claim made beside its pre-bound volume binds on the PV controller's next sync
            # (15 s by default): every test's namespace makes one.
            "--pvclaimbinder-sync-period=1s",
        ])  # fmt: skip
        return f"https://127.0.0.1:{port}/healthz"

    def _start_scheduler(self, bin_dir: Path) -> str:
        assert self._sup is not None
        port, kc = free_port(), self.run_dir / "scheduler.kubeconfig"
        self._sup.start("kube-scheduler", [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.run_dir / 'pki' / 'scheduler'}",
            "--leader-elect=false",
        ])  # fmt: skip
        return f"https://127.0.0.1:{port}/healthz"

    def _start_kwok(self, bin_dir: Path, stages_dir: Path, pki: Pki) -> None:
        assert self._sup is not None
        config = write_kwok_config(stages_dir, self.run_dir / "kwok.yaml")
        annotation = ",".join(f"{k}={v}" for k, v in nodes_mod.KWOK_ANNOTATION.items())
        port = free_port()
        self._sup.start("kwok", [
            str(bin_dir / "kwok"),
            f"--kubeconfig={self.run_dir / 'kwok.kubeconfig'}",
            f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={annotation}",
            "--node-lease-duration-seconds=40",
            # kwok's kubelet API (containerLogs, ...) for all its nodes, on one HTTPS port that
            # every node advertises: InternalIP 127.0.0.1, daemonEndpoints.kubeletEndpoint.Port.
            f"--server-address=127.0.0.1:{port}",
            "--node-ip=127.0.0.1", f"--node-port={port}",
            f"--tls-cert-file={pki.kubelet.cert}", f"--tls-private-key-file={pki.kubelet.key}",
            # Logs objects say which file holds which pod's container log (the executor's).
            "--enable-crds=Logs",
        ])  # fmt: skip

    def _start_executor(self) -> None:
        assert self._sup is not None
        self._sup.start(
            "executor",
            [sys.executable, "-m", "tests.cluster.executor",
             f"--kubeconfig={self.run_dir / 'executor.kubeconfig'}",
             f"--run-dir={self.run_dir}"],
            env={"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def _install_crds(self) -> None:
        files = [kwok_logs_crd()]
        if self._crds_dir is not None:
            files += sorted(self._crds_dir.glob("*.yaml"))
        args = ["apply", "--server-side"]
        for f in files:
            args += ["-f", str(f)]
        self.kubectl(*args)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")

    def _admin_ssl(self, pki: Pki) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        admin = pki.clients["admin"]
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        return ctx

    def _default_sa_exists(self) -> bool:
        return (
            self.kubectl(
                "get", "serviceaccount", "default", "-n", "default", check=False
            ).returncode
            == 0
        )

    # -- helpers for tests -------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin user.

        Args:
            *args: kubectl arguments.
            input: Text for its standard input (e.g. a manifest with ``-f -``).
            check: Raise :class:`KubectlError` on a non-zero exit.
            timeout: Seconds before it is killed.
        """
        cmd = [self._kubectl, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        """``kubectl apply`` the given objects (into ``namespace`` when they have none)."""
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=yaml.safe_dump_all(objects))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One object as a dict (``kubectl get -o json``)."""
        ns = ["-n", namespace] if namespace else []
        return dict(json.loads(self.kubectl("get", kind, name, *ns, "-o", "json").stdout))

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)

    def sa_token(
        self, namespace: str, sa_name: str, audiences: Iterable[str] = (), expiration: int = 3600
    ) -> str:
        """A ServiceAccount token from the TokenRequest API.

        Args:
            namespace: The ServiceAccount's namespace.
            sa_name: Its name.
            audiences: Token audiences (the API server's by default).
            expiration: Lifetime in seconds.
        """
        spec: dict[str, Any] = {"expirationSeconds": expiration}
        if audiences:
            spec["audiences"] = list(audiences)
        body = json.dumps(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        )
        out = self.kubectl(
            "create", "--raw",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa_name}/token", "-f", "-",
            input=body,
        )  # fmt: skip
        return str(json.loads(out.stdout)["status"]["token"])

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """Write a kubeconfig that authenticates with a bearer ``token``."""
        assert self._pki is not None
        return _write_kubeconfig(path, self.server, self._pki.ca.cert, "token", {"token": token})

    def add_node(self, spec: NodeSpec | str, *, wait: bool = True, **fields: Any) -> str:
        """Create a kwok node.

        Args:
            spec: A :class:`NodeSpec`, or a node name with ``fields`` for it (``gpu="H100"``,
                ``gpus=4``, ``local_exec=True``, ``labels={...}``, ``taints=(...)``, ...).
            wait: Wait until pods can be scheduled on it.
            **fields: NodeSpec fields when ``spec`` is a name.

        Returns:
            The node name.
        """
        if isinstance(spec, str):
            spec = NodeSpec(spec, **fields)
        self.apply(node_manifest(spec))
        if wait:
            self.wait_node_schedulable(spec.name)
        return spec.name

    def add_local_exec_node(self, name: str = "local-exec-0", **fields: Any) -> str:
        """A node whose pods the local executor really runs (an H100 node by default).

        It is tainted: pods need ``nodes.LOCAL_EXEC_NODE_SELECTOR`` and
        ``nodes.LOCAL_EXEC_TOLERATION`` to land there, so other tests' pods never do.
        """
        if not name.startswith(LOCAL_EXEC_NODE_PREFIX):
            name = LOCAL_EXEC_NODE_PREFIX + name
        fields.setdefault("gpu", "H100")
        fields.setdefault("taints", (nodes_mod.LOCAL_EXEC_TAINT,))
        return self.add_node(name, local_exec=True, **fields)

    def wait_node_schedulable(self, name: str, timeout: float = 60) -> None:
        """Wait until the node is Ready and the not-ready taint is gone."""

        def ready() -> bool:
            proc = self.kubectl("get", "node", name, "-o", "json", check=False)
            if proc.returncode != 0:
                return False
            node = json.loads(proc.stdout)
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = [t["key"] for t in node["spec"].get("taints", [])]
            return conds.get("Ready") == "True" and not any("not-ready" in t for t in taints)

        _wait(f"node {name} to be Ready and untainted", ready, timeout, self._alive)

    def pvc_dir(self, namespace: str, claim: str) -> Path:
        """The local directory the executor mounts for PersistentVolumeClaim ``claim``."""
        path = self.run_dir / "pvc" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        return path

    def create_bound_pvc(self, namespace: str, claim: str, size: str = "10Gi") -> Path:
        """Create a PVC bound (by the real PV controller) to a PV over :meth:`pvc_dir`.

        Returns:
            The local directory behind it.
        """
        path = self.pvc_dir(namespace, claim)
        pv_name = f"pv-{namespace}-{claim}"[:253]
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "hostPath": {"path": str(path)},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }  # fmt: skip
        pvc = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv_name,
                "resources": {"requests": {"storage": size}},
            },
        }  # fmt: skip
        self.apply(pv, pvc)
        self.kubectl(
            "wait", "-n", namespace, "--for=jsonpath={.status.phase}=Bound",
            f"pvc/{claim}", "--timeout=60s",
        )  # fmt: skip
        return path

    def wait_for(
        self, resource: str, namespace: str | None, *, condition: str = "", jsonpath: str = "",
        selector: str = "", timeout: float = 60,
    ) -> None:  # fmt: skip
        """``kubectl wait`` for a condition (``Complete``) or a jsonpath (``{.status.phase}=X``).

        ``resource`` is ``kind/name``, or a kind with ``selector`` (a label selector).

        Raises:
            KubectlError: On timeout, with kubectl's message.
        """
        what = f"--for=condition={condition}" if condition else f"--for=jsonpath={jsonpath}"
        ns = ["-n", namespace] if namespace else []
        sel = ["-l", selector] if selector else []
        self.kubectl(
            "wait", *ns, *sel, what, resource, f"--timeout={timeout:.0f}s", timeout=timeout + 30
        )

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector, oldest first."""
        out = self.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
        items = json.loads(out)["items"]
        return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])

    def set_fate(self, namespace: str, pod: str, fate: str, **annotations: str) -> None:
        """Decide a running pod's end now: relabel it with a fate (see ``stages.FATES``).

        Args:
            namespace: The pod's namespace.
            pod: The pod's name.
            fate: ``succeed``, ``fail``, ``oom``, ``disrupt``, ...
            **annotations: Fate parameters by short name: ``exit_code``, ``message``,
                ``delay``, ``disruption_reason``.
        """
        from tests.cluster.stages import FATE_LABEL

        if annotations:
            pairs = [f"test.kiln.dev/{k.replace('_', '-')}={v}" for k, v in annotations.items()]
            self.kubectl("annotate", "-n", namespace, "pod", pod, "--overwrite", *pairs)
        self.kubectl("label", "-n", namespace, "pod", pod, "--overwrite", f"{FATE_LABEL}={fate}")

    def enable_kueue(self) -> None:
        """Install Kueue's CRDs and webhooks and start its manager (once; see ``kueue.py``).

        Raises:
            ClusterBinariesMissing: If Kueue was not built (``make cluster-bins`` builds it).
        """
        if self._kueue_started:
            return
        from tests.cluster import kueue

        bin_dir, kueue_dir = cache_dir() / "bin", cache_dir() / "kueue"
        if not (bin_dir / "kueue").exists() or not (kueue_dir / "crds").is_dir():
            raise ClusterBinariesMissing(
                f"Kueue is not built in {bin_dir}: run `make cluster-bins` "
                "(tests/cluster/build.sh --kueue)"
            )
        kueue.start(self, bin_dir, kueue_dir)
        self._kueue_started = True

    def executor_log(self, namespace: str, pod: str) -> str:
        """What a pod run by the local executor wrote to stdout/stderr, read from its log file.

        ``kubectl logs`` serves the same (see ``executor.py``); this works without the API.

        Raises:
            FileNotFoundError: If the executor has not run that pod.
        """
        logs = sorted((self.run_dir / "executor").glob(f"{namespace}_{pod}_*/*.log"))
        if not logs:
            raise FileNotFoundError(f"the executor has not run pod {namespace}/{pod}")
        return crilog.decode(logs[-1].read_bytes())

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's data, decoded."""
        data = self.get("secret", name, namespace).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _http_ok(url: str, ctx: ssl.SSLContext | None) -> bool:
    if ctx is None and url.startswith("https"):
        # Component health endpoints use self-signed serving certs; only "is it up" matters.
        ctx = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the cluster in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="Run the Kiln test cluster in the foreground.")
    parser.add_argument("--no-executor", action="store_true", help="do not run the local executor")
    parser.add_argument("--no-crds", action="store_true", help="do not install crds/")
    parser.add_argument("--local-exec-node", action="store_true", help="add node local-exec-0")
    parser.add_argument("--kueue", action="store_true", help="install and run Kueue")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(
        crds_dir=None if args.no_crds else REPO_ROOT / "crds", executor=not args.no_executor
    )
    try:
        cluster.start()
    except ClusterBinariesMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.local_exec_node:
            cluster.add_local_exec_node()
        if args.kueue:
            cluster.enable_kueue()
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        while not stop.wait(1):
            cluster._alive()
    finally:
        cluster.stop()
        cluster.remove()
        print("test cluster stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
