"""Publish: artifacts appear under `<store>/<plan hash>/` whole with `manifest.json`, or not at all.

A present `manifest.json` means the work is done: the runner checks for it first and a re-run of
the same Plan returns the existing manifest without touching anything (the operator's cache).

Stores:

- `file:///dir` and `pvc://claim/dir` are directories. Artifacts are written into a staging
  directory inside the store (`.staging-<hash>-<id>`, same filesystem), every file gets a sha256
  digest, `manifest.json` is written last, and one `rename` moves the staging directory to
  `<hash>/`. A reader sees the old state or the whole new one. A run killed half-way leaves only
  a staging directory, which the next run for the same hash removes.
- `s3://bucket/prefix` has no rename: artifacts are staged on local disk and uploaded file by
  file under `<hash>/attempts/<id>/`, a folder of this attempt's own; then `<hash>/manifest.json`
  is created with a conditional put (`If-None-Match: *`) that names the folder. Readers treat a
  prefix without a manifest as absent, so that one put is the commit, and of two publishers of
  the same plan exactly one wins: the other keeps the winner's manifest and deletes its own
  folder. A transient fault during the upload is retried (`sources.s3.Bucket`) and the upload
  resumes with the files not yet sent; the local result is kept until the commit is done.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from kiln_jobs.contract import STORE_ENV_PREFIX
from kiln_jobs.errors import SourceNotFound, StoreUnavailable, UserError
from kiln_jobs.manifest import MANIFEST_FILE, FileDigest, Manifest
from kiln_jobs.sources import s3
from kiln_jobs.sources.uri import local_path, parse_uri

__all__ = [
    "DirectoryStore",
    "ObjectStore",
    "Published",
    "Store",
    "digest_files",
    "open_store",
    "verify_published",
]

log = logging.getLogger(__name__)

_STALE_STAGING_SECONDS = 3600.0


@dataclass(frozen=True)
class Published:
    """Where a plan's artifacts are: a URI, and a local directory when the store has one."""

    uri: str
    directory: Path | None
    manifest: Manifest


class Store(Protocol):
    """An artifact store, keyed by plan hash."""

    def existing(self, plan_hash: str) -> Published | None:
        """The published artifacts of `plan_hash`, if a manifest is present."""
        ...

    def staging(self, plan_hash: str) -> Path:
        """A fresh, empty local directory to write the artifacts into."""
        ...

    def commit(self, staging: Path, manifest: Manifest) -> Published:
        """Write `manifest` last and make the staged artifacts visible as a whole."""
        ...

    def discard(self, staging: Path) -> None:
        """Remove a staging directory that will not be committed."""
        ...

    def fetch(
        self,
        plan_hash: str,
        dest: Path,
        *,
        under: str | None = None,
        select: Callable[[str], bool] | None = None,
    ) -> Manifest:
        """Copy a published plan into `dest`, checking every file against its digest; with
        `under`, only the files in that folder of the plan (e.g. `report`); with `select`, only
        the files whose plan-relative path it accepts (a tokenizer without the weights)."""
        ...

    def remove(self, plan_hash: str) -> bool:
        """Unpublish a plan (its manifest first) and delete its files; False if absent."""
        ...


def open_store(uri: str, workdir: Path) -> Store:
    """The store for an `output.store` URI; `workdir` holds local staging for remote stores."""
    parsed = parse_uri(uri)
    if parsed.scheme in ("file", "pvc"):
        return DirectoryStore(local_path(parsed), uri=uri.rstrip("/"))
    if parsed.scheme == "s3":
        bucket, prefix = s3.split(parsed)
        opened = s3.open_bucket(bucket, env_prefix=STORE_ENV_PREFIX)
        return ObjectStore(opened, prefix, uri.rstrip("/"), workdir / "staging")
    raise UserError(f"output.store {uri}: artifacts go to file://, pvc:// or s3://")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_files(directory: Path) -> list[FileDigest]:
    """A digest of every file under `directory` except the manifest, in path order."""
    return [
        FileDigest(
            path=path.relative_to(directory).as_posix(),
            sha256=sha256_file(path),
            size_bytes=path.stat().st_size,
        )
        for path in sorted(p for p in directory.rglob("*") if p.is_file())
        if path.relative_to(directory).as_posix() != MANIFEST_FILE
    ]


