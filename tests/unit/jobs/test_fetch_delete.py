"""`python -m kiln_jobs fetch` and `delete`: Triton's init container and retention: delete."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import obstore
import pytest
from obstore.store import MemoryStore

from kiln_jobs.__main__ import main
from kiln_jobs.errors import ExitCode
from kiln_jobs.manifest import MANIFEST_FILE, CheckpointInfo, Manifest, Metrics
from kiln_jobs.plan import DataRef, EvaluationPlan, ModelRef, OutputPlan, Plan, PlanMetadata
from kiln_jobs.publish import DirectoryStore, ObjectStore, digest_files
from kiln_jobs.sources.s3 import Bucket

pytestmark = pytest.mark.unit


def _publish(store: DirectoryStore | ObjectStore, tmp_path: Path) -> str:
    plan = Plan(
        metadata=PlanMetadata(name="p"), model=ModelRef(source="file:///m"), techniques=(),
        evaluation=EvaluationPlan(data=DataRef(samples=1, seq_length=8), stride=8),
        output=OutputPlan(store="file:///s"),
    )  # fmt: skip
    staging = store.staging(plan.hash())
    (staging / "checkpoint").mkdir()
    (staging / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    (staging / "triton" / "model" / "1").mkdir(parents=True)
    (staging / "triton" / "model" / "config.pbtxt").write_text('name: "model"')
    manifest = Manifest(
        plan_hash=plan.hash(), plan=plan, created_at="now", stages=[], metrics=Metrics(),
        checkpoint=CheckpointInfo(), files=digest_files(staging),
    )  # fmt: skip
    store.commit(staging, manifest)
    return plan.hash()


def test_fetch_copies_and_checks_digests(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    plan_hash = _publish(store, tmp_path)
    dest = tmp_path / "model"
    uri = (tmp_path / "store").as_uri()
    assert main(["fetch", "--store", uri, "--plan-hash", plan_hash, "--dest", str(dest)]) == 0
    assert (dest / "checkpoint" / "model.safetensors").read_bytes() == b"weights"
    assert (dest / MANIFEST_FILE).exists()


def test_fetch_refuses_a_tampered_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = DirectoryStore(tmp_path / "store")
    plan_hash = _publish(store, tmp_path)
    (tmp_path / "store" / plan_hash / "checkpoint" / "model.safetensors").write_bytes(b"evil")
    uri = (tmp_path / "store").as_uri()
    code = main(["fetch", "--store", uri, "--plan-hash", plan_hash, "--dest", str(tmp_path / "d")])
    assert code == ExitCode.USER_ERROR
    assert "sha256 does not match" in capsys.readouterr().err


def test_fetch_of_an_unpublished_plan(tmp_path: Path) -> None:
    uri = (tmp_path / "store").as_uri()
    code = main(["fetch", "--store", uri, "--plan-hash", "0" * 16, "--dest", str(tmp_path / "d")])
    assert code == ExitCode.SOURCE_NOT_FOUND


def test_delete_unpublishes_and_removes(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    plan_hash = _publish(store, tmp_path)
    uri = (tmp_path / "store").as_uri()
    assert main(["delete", "--store", uri, "--plan-hash", plan_hash]) == 0
    assert store.existing(plan_hash) is None
    assert not any((tmp_path / "store").iterdir())
    assert main(["delete", "--store", uri, "--plan-hash", plan_hash]) == 0  # idempotent


def test_a_removal_the_store_refuses_is_an_error_not_a_success(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryStore(tmp_path / "store")
    plan_hash = _publish(store, tmp_path)

    def read_only(source: object, target: object) -> None:  # a read-only mount (root ignores
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(source))  # chmod, so fake it)

    monkeypatch.setattr(os, "rename", read_only)
    uri = (tmp_path / "store").as_uri()
    code = main(["delete", "--store", uri, "--plan-hash", plan_hash])
    assert code == ExitCode.USER_ERROR
    assert "could not be removed: Read-only file system" in capsys.readouterr().err
    assert store.existing(plan_hash) is not None


def test_object_store_fetch_and_remove(tmp_path: Path) -> None:
    bucket = MemoryStore()
    store = ObjectStore(Bucket(bucket), "kiln", "s3://bucket/kiln", tmp_path / "staging")
    plan_hash = _publish(store, tmp_path)
    obstore.put(bucket, f"kiln/{plan_hash}/attempts/abandoned/x", b"a killed run's upload")
    manifest = store.fetch(plan_hash, tmp_path / "model")
    assert (tmp_path / "model" / "triton" / "model" / "config.pbtxt").exists()
    assert len(manifest.files) == 2
    assert store.remove(plan_hash) and store.existing(plan_hash) is None
    assert list(obstore.list(bucket, "kiln").collect()) == []
    assert not store.remove(plan_hash)


@pytest.mark.parametrize("kind", ["directory", "object"])
def test_both_stores_fetch_only_the_selected_files(kind: str, tmp_path: Path) -> None:
    store: DirectoryStore | ObjectStore = (
        DirectoryStore(tmp_path / "store")
        if kind == "directory"
        else ObjectStore(Bucket(MemoryStore()), "kiln", "s3://b/kiln", tmp_path / "staging")
    )
    plan_hash = _publish(store, tmp_path)
    dest = tmp_path / "fetched"
    store.fetch(plan_hash, dest, select=lambda path: not path.endswith(".safetensors"))
    fetched = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert fetched == [MANIFEST_FILE, "triton/model/config.pbtxt"]


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "a/../../b", "a//b", "./a", ""])
def test_a_manifest_cannot_name_a_file_outside_the_plan(path: str) -> None:
    from pydantic import ValidationError

    from kiln_jobs.manifest import FileDigest

    with pytest.raises(ValidationError, match="inside the plan directory"):
        FileDigest(path=path, sha256="0" * 64, size_bytes=1)
