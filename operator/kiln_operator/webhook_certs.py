"""The admission webhook's serving certificate, kept by the operator itself.

The chart renders no key material, so `helm template`, `helm upgrade` and Argo CD render the same
manifests every time. At start the operator:

1. reads the Secret `<release>-webhook-tls` in its own namespace, creating it with a new CA and a
   serving certificate when it is missing (of two replicas starting at once, one create wins and
   the other reads it);
2. re-issues the serving certificate from the same CA when it expires within 30 days or does not
   name the Service, so the CA the API server trusts never changes under a running replica;
3. writes the CA into its ValidatingWebhookConfiguration's `caBundle`;
4. serves with that certificate, and stops (the Deployment restarts it) when the Secret's
   certificate changes: every replica then serves what the `caBundle` trusts.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

__all__ = [
    "CertMaterial",
    "ensure_webhook_certs",
    "issue_serving_cert",
    "new_ca",
    "reissue_reason",
    "watch_for_rotation",
]

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class CertMaterial:
    """PEM bytes of the CA and the serving pair, as the Secret holds them."""

    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes

    @classmethod
    def from_secret(cls, data: Any) -> CertMaterial | None:
        try:
            return cls(
                *(base64.b64decode(data[k]) for k in ("ca.crt", "ca.key", "tls.crt", "tls.key"))
            )
        except (KeyError, ValueError):
            return None

    def secret_data(self) -> dict[str, str]:
        pairs = zip(
            ("ca.crt", "ca.key", "tls.crt", "tls.key"),
            (self.ca_crt, self.ca_key, self.tls_crt, self.tls_key),
            strict=True,
        )
        return {key: base64.b64encode(value).decode() for key, value in pairs}

    def write(self, directory: Path) -> Path:
        """tls.crt, tls.key and ca.crt in `directory` (kopf's WebhookServer reads files)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, value in (
            ("tls.crt", self.tls_crt),
            ("tls.key", self.tls_key),
            ("ca.crt", self.ca_crt),
        ):
            path = directory / name
            path.write_bytes(value)
            path.chmod(0o600)
        return directory


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_ca(common_name: str) -> tuple[bytes, bytes]:
    """(certificate, key) PEM of a new self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue_serving_cert(ca_crt: bytes, ca_key: bytes, dns_names: list[str]) -> tuple[bytes, bytes]:
    """(certificate, key) PEM of a serving certificate for `dns_names`, signed by the CA."""
    ca = x509.load_pem_x509_certificate(ca_crt)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=SERVING_DAYS), ca.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def reissue_reason(
    material: CertMaterial, dns_names: list[str], now: datetime.datetime | None = None
) -> str | None:
    """Why the serving certificate must be re-issued, or None when it is good."""
    now = now or _now()
    cert = x509.load_pem_x509_certificate(material.tls_crt)
    ca = x509.load_pem_x509_certificate(material.ca_crt)
    if cert.issuer != ca.subject:
        return "it was not issued by the CA in the Secret"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    missing = sorted(set(dns_names) - set(names.get_values_for_type(x509.DNSName)))
    if missing:
        return f"it does not name {', '.join(missing)}"
    return None


def _service_names(service: str, namespace: str) -> list[str]:
    return [
        f"{service}.{namespace}.svc",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def ensure_webhook_certs(
    api_client: client.ApiClient, namespace: str, secret: str, service: str, configuration: str
) -> CertMaterial:
    """Steps 1-3 of the module docstring; the material to serve with."""
    core = client.CoreV1Api(api_client)
    dns_names = _service_names(service, namespace)
    material = _read(core, namespace, secret)
    if material is None:
        ca_crt, ca_key = new_ca(f"{service}-ca")
        material = CertMaterial(ca_crt, ca_key, *issue_serving_cert(ca_crt, ca_key, dns_names))
        material = _create(core, namespace, secret, material)
    elif (reason := reissue_reason(material, dns_names)) is not None:
        log.info("re-issuing the webhook's serving certificate: %s", reason)
        fresh = CertMaterial(
            material.ca_crt,
            material.ca_key,
            *issue_serving_cert(material.ca_crt, material.ca_key, dns_names),
        )
        core.patch_namespaced_secret(secret, namespace, {"data": fresh.secret_data()})
        material = fresh
    _inject_ca(client.AdmissionregistrationV1Api(api_client), configuration, material.ca_crt)
    return material


def _read(core: client.CoreV1Api, namespace: str, name: str) -> CertMaterial | None:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return CertMaterial.from_secret(secret.data or {})


def _create(
    core: client.CoreV1Api, namespace: str, name: str, material: CertMaterial
) -> CertMaterial:
    body: Any = {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kiln"}},
        "type": "Opaque",
        "data": material.secret_data(),
    }
    try:
        core.create_namespaced_secret(namespace, body)
        log.info("created the webhook certificate Secret %s/%s", namespace, name)
        return material
    except ApiException as error:
        if error.status != 409:
            raise
    # Another replica created it first: serve with theirs.
    theirs = _read(core, namespace, name)
    if theirs is None:
        raise RuntimeError(f"Secret {namespace}/{name} exists but holds no certificate")
    return theirs


def _inject_ca(admission: client.AdmissionregistrationV1Api, name: str, ca_crt: bytes) -> None:
    """Set every webhook's caBundle (a JSON patch by index: a merge patch replaces lists)."""
    bundle = base64.b64encode(ca_crt).decode()
    current = admission.read_validating_webhook_configuration(name)
    patch: list[dict[str, Any]] = []
    for index, webhook in enumerate(current.webhooks or []):
        if webhook.client_config.ca_bundle != bundle:
            patch.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.name})
            patch.append(
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
            )
    if patch:
        admission.patch_validating_webhook_configuration(name, patch)
        log.info("wrote the webhook CA into ValidatingWebhookConfiguration %s", name)


def watch_for_rotation(
    ensure: Callable[[], CertMaterial], served: CertMaterial, every: float = 3600.0
) -> threading.Thread:
    """Run `ensure` (steps 1-3) every `every` seconds, which renews a certificate close to
    expiry; stop this process (SIGTERM: kopf shuts down cleanly, the Deployment restarts it)
    once the Secret holds another certificate than the one served."""

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(every):
            try:
                current = ensure()
            except ApiException as error:
                log.warning("cannot check the webhook certificate: %s", error.reason)
                continue
            if current.tls_crt != served.tls_crt:
                log.warning("the webhook certificate changed; restarting to serve the new one")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="kiln-webhook-cert-watch", daemon=True)
    thread.start()
    return thread
