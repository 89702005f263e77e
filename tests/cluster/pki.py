"""Certificates and keys for the test cluster, made with the ``openssl`` command.

One CA signs the API server's serving certificate, the serving certificate of kwok's kubelet
endpoint (which the API server verifies when it proxies ``pods/log``) and one client certificate
per identity (the admin, the controller manager, the scheduler, kwok, the executor, the API
server's kubelet client); a separate RSA key signs ServiceAccount tokens. ``openssl`` is part
of every Debian-based machine the project runs on, so the suite needs no extra Python dependency
for this.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPair", "Pki", "make_pki"]

# Names a client inside a real cluster would use to reach the API server.
SERVER_SANS = (
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
)
#: Every kwok node's InternalIP is loopback, where kwok serves the kubelet API for all of them.
KUBELET_SANS = ("DNS:localhost", "IP:127.0.0.1")


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every credential the control plane needs."""

    ca: CertPair
    server: CertPair
    kubelet: CertPair
    clients: dict[str, CertPair]
    sa_key: Path
    sa_pub: Path


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _ec_key(path: Path) -> Path:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    path.chmod(0o600)
    return path


def _make_ca(directory: Path) -> CertPair:
    key = _ec_key(directory / "ca.key")
    cert = directory / "ca.crt"
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "30",
        "-subj", "/CN=kiln-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    return CertPair(cert, key)


def _sign(ca: CertPair, directory: Path, name: str, subject: str, extensions: str) -> CertPair:
    key = _ec_key(directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    cert = directory / f"{name}.crt"
    ext.write_text(extensions)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", f"0x{secrets.token_hex(16)}",
        "-out", str(cert), "-days", "30", "-extfile", str(ext),
    )  # fmt: skip
    return CertPair(cert, key)


def _serving_cert(
    ca: CertPair, directory: Path, name: str, subject: str, sans: tuple[str, ...]
) -> CertPair:
    ext = (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(sans)}\n"
    )
    return _sign(ca, directory, name, subject, ext)


def _client_cert(ca: CertPair, directory: Path, name: str, user: str, group: str) -> CertPair:
    ext = (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    subject = f"/O={group}/CN={user}" if group else f"/CN={user}"
    return _sign(ca, directory, name, subject, ext)


# name -> (user, group). The control-plane users are bound to their roles by the API server's
# bootstrap RBAC policy, exactly as in a kubeadm cluster.
CLIENTS = {
    "admin": ("kiln-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "kwok": ("kiln-kwok", "system:masters"),
    "executor": ("kiln-executor", "system:masters"),
    # What the API server presents to kubelets (kwok) when it proxies pods/log, as in kubeadm.
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}


def make_pki(directory: Path) -> Pki:
    """Create the CA, serving and client certificates and the ServiceAccount key.

    Args:
        directory: Where to write the files (created if missing).

    Returns:
        The paths of everything written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory)
    server = _serving_cert(ca, directory, "apiserver", "/CN=kube-apiserver", SERVER_SANS)
    kubelet = _serving_cert(ca, directory, "kubelet", "/CN=kwok-kubelet", KUBELET_SANS)
    clients = {
        name: _client_cert(ca, directory, name, user, group)
        for name, (user, group) in CLIENTS.items()
    }
    sa_key = directory / "sa.key"
    sa_pub = directory / "sa.pub"
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key)
    )
    sa_key.chmod(0o600)
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    return Pki(ca=ca, server=server, kubelet=kubelet, clients=clients, sa_key=sa_key, sa_pub=sa_pub)
