"""S3 (and S3-compatible: MinIO, Ceph) through `obstore`, a Rust client with no botocore.

botocore pins `python-dateutil<3` while the `kubernetes` client needs `>=3`, so Kiln avoids it.
Credentials come from the environment the Job maps from a Secret, never from the Plan:

- `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), or a web identity
  (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, IRSA) or container credentials
  (`AWS_CONTAINER_CREDENTIALS_FULL_URI`/`_RELATIVE_URI`, EKS Pod Identity);
- `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for a non-AWS endpoint (path-style requests;
  `http://` endpoints are allowed);
- `AWS_REGION` or `AWS_DEFAULT_REGION` (default `us-east-1`).

Functions take any obstore store, so tests can pass a `LocalStore` or `MemoryStore`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import (
    GenericError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from kiln_jobs.errors import MissingCredentials, SourceNotFound
from kiln_jobs.sources.uri import Uri

__all__ = [
    "delete_keys",
    "download_file",
    "download_prefix",
    "open_bucket",
    "read_bytes",
    "split",
    "upload_file",
]

CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Any one of these provides credentials without static keys.
_IDENTITY_ENV = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def split(uri: Uri) -> tuple[str, str]:
    """`s3://bucket/some/prefix` → ("bucket", "some/prefix")."""
    bucket, _, prefix = uri.rest.partition("/")
    return bucket, prefix.strip("/")


# The operator hands the artifact store's credentials to a Job under this prefix, so they never
# collide with the model source's (both are AWS_* keys).


def _environment(prefix: str) -> dict[str, str]:
    """The environment with `prefix`ed variables taking the place of their plain names."""
    env = dict(os.environ)
    if prefix:
        env.update({k[len(prefix) :]: v for k, v in os.environ.items() if k.startswith(prefix)})
    return env


def open_bucket(bucket: str, *, env_prefix: str = "") -> Any:
    """An obstore S3 store for `bucket`, configured from the environment.

    Args:
        bucket: The bucket name.
        env_prefix: Read `<prefix>AWS_…` before `AWS_…` (the artifact store's credentials).

    Raises:
        MissingCredentials: the environment holds no S3 credentials.
    """
    env = _environment(env_prefix)
    has_keys = all(env.get(name) for name in CREDENTIAL_ENV)
    if not has_keys and not any(env.get(name) for name in _IDENTITY_ENV):
        raise MissingCredentials(
            f"s3://{bucket} needs credentials: set {' and '.join(CREDENTIAL_ENV)} (map them from "
            "a Secret), or run with a web identity (AWS_WEB_IDENTITY_TOKEN_FILE)"
        )
    config: dict[str, Any] = {
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if has_keys:
        config["access_key_id"] = env["AWS_ACCESS_KEY_ID"]
        config["secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            config["session_token"] = env["AWS_SESSION_TOKEN"]
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    client: dict[str, Any] = {}
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
        client["allow_http"] = endpoint.startswith("http://")
    return S3Store(bucket, config=config, client_options=client)  # type: ignore[arg-type]


def download_prefix(store: Any, prefix: str, dest: Path, *, what: str) -> Path:
    """Copy every object under `prefix` into `dest`, keeping relative paths.

    Raises:
        SourceNotFound: nothing is stored under `prefix`.
    """
    found = False
    with _translated(what):
        for batch in obstore.list(store, prefix or None):
            for meta in batch:
                key = meta["path"]
                if key.endswith("/"):
                    continue  # a folder marker some tools write
                relative = key[len(prefix) :].lstrip("/") if prefix else key
                _download(store, key, dest / relative)
                found = True
        if not found and prefix and _exists(store, prefix):
            # The prefix names one object (listing is by path segment, so it lists nothing).
            _download(store, prefix, dest / prefix.rsplit("/", 1)[-1])
            found = True
    if not found:
        raise SourceNotFound(f"{what}: nothing is stored under that prefix")
    return dest


def read_bytes(store: Any, key: str, *, what: str) -> bytes | None:
    """The object at `key`, or None if there is none."""
    with _translated(what):
        try:
            return bytes(obstore.get(store, key).bytes())
        except (NotFoundError, FileNotFoundError):  # obstore raises the latter for a missing key
            return None


def upload_file(store: Any, key: str, path: Path, *, what: str) -> None:
    """Put one local file at `key` (a single atomic put, multipart for large files)."""
    with _translated(what):
        obstore.put(store, key, path)


def download_file(store: Any, key: str, target: Path, *, what: str) -> None:
    """Copy one object to `target` (written aside, then renamed into place)."""
    with _translated(what):
        _download(store, key, target)


def delete_keys(store: Any, keys: list[str], *, what: str) -> None:
    """Delete objects; keys that are already gone are fine."""
    with _translated(what):
        for key in keys:
            with contextlib.suppress(NotFoundError, FileNotFoundError):
                obstore.delete(store, key)


def _exists(store: Any, key: str) -> bool:
    try:
        obstore.head(store, key)
    except (NotFoundError, FileNotFoundError):
        return False
    return True


def _download(store: Any, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("wb") as out:
        for chunk in obstore.get(store, key).stream():
            out.write(chunk)
    partial.replace(target)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn the store's access errors into Kiln's user-facing ones."""
    try:
        yield
    except (PermissionDeniedError, UnauthenticatedError) as err:
        raise MissingCredentials(f"{what}: access denied ({_first_line(err)})") from err
    except (NotFoundError, FileNotFoundError) as err:
        # obstore raises Python's FileNotFoundError for a missing key.
        raise SourceNotFound(f"{what}: not found ({_first_line(err)})") from err
    except GenericError as err:
        # Unknown bucket, unreachable endpoint, TLS failure: the store cannot be used as given.
        raise SourceNotFound(f"{what}: cannot be reached ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
