"""What the operator does with a store mounted into its own pod (`store_mounts`)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kiln_operator.store import local_plan_dir, remove_published

pytestmark = pytest.mark.unit


def test_a_namespaced_mount_finds_each_namespaces_claim(tmp_path: Path) -> None:
    mounts = {"pvc://artifacts": str(tmp_path / "{namespace}")}
    where = local_plan_dir("pvc://artifacts/kiln", "h1", mounts, "team-a")
    assert where == tmp_path / "team-a" / "kiln" / "h1"
    assert local_plan_dir("s3://bucket/kiln", "h1", mounts, "team-a") is None


def test_removal_takes_the_plan_and_an_interrupted_removals_leftovers(tmp_path: Path) -> None:
    mounts = {"pvc://artifacts": str(tmp_path)}
    (tmp_path / "h1" / "checkpoint").mkdir(parents=True)
    (tmp_path / ".removing-h1-0badf00d").mkdir()  # a removal killed half-way
    (tmp_path / "h2").mkdir()
    assert remove_published("pvc://artifacts", "h1", mounts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h2"]


def test_a_read_only_mount_leaves_the_removal_to_a_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounts = {"pvc://artifacts": str(tmp_path)}
    (tmp_path / "h1").mkdir()

    def read_only(source: object, target: object) -> None:  # root ignores chmod: fake the mount
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(source))

    monkeypatch.setattr(os, "rename", read_only)
    assert not remove_published("pvc://artifacts", "h1", mounts)  # not "done": a Job must do it
    assert (tmp_path / "h1").is_dir()