class DirectoryStore:
    """A store on a local or mounted filesystem (`file://`, `pvc://`)."""

    def __init__(self, root: Path, *, uri: str | None = None) -> None:
        self.root = root
        self.uri = uri or root.as_uri()

    def existing(self, plan_hash: str) -> Published | None:
        """See `Store.existing`."""
        final = self.root / plan_hash
        manifest = _parse_manifest(_read(final / MANIFEST_FILE), f"{self.uri}/{plan_hash}")
        if manifest is None:
            return None
        return Published(f"{self.uri}/{plan_hash}", final, manifest)

    def staging(self, plan_hash: str) -> Path:
        """See `Store.staging`."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging(plan_hash)
        path = self.root / f".staging-{plan_hash}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def commit(self, staging: Path, manifest: Manifest) -> Published:
        """See `Store.commit`: manifest last, then one atomic rename."""
        _write_manifest(staging, manifest)
        final = self.root / manifest.plan_hash
        for _ in range(2):
            try:
                os.rename(staging, final)
                break
            except OSError:
                # Someone else finished first, or something that is not a publish is in the way.
                if self.existing(manifest.plan_hash) is not None:
                    log.info("%s was published meanwhile; keeping it", final)
                    self.discard(staging)
                    break
                aside = self.root / f".stale-{manifest.plan_hash}-{uuid.uuid4().hex[:8]}"
                log.warning("%s holds no manifest; moving it to %s", final, aside)
                os.rename(final, aside)
        _fsync_dir(self.root)
        published = self.existing(manifest.plan_hash)
        if published is None:
            raise RuntimeError(f"publish of {final} did not leave a manifest")
        return published

    def discard(self, staging: Path) -> None:
        """See `Store.discard`."""
        shutil.rmtree(staging, ignore_errors=True)

    def fetch(
        self,
        plan_hash: str,
        dest: Path,
        *,
        under: str | None = None,
        select: Callable[[str], bool] | None = None,
    ) -> Manifest:
        """See `Store.fetch`."""
        published = self._published(plan_hash)
        source = self.root / plan_hash
        for entry in _entries(published.manifest, under, select):
            _copy_checked(source / entry.path, _target(dest, entry), entry)
        _write_manifest(dest, published.manifest)
        return published.manifest

    def remove(self, plan_hash: str) -> bool:
        """See `Store.remove`: one rename takes the plan out of sight, then the files go.

        Raises:
            UserError: the store refuses (read-only, permissions); nothing is reported removed.
        """
        final = self.root / plan_hash
        if not final.exists():
            return False
        doomed = self.root / f".removing-{plan_hash}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(final, doomed)
            shutil.rmtree(doomed)
        except OSError as err:
            raise UserError(
                f"{self.uri}/{plan_hash} could not be removed: {err.strerror} ({err.filename}); "
                "the store must be writable where the removal runs"
            ) from err
        return True

    def _published(self, plan_hash: str) -> Published:
        published = self.existing(plan_hash)
        if published is None:
            raise SourceNotFound(f"{self.uri}/{plan_hash} is not published (no manifest.json)")
        return published

    def _remove_stale_staging(self, plan_hash: str) -> None:
        """Remove staging directories of killed runs (old enough not to be a live one)."""
        now = time.time()
        for path in self.root.glob(f".staging-{plan_hash}-*"):
            if now - path.stat().st_mtime > _STALE_STAGING_SECONDS:
                shutil.rmtree(path, ignore_errors=True)


class ObjectStore:
    """A store in an S3 bucket (a `Bucket` over any obstore store, for tests)."""

    def __init__(self, bucket: s3.Bucket, prefix: str, uri: str, staging_root: Path) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = uri
        self.staging_root = staging_root

    def _key(self, plan_hash: str, *relative: str | None) -> str:
        return "/".join(part for part in (self.prefix, plan_hash, *relative) if part)

    def existing(self, plan_hash: str) -> Published | None:
        """See `Store.existing`."""
        key = self._key(plan_hash, MANIFEST_FILE)
        text = self.bucket.read_bytes(key, what=f"{self.uri}/{plan_hash}")
        manifest = _parse_manifest(text, f"{self.uri}/{plan_hash}")
        return None if manifest is None else Published(f"{self.uri}/{plan_hash}", None, manifest)

    def staging(self, plan_hash: str) -> Path:
        """See `Store.staging`."""
        path = self.staging_root / plan_hash
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit(self, staging: Path, manifest: Manifest) -> Published:
        """See `Store.commit`: this attempt's files into a folder of its own, then the manifest
        with a conditional put; if another publisher's manifest got there first, theirs stays."""
        plan_hash = manifest.plan_hash
        where = f"{self.uri}/{plan_hash}"
        manifest = manifest.model_copy(update={"objects_dir": f"attempts/{uuid.uuid4().hex}"})
        self._upload(staging, manifest, where)
        _write_manifest(staging, manifest)
        key = self._key(plan_hash, MANIFEST_FILE)
        if self.bucket.create(key, (staging / MANIFEST_FILE).read_bytes(), what=where):
            self.discard(staging)
            return Published(where, None, manifest)
        log.info("%s was published meanwhile by another run; keeping it", where)
        winner = self.existing(plan_hash)
        self._delete_objects(plan_hash, manifest.objects_dir, where)
        self.discard(staging)
        if winner is None:
            raise StoreUnavailable(f"{where}: {MANIFEST_FILE} exists but cannot be read back")
        return winner

    def _upload(self, staging: Path, manifest: Manifest, where: str) -> None:
        """Every listed file; `Bucket` retries each through transient faults, so an upload
        that resumes after an outage sends only the files not yet sent."""
        for entry in manifest.files:
            key = self._key(manifest.plan_hash, manifest.objects_dir, entry.path)
            self.bucket.upload_file(key, staging / entry.path, what=where)

    def discard(self, staging: Path) -> None:
        """See `Store.discard`."""
        shutil.rmtree(staging, ignore_errors=True)

    def fetch(
        self,
        plan_hash: str,
        dest: Path,
        *,
        under: str | None = None,
        select: Callable[[str], bool] | None = None,
    ) -> Manifest:
        """See `Store.fetch`."""
        published = self.existing(plan_hash)
        if published is None:
            raise SourceNotFound(f"{self.uri}/{plan_hash} is not published (no manifest.json)")
        where = f"{self.uri}/{plan_hash}"
        objects_dir = published.manifest.objects_dir
        for entry in _entries(published.manifest, under, select):
            target = _target(dest, entry)
            key = self._key(plan_hash, objects_dir, entry.path)
            self.bucket.download_file(key, target, what=where)
            _check_digest(target, entry)
        _write_manifest(dest, published.manifest)
        return published.manifest

    def remove(self, plan_hash: str) -> bool:
        """See `Store.remove`: the manifest first, so a half-deleted plan is never served, then
        every object under the plan (the published files and any abandoned attempt's).

        Raises:
            MissingCredentials, StoreUnavailable: a delete failed; nothing is reported removed.
        """
        where = f"{self.uri}/{plan_hash}"
        published = self.existing(plan_hash)
        if published is not None:
            self.bucket.delete_keys([self._key(plan_hash, MANIFEST_FILE)], what=where)
        removed = self._delete_objects(plan_hash, None, where)
        return published is not None or removed > 0

    def _delete_objects(self, plan_hash: str, folder: str | None, where: str) -> int:
        keys = self.bucket.list_keys(self._key(plan_hash, folder), what=where)
        self.bucket.delete_keys(keys, what=where)
        return len(keys)


