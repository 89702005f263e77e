"""No process outlives the cluster: neither after a clean stop nor after the launcher is killed.

Each test runs a second, small cluster of its own beside the session's one.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.kube import REPO_ROOT, Cluster
from tests.cluster.nodes import LOCAL_EXEC_NODE_SELECTOR, LOCAL_EXEC_TOLERATION
from tests.cluster.procs import is_alive, processes_of_run, reap_stale_runs
from tests.integration.cluster.manifests import container, job

pytestmark = pytest.mark.integration

# Leaves a daemon behind that escapes the pod's session, then keeps running.
DAEMONIZE = (
    "import subprocess, time; "
    "p = subprocess.Popen(['sleep', '600'], start_new_session=True); "
    "open('/out/daemon.pid', 'w').write(str(p.pid)); time.sleep(600)"
)


def _daemon_job(out_dir: Path) -> dict[str, object]:
    manifest = job(
        "daemon",
        containers=[container(command=["python", "-c", DAEMONIZE],
                              volumeMounts=[{"name": "out", "mountPath": "/out"}])],
        node_selector=LOCAL_EXEC_NODE_SELECTOR,
        tolerations=[LOCAL_EXEC_TOLERATION],
        volumes=[{"name": "out", "hostPath": {"path": str(out_dir)}}],
    )  # fmt: skip
    manifest["metadata"]["namespace"] = "default"  # type: ignore[index]
    return manifest


def _wait_file(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{path} never appeared")


def _sessions(run_dir: Path) -> list[int]:
    return [int(p.read_text().split()[0]) for p in (run_dir / "pids").glob("*.pid")]


def _port_open(server: str, grace: float = 5) -> bool:
    """Whether something still listens there after ``grace`` seconds (a dying process may
    take a moment to release its sockets)."""
    host, port = server.removeprefix("https://").split(":")
    deadline = time.monotonic() + grace
    while True:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((host, int(port))) != 0:
                return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def test_clean_stop_leaves_no_process(tmp_path: Path) -> None:
    cluster = Cluster(nodes=[], crds_dir=None, log=lambda _: None)
    cluster.start()
    try:
        cluster.add_local_exec_node()
        cluster.apply(_daemon_job(tmp_path))
        daemon = int(_wait_file(tmp_path / "daemon.pid"))
        assert processes_of_run(cluster.run_dir, _sessions(cluster.run_dir))
    finally:
        stragglers = cluster.stop()
    assert stragglers == [], "the executor should have stopped the pod's processes itself"
    assert processes_of_run(cluster.run_dir, _sessions(cluster.run_dir)) == []
    assert not is_alive(daemon)
    assert not _port_open(cluster.server)
    cluster.remove()
    assert not cluster.run_dir.exists()


def test_killed_launcher_leaves_nothing_the_next_start_does_not_reap(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.kube", "--no-crds", "--local-exec-node"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE, stderr=(tmp_path / "launcher.log").open("wb"), text=True,
    )  # fmt: skip
    assert launcher.stdout is not None
    try:
        ready, _, _ = select.select([launcher.stdout], [], [], 120)
        assert ready, (tmp_path / "launcher.log").read_text()
        line = launcher.stdout.readline()
    except BaseException:
        launcher.kill()
        raise
    assert line.startswith("KUBECONFIG=/"), line
    kubeconfig = Path(line.strip().split("=", 1)[1])
    run_dir = kubeconfig.parent
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    kubectl = [str(Path(sys.prefix) / "bin" / "kubectl"), f"--kubeconfig={kubeconfig}"]
    subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(_daemon_job(tmp_path)),
                   text=True, check=True, capture_output=True)  # fmt: skip
    daemon = int(_wait_file(tmp_path / "daemon.pid"))
    sessions = _sessions(run_dir)

    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    # The components die with their parent (parent-death signal): the ports are free at once.
    deadline = time.monotonic() + 15
    while processes_of_run(run_dir, sessions) != [daemon] and time.monotonic() < deadline:
        time.sleep(0.1)
    left = processes_of_run(run_dir, sessions)
    assert left == [daemon], [Path(f"/proc/{p}/cmdline").read_text() for p in left]
    assert not _port_open(server)
    # Only the daemon that escaped its session is left; the next start reaps it and the run.
    assert processes_of_run(run_dir, sessions) == [daemon]
    assert run_dir in reap_stale_runs()
    assert not is_alive(daemon)
    assert not run_dir.exists()
