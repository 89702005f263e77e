"""The launcher around the wheel's `tritonserver`: clear errors, clean stops, no orphans."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kiln_jobs.serving.triton_config import input_tensor, model_config, output_tensor, write_config
from kiln_jobs.serving.tritonserver import (
    TritonServer,
    TritonServerError,
    find_triton,
    prepare_backend_dir,
)
from tests.integration.serving.conftest import group_alive

pytestmark = pytest.mark.integration


def _python_model(repository: Path, body: str) -> Path:
    """A one-model repository whose model.py has `body` in `initialize`."""
    config = model_config(
        "m",
        backend="python",
        inputs=[input_tensor("x", "FP32", [1])],
        outputs=[output_tensor("y", "FP32", [1])],
    )
    write_config(repository / "m", config)
    (repository / "m" / "1").mkdir()
    (repository / "m" / "1" / "model.py").write_text(
        textwrap.dedent(
            f"""
            import time

            class TritonPythonModel:
                def initialize(self, args):
                    {body}

                def execute(self, requests):
                    return []
            """
        )
    )
    return repository


def test_backend_dir_is_private_and_idempotent(tmp_path: Path) -> None:
    install = find_triton()
    first = prepare_backend_dir(install, tmp_path)
    second = prepare_backend_dir(install, tmp_path)
    assert first == second
    assert (first / "python" / "triton_python_backend_stub").is_file()
    assert (first / "python" / "libtriton_python.so").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging left over
    # The wheel itself is left as installed.
    assert not (install.backends_dir / "python" / "triton_python_backend_stub").exists()


def test_a_failing_model_is_reported_with_the_server_log(tmp_path: Path) -> None:
    repository = _python_model(tmp_path / "repo", 'raise RuntimeError("kiln-boom")')
    server = TritonServer(repository, startup_timeout=120)
    with pytest.raises(TritonServerError, match="kiln-boom") as raised:
        server.start()
    assert "exited with code" in raised.value.message
    assert server.pid is None


def test_a_slow_model_times_out_and_is_stopped(tmp_path: Path) -> None:
    repository = _python_model(tmp_path / "repo", "time.sleep(120)")
    server = TritonServer(repository, startup_timeout=4)
    started = time.monotonic()
    with pytest.raises(TritonServerError, match="not ready after 4s"):
        server.start()
    group = max(TritonServer.started_groups)
    assert time.monotonic() - started < 60
    assert not group_alive(group)


def test_no_server_outlives_a_killed_parent(tmp_path: Path) -> None:
    repository = _python_model(tmp_path / "repo", "pass")
    script = textwrap.dedent(
        f"""
        import time
        from kiln_jobs.serving.tritonserver import TritonServer
        server = TritonServer({str(repository)!r}).start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        group = int(parent.stdout.readline())
        assert group_alive(group)
        parent.kill()  # SIGKILL: no atexit, no finally, no __exit__
        parent.wait()
        deadline = time.monotonic() + 30
        while group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_alive(group)
    finally:
        parent.kill()


def test_foreground_entry_point_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    from kiln_jobs.serving.tritonserver import free_ports

    repository = _python_model(tmp_path / "repo", "pass")
    http, grpc, metrics = free_ports(3)
    command = [
        sys.executable, "-m", "kiln_jobs.serving.tritonserver",
        f"--model-repository={repository}",
        f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready") as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the foreground server never became ready")
        server.terminate()  # the kubelet's SIGTERM: tritonserver itself is the process (exec)
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
