"""Kueue (``sigs.k8s.io/kueue`` v0.17.0) in the test cluster: its CRDs, its webhooks, its manager.

Installed on demand into a running :class:`tests.cluster.kube.Cluster` (the ``kueue`` fixture),
from the module's own manifests, which ``build.sh`` copies into ``.cache/cluster/kueue/``. Two
things differ from a stock install, both because there is no Service network here:

* the webhooks reach the manager by ``url:`` on loopback, with a serving certificate from the
  cluster's CA (Kueue's own certificate rotation is off);
* only the webhooks of the integrations enabled here are installed (``batch/job`` and Kueue's
  own kinds), and the Job webhooks only see Jobs labelled ``kueue.x-k8s.io/queue-name``, so
  the rest of the suite's Jobs never depend on Kueue being up. (Kueue's defaulting of a
  ``default`` LocalQueue for unlabelled Jobs is therefore not exercised.)
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from tests.cluster.kube import Cluster
    from tests.cluster.pki import Pki

__all__ = ["KUEUE_NAMESPACE", "QUEUE_LABEL", "kueue_config", "webhook_configurations"]

KUEUE_NAMESPACE = "kueue-system"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
_GROUPS = {"batch", "kueue.x-k8s.io"}


def kueue_config(
    webhook_port: int, health_port: int, metrics_port: int, cert_dir: Path
) -> dict[str, Any]:
    """The manager's Configuration (config.kueue.x-k8s.io/v1beta2)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
    }


def _keep(hook: dict[str, Any]) -> bool:
    groups = {g for rule in hook.get("rules", []) for g in rule.get("apiGroups", [])}
    return bool(groups) and groups <= _GROUPS


def webhook_configurations(manifests: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, rewritten to call ``url`` (see the module docstring).

    Args:
        manifests: Kueue's ``config/components/webhook/manifests.yaml``.
        url: ``https://127.0.0.1:<port>`` of the manager's webhook server.
        ca_bundle: Base64 PEM of the CA that signed the serving certificate.
    """
    out = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc or not doc.get("kind", "").endswith("WebhookConfiguration"):
            continue
        conf = copy.deepcopy(doc)
        conf["metadata"]["name"] = f"kueue-{conf['metadata']['name']}"
        hooks = []
        for hook in conf["webhooks"]:
            if not _keep(hook):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
            if any("batch" in r.get("apiGroups", []) for r in hook["rules"]):
                hook["objectSelector"] = {
                    "matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]
                }
            hooks.append(hook)
        conf["webhooks"] = hooks
        out.append(conf)
    return out


def serving_cert(pki: Pki, directory: Path) -> Path:
    """Write ``tls.crt``/``tls.key`` for 127.0.0.1 (signed by the cluster CA) into ``directory``."""
    from tests.cluster.pki import _sign

    directory.mkdir(parents=True, exist_ok=True)
    ext = (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    pair = _sign(pki.ca, directory, "kueue-webhook", "/CN=kueue-webhook", ext)
    pair.cert.rename(directory / "tls.crt")
    pair.key.rename(directory / "tls.key")
    return directory


def _podns_spec(
    run_dir: Path, cert_dir: Path, argv: list[str], env: dict[str, str]
) -> dict[str, Any]:
    # Kueue reads its metrics certificate from a fixed /etc/kueue/metrics/certs when its own
    # certificate management is off; it gets that path in a private mount namespace (podns.py)
    # instead of on the host.
    base = run_dir / "kueue"
    for name in ("root", "upper", "work", "tmp"):
        (base / name).mkdir(parents=True, exist_ok=True)
    mounts = [
        {"source": str(cert_dir), "target": "/etc/kueue/metrics/certs", "read_only": True},
        {"source": str(run_dir), "target": str(run_dir), "read_only": False},
    ]
    return {
        "root": str(base / "root"), "upper": str(base / "upper"), "work": str(base / "work"),
        "tmp": str(base / "tmp"), "mounts": mounts, "workdir": "/", "argv": argv, "env": env,
        "uid": None, "gid": None,
    }  # fmt: skip


def start(cluster: Cluster, bin_dir: Path, kueue_dir: Path) -> None:
    """Install Kueue's CRDs and webhooks and start its manager; return once it is ready."""
    import base64

    from tests.cluster import kube as kube_mod
    from tests.cluster.procs import free_port

    sup, pki = cluster._sup, cluster._pki
    assert sup is not None and pki is not None
    crds = sorted((kueue_dir / "crds").glob("*.yaml"))
    cluster.kubectl("apply", "--server-side", *[a for f in crds for a in ("-f", str(f))])
    names = [f"crd/{yaml.safe_load(f.read_text())['metadata']['name']}" for f in crds]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}})
    webhook, health, metrics = free_port(), free_port(), free_port()
    cert_dir = serving_cert(pki, cluster.run_dir / "kueue" / "certs")
    config = cluster.run_dir / "kueue" / "config.yaml"
    config.write_text(yaml.safe_dump(kueue_config(webhook, health, metrics, cert_dir)))
    argv = [
        str(bin_dir / "kueue"),
        f"--config={config}",
        f"--kubeconfig={cluster.kubeconfig}",
        # The on-demand visibility API is an aggregated API server; nothing here needs it.
        "--feature-gates=VisibilityOnDemand=false",
        f"--visibility-server-port={free_port()}",
    ]
    spec = _podns_spec(cluster.run_dir, cert_dir, argv, sup.env())
    spec_path = cluster.run_dir / "kueue" / "podns.json"
    spec_path.write_text(json.dumps(spec))
    podns = Path(__file__).with_name("podns.py")
    sup.start(
        "kueue",
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, str(podns),
         str(spec_path)],
    )  # fmt: skip
    url = f"http://127.0.0.1:{health}/readyz"
    kube_mod._wait("kueue /readyz", lambda: kube_mod._http_ok(url, None), 60, cluster._alive)
    ca = base64.b64encode(pki.ca.cert.read_bytes()).decode()
    hooks = webhook_configurations(kueue_dir / "webhook.yaml", f"https://127.0.0.1:{webhook}", ca)
    cluster.apply(*hooks)
