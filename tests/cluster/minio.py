"""A real MinIO server on loopback: the S3 the tests use (built by `build.sh --minio`).

Buckets are folders of its data directory made before it starts (MinIO's single-drive mode
takes each top-level folder as a bucket), so no S3 admin client is needed.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.kube import ClusterBinariesMissing, cache_dir
from tests.cluster.procs import Supervisor, free_port

__all__ = ["BUCKETS", "MinIO"]

#: The buckets every MinIO started here has.
BUCKETS = ("kiln", "models")


@dataclass
class MinIO:
    """One MinIO server; `env()` is what a client needs to reach it."""

    access_key: str = "kiln-test"
    secret_key: str = "kiln-test-secret"
    port: int = 0
    supervisor: Supervisor | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        assert self.supervisor is not None
        return self.supervisor.run_dir / "data"

    def env(self, endpoint: str | None = None, prefix: str = "") -> dict[str, str]:
        """`AWS_*` variables for a client of this server (or of a proxy at `endpoint`)."""
        return {
            f"{prefix}AWS_ACCESS_KEY_ID": self.access_key,
            f"{prefix}AWS_SECRET_ACCESS_KEY": self.secret_key,
            f"{prefix}AWS_ENDPOINT_URL": endpoint or self.url,
            f"{prefix}AWS_REGION": "us-east-1",
        }

    def start(self) -> MinIO:
        binary = cache_dir() / "bin" / "minio"
        if not binary.exists():
            raise ClusterBinariesMissing(
                f"{binary} is missing: run `make cluster-bins` (builds MinIO from its Go module)"
            )
        self.supervisor = Supervisor.create()
        for bucket in BUCKETS:
            (self.data_dir / bucket).mkdir(parents=True)
        self.port = free_port()
        self.supervisor.start(
            "minio",
            [str(binary), "server", str(self.data_dir), "--quiet",
             "--address", f"127.0.0.1:{self.port}",
             "--console-address", f"127.0.0.1:{free_port()}"],
            env={
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
        )  # fmt: skip
        self._wait_ready()
        return self

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor.remove()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self.supervisor is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervisor.check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/minio/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"MinIO did not become ready in {timeout:.0f} s")