def verify_published(directory: Path, plan_hash: str, manifest_sha256: str | None) -> Manifest:
    """Check a published plan directory before it is served: the manifest is the one pinned
    (`manifest_sha256`, when known) and describes `plan_hash`, every file it lists has its
    digest, and nothing else is there.

    Raises:
        UserError: Anything does not match (nothing may be served from it).
    """
    raw = _read(directory / MANIFEST_FILE)
    if raw is None:
        raise UserError(f"{directory} holds no {MANIFEST_FILE}: nothing is published there")
    digest = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 and digest != manifest_sha256:
        raise UserError(
            f"{directory}/{MANIFEST_FILE} has sha256 {digest}, not the {manifest_sha256} "
            "recorded when the plan was published: the store was changed since"
        )
    manifest = _parse_manifest(raw, str(directory))
    assert manifest is not None  # raw was read
    if manifest.plan_hash != plan_hash or manifest.plan.hash() != plan_hash:
        raise UserError(f"{directory}/{MANIFEST_FILE} does not describe plan {plan_hash}")
    listed = {entry.path for entry in manifest.files} | {MANIFEST_FILE}
    extra = sorted(
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and path.relative_to(directory).as_posix() not in listed
    )
    if extra:
        raise UserError(f"{directory} holds files the manifest does not list: {extra[:5]}")
    for entry in manifest.files:
        _check_digest(_target(directory, entry), entry)
    return manifest


def _entries(
    manifest: Manifest, under: str | None, select: Callable[[str], bool] | None = None
) -> list[FileDigest]:
    """The manifest's files, or those in the folder `under` that `select` accepts (one choice
    for every store, so each fetches the same files)."""
    prefix = "" if under is None else under.strip("/") + "/"
    return [
        entry
        for entry in manifest.files
        if entry.path.startswith(prefix) and (select is None or select(entry.path))
    ]


def _check_digest(path: Path, entry: FileDigest) -> None:
    if not path.is_file():
        raise UserError(f"{entry.path}: listed in the manifest but missing, so it is not served")
    if sha256_file(path) != entry.sha256:
        raise UserError(
            f"{entry.path}: its sha256 does not match the manifest; the published plan was "
            "changed after publishing, so it is not served"
        )


def _target(dest: Path, entry: FileDigest) -> Path:
    """Where a manifest entry goes under `dest`; never outside it (the manifest is input)."""
    target = (dest / entry.path).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UserError(f"{entry.path}: the manifest names a file outside the plan directory")
    return target


def _copy_checked(source: Path, target: Path, entry: FileDigest) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    _check_digest(target, entry)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse_manifest(data: bytes | None, where: str) -> Manifest | None:
    if data is None:
        return None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as err:
        raise UserError(
            f"{where}/{MANIFEST_FILE} is not a Kiln manifest ({err.error_count()} errors); "
            "remove that directory to publish again"
        ) from err


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    path = directory / MANIFEST_FILE
    with path.open("w") as f:
        f.write(manifest.text())
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (a crash right after must not undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
