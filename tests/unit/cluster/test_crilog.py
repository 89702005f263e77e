"""The executor's container logs: CRI log records, and the kwok Logs object that serves them."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.cluster.crilog import MAX_RECORD, CriLog, decode
from tests.cluster.executor import logs_object

pytestmark = pytest.mark.unit

RECORD = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (stdout|stderr) ([FP]) (.*)$")


def _relay(path: Path, stream: str, *chunks: bytes) -> None:
    log = CriLog(path)
    read_end, write_end = os.pipe()
    relay = threading.Thread(target=log.relay, args=(stream, read_end))
    relay.start()
    for chunk in chunks:
        os.write(write_end, chunk)
    os.close(write_end)
    relay.join(timeout=10)
    os.close(read_end)
    log.close()


def _records(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for line in path.read_bytes().splitlines():
        m = RECORD.match(line)
        assert m, line
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


def test_one_record_per_line_even_when_a_line_arrives_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "main.log"
    _relay(path, "stdout", b"one\ntw", b"o\n", b"\nno newline at the end")
    assert _records(path) == [
        (b"stdout", b"F", b"one"), (b"stdout", b"F", b"two"), (b"stdout", b"F", b""),
        (b"stdout", b"F", b"no newline at the end"),
    ]  # fmt: skip
    assert decode(path.read_bytes()) == "one\ntwo\n\nno newline at the end\n"


def test_long_lines_are_split_into_partial_records(tmp_path: Path) -> None:
    path = tmp_path / "main.log"
    line = b"x" * (2 * MAX_RECORD + 10)
    _relay(path, "stderr", line[:1000], line[1000:] + b"\nnext\n")
    tags = [(stream, tag, len(text)) for stream, tag, text in _records(path)]
    assert tags == [
        (b"stderr", b"P", MAX_RECORD), (b"stderr", b"P", MAX_RECORD), (b"stderr", b"F", 10),
        (b"stderr", b"F", 4),
    ]  # fmt: skip
    assert decode(path.read_bytes()) == line.decode() + "\nnext\n"


def test_both_streams_share_the_file_and_appends_keep_earlier_records(tmp_path: Path) -> None:
    path = tmp_path / "main.log"
    _relay(path, "stdout", b"out\n")
    _relay(path, "stderr", b"err\n")
    assert [(s, t) for s, _, t in _records(path)] == [(b"stdout", b"out"), (b"stderr", b"err")]
    assert decode(path.read_bytes()) == "out\nerr\n"


def test_decode_skips_what_is_not_a_record() -> None:
    data = b"garbage\nstdout F cut\n2026-01-01T00:00:00.000000Z stderr F ok\n"
    assert decode(data) == "ok\n"


def test_logs_object_is_named_after_and_owned_by_the_pod() -> None:
    meta = SimpleNamespace(name="job-abc", namespace="ns", uid="1234")
    obj = logs_object(SimpleNamespace(metadata=meta), "main", Path("/run/main.log"))
    assert obj["apiVersion"] == "kwok.x-k8s.io/v1alpha1" and obj["kind"] == "Logs"
    assert (obj["metadata"]["name"], obj["metadata"]["namespace"]) == ("job-abc", "ns")
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "job-abc", "uid": "1234"}
    ]
    assert obj["spec"]["logs"] == [
        {"containers": ["main"], "logsFile": "/run/main.log", "follow": True}
    ]
