"""Publish: artifacts appear under `<store>/<plan hash>/` whole with `manifest.json`, or not at all.

A present `manifest.json` means the work is done: the runner checks for it first and a re-run of
the same Plan returns the existing manifest without touching anything (the operator's cache).

Stores:

- `file:///dir` and `pvc://claim/dir` are directories. Artifacts are written into a staging
  directory inside the store (`.staging-<hash>-<id>`, same filesystem), every file gets a sha256
  digest, `manifest.json` is written last, and one `rename` moves the staging directory to
  `<hash>/`. A reader sees the old state or the whole new one. A run killed half-way leaves only
  a staging directory, which the next run for the same hash removes.
- `s3://bucket/prefix` has no rename: artifacts are staged on local disk, uploaded file by file,
  and `manifest.json` is uploaded last. Readers treat a prefix without a manifest as absent, so
  the manifest's single atomic PUT is the commit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from kiln_jobs.contract import STORE_ENV_PREFIX
from kiln_jobs.errors import SourceNotFound, UserError
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

    def fetch(self, plan_hash: str, dest: Path) -> Manifest:
        """Copy a published plan into `dest`, checking every file against its digest."""
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
        bucket_store = s3.open_bucket(bucket, env_prefix=STORE_ENV_PREFIX)
        return ObjectStore(bucket_store, prefix, uri.rstrip("/"), workdir / "staging")
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

    def fetch(self, plan_hash: str, dest: Path) -> Manifest:
        """See `Store.fetch`."""
        published = self._published(plan_hash)
        source = self.root / plan_hash
        for entry in published.manifest.files:
            _copy_checked(source / entry.path, _target(dest, entry), entry)
        _write_manifest(dest, published.manifest)
        return published.manifest

    def remove(self, plan_hash: str) -> bool:
        """See `Store.remove`: one rename takes the plan out of sight, then the files go."""
        final = self.root / plan_hash
        if not final.exists():
            return False
        doomed = self.root / f".removing-{plan_hash}-{uuid.uuid4().hex[:8]}"
        os.rename(final, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
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
    """A store in an S3 bucket (any obstore store works, for tests)."""

    def __init__(self, store: Any, prefix: str, uri: str, staging_root: Path) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.uri = uri
        self.staging_root = staging_root

    def _key(self, plan_hash: str, relative: str) -> str:
        return "/".join(part for part in (self.prefix, plan_hash, relative) if part)

    def existing(self, plan_hash: str) -> Published | None:
        """See `Store.existing`."""
        key = self._key(plan_hash, MANIFEST_FILE)
        text = s3.read_bytes(self.store, key, what=f"{self.uri}/{plan_hash}")
        manifest = _parse_manifest(text, f"{self.uri}/{plan_hash}")
        return None if manifest is None else Published(f"{self.uri}/{plan_hash}", None, manifest)

    def staging(self, plan_hash: str) -> Path:
        """See `Store.staging`."""
        path = self.staging_root / plan_hash
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit(self, staging: Path, manifest: Manifest) -> Published:
        """See `Store.commit`: every file, then the manifest."""
        where = f"{self.uri}/{manifest.plan_hash}"
        for entry in manifest.files:
            key = self._key(manifest.plan_hash, entry.path)
            s3.upload_file(self.store, key, staging / entry.path, what=where)
        _write_manifest(staging, manifest)
        key = self._key(manifest.plan_hash, MANIFEST_FILE)
        s3.upload_file(self.store, key, staging / MANIFEST_FILE, what=where)
        self.discard(staging)
        return Published(where, None, manifest)

    def discard(self, staging: Path) -> None:
        """See `Store.discard`."""
        shutil.rmtree(staging, ignore_errors=True)

    def fetch(self, plan_hash: str, dest: Path) -> Manifest:
        """See `Store.fetch`."""
        published = self.existing(plan_hash)
        if published is None:
            raise SourceNotFound(f"{self.uri}/{plan_hash} is not published (no manifest.json)")
        where = f"{self.uri}/{plan_hash}"
        for entry in published.manifest.files:
            target = _target(dest, entry)
            s3.download_file(self.store, self._key(plan_hash, entry.path), target, what=where)
            _check_digest(target, entry)
        _write_manifest(dest, published.manifest)
        return published.manifest

    def remove(self, plan_hash: str) -> bool:
        """See `Store.remove`: the manifest first, so a half-deleted plan is never served."""
        published = self.existing(plan_hash)
        if published is None:
            return False
        where = f"{self.uri}/{plan_hash}"
        s3.delete_keys(self.store, [self._key(plan_hash, MANIFEST_FILE)], what=where)
        keys = [self._key(plan_hash, entry.path) for entry in published.manifest.files]
        s3.delete_keys(self.store, keys, what=where)
        return True


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
