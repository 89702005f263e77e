"""Process supervision for the test cluster: nothing outlives its run, not even after a crash.

Every component starts in a session of its own (so it and all its descendants can be found
and signalled together), under ``setpriv --pdeathsig SIGKILL`` (so it dies with the process
that started it, even if that process is killed), with an environment marker naming its run
directory. A run directory records its owner's pid; :func:`reap_stale_runs` removes the runs of
dead owners and kills whatever they left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RUN_MARKER",
    "RUN_PREFIX",
    "Component",
    "Supervisor",
    "free_port",
    "is_alive",
    "kill_processes_with_env",
    "processes_of_run",
    "processes_with_env",
    "reap_stale_runs",
]

#: Environment variable every process of a run carries: its run directory.
RUN_MARKER = "KILN_CLUSTER_RUN"
RUN_PREFIX = "kiln-cluster-"
OWNER_FILE = "owner.pid"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time) of a live process; None if gone or a zombie (already dead)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[3]), int(fields[19])


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    return _proc_stat(pid) is not None


def _has_env(pid: int, name: str, value: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{name}={value}".encode() in environ.split(b"\0")


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment holds ``name=value`` (inherited by children)."""
    me = os.getpid()
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [
        pid
        for pid in pids
        if pid != me and _has_env(pid, name, value) and _proc_stat(pid) is not None
    ]


def kill_processes_with_env(name: str, value: str, timeout: float = 5) -> list[int]:
    """SIGKILL every process whose environment holds ``name=value``; wait until they are gone.

    Returns:
        The pids killed.
    """
    killed = processes_with_env(name, value)
    _kill_all(killed)
    deadline = time.monotonic() + timeout
    while processes_with_env(name, value) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def processes_of_run(run_dir: Path, sessions: Iterable[int] = ()) -> list[int]:
    """Pids of live processes that belong to a run: by session id or by environment marker.

    Args:
        run_dir: The run directory (the marker's value).
        sessions: Session ids of the run's components.
    """
    wanted = set(sessions)
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        stat = _proc_stat(pid)
        if stat is None:
            continue
        if stat[0] in wanted or _has_env(pid, RUN_MARKER, str(run_dir)):
            found.append(pid)
    return found


def _kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _owner_alive(run_dir: Path) -> bool:
    try:
        pid_text, start_text = (run_dir / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False
    stat = _proc_stat(int(pid_text))
    return stat is not None and stat[1] == int(start_text)


def reap_stale_runs(base: Path | None = None) -> list[Path]:
    """Kill the processes of runs whose owner died, and delete those runs' directories.

    Args:
        base: Where run directories live (the system temp directory by default).

    Returns:
        The run directories removed.
    """
    base = base or Path(tempfile.gettempdir())
    removed = []
    for run_dir in base.glob(f"{RUN_PREFIX}*"):
        if not run_dir.is_dir() or _owner_alive(run_dir):
            continue
        sessions = _recorded_sessions(run_dir)
        _kill_all(processes_of_run(run_dir, sessions))
        _wait_gone(run_dir, sessions, timeout=10)
        _unmount_under(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(run_dir)
    return removed


def _recorded_sessions(run_dir: Path) -> list[int]:
    sessions = []
    for pid_file in (run_dir / "pids").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid, start = (int(x) for x in pid_file.read_text().split())
            stat = _proc_stat(pid)
            # A recycled pid would not have the recorded start time.
            if stat is not None and stat[1] == start:
                sessions.append(pid)
    return sessions


def _wait_gone(run_dir: Path, sessions: Iterable[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = processes_of_run(run_dir, sessions)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_of_run(run_dir, sessions)
    return left


def _unmount_under(run_dir: Path) -> None:
    # Mounts live in the executor's private mount namespaces, which die with their processes;
    # this only guards against a mount that leaked into the host namespace.
    prefix = str(run_dir.resolve())
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for line in reversed(mounts):
        target = line.split()[1]
        if target.startswith(prefix):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)


@dataclass
class Component:
    """One running program of the cluster."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """Its pid, which is also its session id."""
        return self.proc.pid


@dataclass
class Supervisor:
    """Starts and stops a run's components; owns the run directory.

    Attributes:
        run_dir: The run's directory (logs under ``logs/``, pid files under ``pids/``).
        components: Started components, in start order.
    """

    run_dir: Path
    components: list[Component] = field(default_factory=list)

    @classmethod
    def create(cls, base: Path | None = None) -> Supervisor:
        """Make a fresh run directory, recording this process as its owner."""
        run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=base)).resolve()
        (run_dir / "logs").mkdir()
        (run_dir / "pids").mkdir()
        stat = _proc_stat(os.getpid())
        assert stat is not None  # our own process always has a /proc entry
        (run_dir / OWNER_FILE).write_text(f"{os.getpid()} {stat[1]}\n")
        return cls(run_dir)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment plus the run marker and ``extra``."""
        return {**os.environ, RUN_MARKER: str(self.run_dir), **(extra or {})}

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Component:
        """Start ``argv`` as component ``name``, logging to ``logs/<name>.log``."""
        log = self.run_dir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "SIGKILL", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(env),
                start_new_session=True,
            )
        stat = _proc_stat(proc.pid)
        start_time = stat[1] if stat else 0
        (self.run_dir / "pids" / f"{name}.pid").write_text(f"{proc.pid} {start_time}\n")
        component = Component(name, argv, log, proc)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        """Raise if a component exited, naming it and its log."""
        for c in self.components:
            if c.proc.poll() is not None:
                tail = c.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{c.name} exited with {c.proc.returncode}; log {c.log}:\n{tail}"
                )

    def stop(self, grace: float = 10.0) -> list[int]:
        """Stop components in reverse start order, then kill any straggler of the run.

        Returns:
            Pids that were still alive after the graceful stop and had to be killed.
        """
        for c in reversed(self.components):
            _signal_session(c.pid, signal.SIGTERM)
            try:
                c.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_session(c.pid, signal.SIGKILL)
                c.proc.wait(timeout=5)
        sessions = [c.pid for c in self.components]
        stragglers = processes_of_run(self.run_dir, sessions)
        _kill_all(stragglers)
        left = _wait_gone(self.run_dir, sessions, timeout=5)
        if left:
            raise RuntimeError(f"processes of {self.run_dir} survived SIGKILL: {left}")
        return stragglers

    def remove(self) -> None:
        """Delete the run directory (after :meth:`stop`)."""
        _unmount_under(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def log_paths(self) -> dict[str, Path]:
        """Component name -> log file."""
        return {c.name: c.log for c in self.components}


def _signal_session(sid: int, sig: int) -> None:
    # The component leads its own process group, so this reaches its children too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, sig)
