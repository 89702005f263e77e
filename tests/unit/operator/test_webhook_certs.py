"""The webhook certificate the operator keeps: issued by its CA, for the Service's names,
re-issued from the same CA before it expires."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from kiln_operator.webhook_certs import (
    CertMaterial,
    issue_serving_cert,
    new_ca,
    reissue_reason,
)

pytestmark = pytest.mark.unit

NAMES = ["kiln-webhook.kiln-system.svc", "kiln-webhook"]


@pytest.fixture(scope="module")
def material() -> CertMaterial:
    ca_crt, ca_key = new_ca("kiln-webhook-ca")
    return CertMaterial(ca_crt, ca_key, *issue_serving_cert(ca_crt, ca_key, NAMES))


def test_the_serving_certificate_is_issued_by_the_ca_for_the_service(
    material: CertMaterial,
) -> None:
    cert = x509.load_pem_x509_certificate(material.tls_crt)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(material.ca_crt))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == NAMES
    assert reissue_reason(material, NAMES) is None


def test_expiry_and_new_names_call_for_a_new_certificate(material: CertMaterial) -> None:
    in_eleven_months = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert "expires" in (reissue_reason(material, NAMES, now=in_eleven_months) or "")
    assert "other.svc" in (reissue_reason(material, [*NAMES, "other.svc"]) or "")
    stranger = CertMaterial(*new_ca("x"), material.tls_crt, material.tls_key)
    assert "not issued by the CA" in (reissue_reason(stranger, NAMES) or "")


def test_secret_data_round_trips_and_files_are_private(
    material: CertMaterial, tmp_path: Path
) -> None:
    assert CertMaterial.from_secret(material.secret_data()) == material
    assert CertMaterial.from_secret({"tls.crt": "eA=="}) is None
    material.write(tmp_path)
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "tls.crt").read_bytes() == material.tls_crt
