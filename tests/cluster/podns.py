"""Enter a pod's filesystem view and exec its command. Test-only; run by the executor as::

    unshare --mount --propagation private -- python podns.py spec.json

Inside the new mount namespace the host root becomes the lower layer of an overlay (writes
outside volumes land in a throw-away upper layer, as in a container), the pod's volumes are
bind-mounted at their ``mountPath`` (missing mount points are created in the overlay, never on
the host), ``/tmp`` is private, and the process is chrooted into the result before ``exec``.
Nothing here outlives the process: the mount namespace dies with it.

The spec is JSON: ``root``, ``upper``, ``work``, ``tmp``, ``mounts`` (list of ``source``,
``target``, ``read_only``), ``workdir``, ``argv``, ``env``, ``uid``, ``gid``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["enter_and_exec", "main"]

# Kernel filesystems a process needs, bound from the host into the new root.
_SYSTEM_MOUNTS = ("/proc", "/sys")
_REPO = Path(__file__).resolve().parents[2]
# /dev is a fresh tmpfs with the usual device nodes, as a container runtime makes it, so that
# /dev/termination-log and friends never touch the host's /dev.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {proc.stderr.strip()}")


def _inside(root: Path, target: str) -> Path:
    return root / target.lstrip("/")


def _bind(source: str, target: Path, read_only: bool) -> None:
    if Path(source).is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    _mount("--bind", source, str(target))
    if read_only:
        _mount("-o", "remount,bind,ro", str(target))


def _make_dev(root: Path) -> None:
    dev = _inside(root, "/dev")
    _mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", str(dev))
    for name in _DEVICES:
        (dev / name).touch()
        _mount("--bind", f"/dev/{name}", str(dev / name))
    for name, target in _DEV_LINKS.items():
        (dev / name).symlink_to(target)
    (dev / "pts").mkdir()
    _mount("--bind", "/dev/pts", str(dev / "pts"))
    (dev / "shm").mkdir()
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", str(dev / "shm"))


def _open_for_user(root: Path, argv0: str, path_env: str) -> None:
    """Let a non-root user traverse to the interpreter (here under root's 0700 home).

    The chmod happens in the overlay's upper layer only; the host is untouched. An image would
    have its interpreter readable by any user; this stands in for that.
    """
    targets = []
    found = shutil.which(argv0, path=path_env)
    if found:
        targets.append(Path(found).resolve())
    for entry in path_env.split(":"):
        python = Path(entry) / "python3"
        if python.exists():
            targets.append(python.resolve())
    for target in targets:
        for parent in target.parents:
            inside = _inside(root, str(parent))
            mode = inside.stat().st_mode
            if mode & 0o005 != 0o005:
                inside.chmod(mode | 0o005)


def enter_and_exec(spec: dict[str, Any]) -> None:
    """Build the pod's view of the filesystem and exec its command (never returns)."""
    root = Path(spec["root"])
    _mount("-t", "overlay", "overlay", "-o",
           f"lowerdir=/,upperdir={spec['upper']},workdir={spec['work']}", str(root))  # fmt: skip
    for system in _SYSTEM_MOUNTS:
        _mount("--rbind", system, str(_inside(root, system)))
    _make_dev(root)
    _bind(spec["tmp"], _inside(root, "/tmp"), read_only=False)
    # Shallow mount paths first, so a volume at /a/b is not hidden by one at /a.
    for m in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
        _bind(m["source"], _inside(root, m["target"]), m["read_only"])
    # The private /tmp (or a pod's own emptyDir there) would hide a checkout that lives under
    # /tmp (CI clones often do), and with it the venv whose python the pod runs: bound last,
    # read-only, it stays visible.
    if _REPO.is_relative_to("/tmp"):
        _bind(str(_REPO), _inside(root, str(_REPO)), read_only=True)
    if spec.get("uid"):
        _open_for_user(root, spec["argv"][0], spec["env"].get("PATH", ""))
    os.chroot(root)
    os.chdir(spec["workdir"] or "/")
    if spec.get("gid") is not None:
        os.setgroups([])
        os.setgid(int(spec["gid"]))
    if spec.get("uid") is not None:
        os.setuid(int(spec["uid"]))
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``podns.py SPEC_JSON``."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    try:
        enter_and_exec(spec)
    except (OSError, KeyError, IndexError) as exc:
        # 127/126 are what a shell reports for a missing / non-executable command.
        print(f"test executor: cannot start the container: {exc}", file=sys.stderr)
        missing = isinstance(exc, FileNotFoundError)
        return 127 if missing else 126
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
