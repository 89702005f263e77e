"""A small launcher for the `tritonserver` binary that the `nvidia-pytriton` wheel ships.

The wheel carries Triton 2.51 (`pytriton/tritonserver/bin/tritonserver`), its shared libraries
(`nvidia_pytriton.libs`), the Python backend and one Python-backend stub per Python version. The
backend expects the stub next to `libtriton_python.so`; rather than mutate the installed wheel, the
launcher assembles a private backend directory once per wheel content (a cache keyed by digest,
created atomically, so concurrent launches and reruns are safe) and points `--backend-directory`
at it.

The stub embeds this interpreter's `libpython3.11` (its directory goes first on
`LD_LIBRARY_PATH`) in an isolated configuration: it ignores `PYTHONPATH` and finds its prefix by
searching `PATH` for `python3`. The venv's `bin/` therefore goes first on `PATH`; the interpreter
then sees the venv's `pyvenv.cfg` and gets its site-packages (editable installs included), so any
Python-backend model can import torch, transformers and `kiln_jobs`. `PYTHONPATH` is still set,
for Kiln's own models, which add it to `sys.path` themselves.

`TritonServer` starts the server on free ports in its own process group, waits for
`/v2/health/ready`, and stops the whole group on exit; the kernel kills the server if this process
dies first (`PR_SET_PDEATHSIG`), so no server outlives a crashed test. `kiln-tritonserver ARGS`
(`python -m kiln_jobs.serving.tritonserver`) execs the binary in the foreground with Triton's own
ARGS: on a machine without the Triton image it stands in for `tritonserver` in the command line
a Triton pod runs (the job image's own `tritonserver` needs none of this).

The private backend directory also holds the `kiln` backend (`kiln/model.py`), as the job
image's `/opt/tritonserver/backends` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kiln_jobs.contract import GRPC_PORT, HTTP_PORT, KILN_BACKEND, METRICS_PORT
from kiln_jobs.errors import ExitCode, KilnJobError, UserError
from kiln_jobs.serving.triton_backend import backend_model_file

__all__ = [
    "Ports",
    "TritonInstall",
    "TritonServer",
    "TritonServerError",
    "find_triton",
    "free_ports",
    "main",
    "prepare_backend_dir",
]

_PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 40
# Triton's error lines start with E<MMDD>; on a machine without a GPU some are expected noise.
_ERROR_LINE = re.compile(r"^E\d{4} |^error: ")
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "GPU metrics", "CUDA driver")


class TritonServerError(KilnJobError):
    """Triton did not start, or a model in the repository did not load."""

    exit_code = ExitCode.BUG
    reason = "ServingFailed"


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server, its libraries, backends and Python stubs."""

    binary: Path
    lib_dir: Path
    backends_dir: Path
    stub: Path


@dataclass(frozen=True)
class Ports:
    """The three ports a server listens on."""

    http: int = HTTP_PORT
    grpc: int = GRPC_PORT
    metrics: int = METRICS_PORT


