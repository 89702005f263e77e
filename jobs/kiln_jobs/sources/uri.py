"""Kiln's location URIs and how each maps to a local path.

- `file:///abs/path`: a local path (local runs, tests).
- `pvc://claim/path`: a PersistentVolumeClaim the Job mounts at `$KILN_PVC_ROOT/claim`
  (default `/mnt/pvc`), so the path is `$KILN_PVC_ROOT/claim/path`.
- `s3://bucket/prefix`: an object store (`kiln_jobs.sources.s3`).
- `hf://org/name`, `hf://datasets/org/name`: the Hugging Face Hub.
- `package://dist-name`: files shipped inside an installed Python package.
- `builtin://common-licenses`: text shipped with the OS (`kiln_jobs.sources.data`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kiln_jobs.contract import PVC_ROOT, PVC_ROOT_ENV
from kiln_jobs.errors import UserError

__all__ = ["Uri", "local_path", "parse_uri"]

_SCHEMES = ("file", "pvc", "s3", "hf", "package", "builtin")


@dataclass(frozen=True)
class Uri:
    """A parsed location: `scheme://rest`."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.rest}"


def parse_uri(text: str) -> Uri:
    """Split a location into scheme and rest; unknown or missing schemes are a user error."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise UserError(
            f"unsupported location {text!r}: use one of " + ", ".join(f"{s}://" for s in _SCHEMES)
        )
    if not rest.strip("/"):
        raise UserError(f"location {text!r} names nothing after {scheme}://")
    return Uri(scheme, rest)


def local_path(uri: Uri) -> Path:
    """The local path of a `file://` or `pvc://` location."""
    if uri.scheme == "file":
        return Path("/" + uri.rest.lstrip("/"))
    if uri.scheme == "pvc":
        root = Path(os.environ.get(PVC_ROOT_ENV, PVC_ROOT))
        return root / uri.rest.strip("/")
    raise UserError(f"{uri} is not a local location (file:// or pvc://)")
