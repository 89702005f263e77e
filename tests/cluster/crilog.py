"""Container logs in the CRI log format: what a kubelet's container runtime writes and serves.

One record per line of output: ``<RFC 3339 time> <stdout|stderr> <F|P> <text>``, tag ``P`` for a
piece of a line longer than :data:`MAX_RECORD` (the next record continues it), ``F`` for the end
of a line. kwok serves such files as a kubelet does (``kubectl logs``, ``--tail``,
``--timestamps``, ``--follow``): it cannot read plain text.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["MAX_RECORD", "CriLog", "decode"]

#: Longest text in one record (containerd's default); longer lines are split into P records.
MAX_RECORD = 16 * 1024


def _timestamp() -> bytes:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


class CriLog:
    """An append-only CRI log file that several streams write whole records to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, stream: str, text: bytes, partial: bool = False) -> None:
        """Append one record (``text`` holds no newline)."""
        record = b" ".join((_timestamp(), stream.encode(), b"P" if partial else b"F", text))
        with self._lock:
            os.write(self._fd, record + b"\n")

    def relay(self, stream: str, fd: int) -> None:
        """Copy what is written to ``fd`` (a pipe's read end) until end of file, line by line.

        A line is logged when its newline arrives, as a container runtime does; a final line
        without a newline is logged at end of file.
        """
        pending = b""
        while chunk := os.read(fd, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._write_line(stream, line)
            while len(pending) >= MAX_RECORD:
                self.write(stream, pending[:MAX_RECORD], partial=True)
                pending = pending[MAX_RECORD:]
        if pending:
            self.write(stream, pending)

    def _write_line(self, stream: str, line: bytes) -> None:
        while len(line) > MAX_RECORD:
            self.write(stream, line[:MAX_RECORD], partial=True)
            line = line[MAX_RECORD:]
        self.write(stream, line)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def decode(data: bytes) -> str:
    """The plain text of CRI log records (both streams, in file order; other lines skipped)."""
    out = bytearray()
    for record in data.split(b"\n"):
        fields = record.split(b" ", 3)
        if len(fields) < 4 or fields[1] not in (b"stdout", b"stderr"):
            continue
        out += fields[3]
        if not fields[2].startswith(b"P"):
            out += b"\n"
    return out.decode(errors="replace")