def find_triton() -> TritonInstall:
    """Locate the `tritonserver` shipped in the installed `nvidia-pytriton` wheel.

    Raises:
        UserError: The wheel, or its stub for this Python version, is missing.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "local serving needs the `nvidia-pytriton` package (it ships `tritonserver`): "
            "pip install 'kiln[jobs]'"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        lib_dir=package.parent / "nvidia_pytriton.libs",
        backends_dir=root / "backends",
        stub=root / "python_backend_stubs" / _PY_VERSION / "triton_python_backend_stub",
    )
    for path in (install.binary, install.lib_dir, install.backends_dir / "python", install.stub):
        if not path.exists():
            raise UserError(f"incomplete nvidia-pytriton install: {path} is missing")
    return install


def _digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kiln" / "tritonserver"


def prepare_backend_dir(install: TritonInstall, cache_dir: Path | None = None) -> Path:
    """A backend directory whose `python/` holds the backend and this Python's stub, and whose
    `kiln/` holds the `kiln` backend's `model.py` (`kiln_jobs.contract.KILN_BACKEND`).

    Idempotent: the directory is named after the digest of what it holds and is built in a
    temporary sibling then renamed, so a rerun reuses it and a concurrent run cannot see it half
    copied. The installed wheel is never modified.

    Args:
        install: The located wheel.
        cache_dir: Parent of the backend directories; `~/.cache/kiln/tritonserver` by default.

    Returns:
        The directory to pass as `--backend-directory`.
    """
    sources = sorted(p for p in (install.backends_dir / "python").iterdir() if p.is_file())
    sources.append(install.stub)
    kiln_model = backend_model_file()
    digest = _digest([*sources, kiln_model])
    target = (cache_dir or _default_cache()) / f"backends-{_PY_VERSION}-{digest}"
    if (target / KILN_BACKEND / "model.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        (staging / "python").mkdir()
        for source in sources:
            shutil.copy2(source, staging / "python" / source.name)
        (staging / KILN_BACKEND).mkdir()
        shutil.copy2(kiln_model, staging / KILN_BACKEND / "model.py")
        with contextlib.suppress(OSError):  # another launcher won the race: use its copy
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _python_path() -> list[str]:
    """What the stub's interpreter needs on sys.path: this venv's packages and `kiln_jobs`."""
    import kiln_jobs

    paths = [str(Path(kiln_jobs.__file__).resolve().parents[1])]
    paths += [p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
    return list(dict.fromkeys(paths))


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `tritonserver` and its Python stubs run with.

    Args:
        install: The located wheel.
        base: The environment to extend; `os.environ` by default.
    """
    env = dict(os.environ if base is None else base)
    # This interpreter's libpython first, so the stub embeds the same Python as the venv.
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(install.lib_dir)]
    libs += [env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    # The isolated interpreter locates its prefix through `python3` on PATH: make it this venv's.
    path = [str(Path(sys.executable).parent)] + ([env["PATH"]] if env.get("PATH") else [])
    env["PATH"] = os.pathsep.join(path)
    env.pop("PYTHONHOME", None)
    # What the caller had on PYTHONPATH (packages an image adds) first, then this venv's.
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*inherited, *_python_path()]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def server_argv(
    install: TritonInstall,
    repository: Path,
    backend_dir: Path,
    ports: Ports,
    *,
    log_verbose: int = 0,
) -> list[str]:
    """The exact `tritonserver` command line (a list: nothing goes through a shell)."""
    return [
        str(install.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=10",
        f"--log-verbose={log_verbose}",
    ]


def free_ports(count: int = 3) -> list[int]:
    """Distinct TCP ports that were free on loopback a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child: ask the kernel to SIGKILL it when the launching process dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The log's error lines (model load failures first), then its last lines."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    errors = [
        line
        for line in text
        if (_ERROR_LINE.match(line) and not any(noise in line for noise in _NOISE))
        or "UNAVAILABLE" in line
    ]
    last = [line for line in text[-lines // 4 :] if line not in errors]
    return "\n".join([*errors[-lines:], *last])


class TritonServer:
    """A running `tritonserver` serving one model repository; a context manager.

    Example:
        with TritonServer(publish_dir / "triton") as server:
            print(server.http_url)
    """

    # Process-group ids of every server started by this process, so tests can prove that none
    # outlives its `stop()`.
    started_groups: set[int] = set()

    def __init__(
        self,
        repository: Path | str,
        *,
        ports: Ports | None = None,
        startup_timeout: float = 300.0,
        log_path: Path | None = None,
        log_verbose: int = 0,
        python_path: Sequence[Path] = (),
    ) -> None:
        """Args:
        repository: The model repository to serve.
        ports: HTTP, gRPC and metrics ports; free ones by default.
        startup_timeout: Seconds to wait for readiness (model loading included).
        log_path: The server log; a temporary file by default.
        log_verbose: Triton's `--log-verbose` level.
        python_path: Extra directories for the Python models' `sys.path`, first.
        """
        self.python_path = [str(Path(p).resolve()) for p in python_path]
        self.repository = Path(repository).resolve()
        self.ports = ports or Ports(*free_ports(3))
        self.startup_timeout = startup_timeout
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.log_verbose = log_verbose
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None

    @property
    def http_url(self) -> str:
        """`host:port` of the HTTP/REST endpoint (tritonclient's form)."""
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        """`host:port` of the gRPC endpoint."""
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus metrics URL."""
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id), while it runs."""
        return self.process.pid if self.process else None

    def start(self) -> TritonServer:
        """Start the server and wait until every model is loaded and ready.

        Raises:
            TritonServerError: The server exited or was not ready within `startup_timeout`; the
                message quotes the end of its log.
        """
        if not self.repository.is_dir():
            raise UserError(f"no Triton model repository at {self.repository}")
        install = find_triton()
        argv = server_argv(
            install,
            self.repository,
            prepare_backend_dir(install),
            self.ports,
            log_verbose=self.log_verbose,
        )
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(install),
                start_new_session=True,  # its own process group: stop() reaches the stubs too
                preexec_fn=_die_with_parent,  # only a prctl call: safe after fork
            )
        TritonServer.started_groups.add(self.process.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        return self

    def _env(self, install: TritonInstall) -> dict[str, str]:
        env = server_env(install)
        env["PYTHONPATH"] = os.pathsep.join([*self.python_path, env["PYTHONPATH"]])
        return env

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self.process is not None  # set by start()
            code = self.process.poll()
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {code} while loading {self.repository}; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.25)
        raise TritonServerError(
            f"tritonserver was not ready after {self.startup_timeout:.0f}s; "
            f"log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server and everything in its process group; idempotent."""
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        # Stubs or a hung server left in the group: no survivors.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        _wait_for_group_exit(process.pid, timeout=5)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`kiln-tritonserver ARGS...`: the wheel's `tritonserver` with Kiln's backends, in the
    foreground. ARGS are tritonserver's own, passed through unchanged, so the command line a Triton
    pod runs (`kiln_jobs.contract.triton_argv`) runs here with this in place of `tritonserver`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args) or not args:
        print(main.__doc__, file=sys.stderr)
        return 0 if args else int(ExitCode.USER_ERROR)
    try:
        install = find_triton()
        backends = prepare_backend_dir(install)
    except KilnJobError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return int(error.exit_code)
    command = [str(install.binary), f"--backend-directory={backends}", *args]
    # Replace this process: the container's PID 1 is then tritonserver itself, which gets the
    # kubelet's SIGTERM directly and drains in-flight requests.
    os.execve(command[0], command, server_env(install))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())


def _wait_for_group_exit(pgid: int, timeout: float) -> None:
    """Wait until no live process is left in group `pgid`: a killed process takes a moment to
    exit, and a caller that starts another server should not find the old one's stubs."""
    deadline = time.monotonic() + timeout
    while _group_has_live_process(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_has_live_process(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False
