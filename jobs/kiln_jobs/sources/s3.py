"""S3 (and S3-compatible: MinIO, Ceph) through `obstore`, a Rust client with no botocore.

botocore pins `python-dateutil<3` while the `kubernetes` client needs `>=3`, so Kiln avoids it.
Credentials come from the environment the Job maps from a Secret, never from the Plan:

- `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), or a web identity
  (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, IRSA) or container credentials
  (`AWS_CONTAINER_CREDENTIALS_FULL_URI`/`_RELATIVE_URI`, EKS Pod Identity);
- `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for a non-AWS endpoint (path-style requests;
  `http://` endpoints are allowed);
- `AWS_REGION` or `AWS_DEFAULT_REGION` (default `us-east-1`).

Transient faults (5xx, dropped connections, timeouts) are retried twice over: obstore retries
each request a few times within seconds, and `Bucket` retries each whole operation with
exponential backoff until the retry budget (`KILN_STORE_RETRY_SECONDS`, default 600) is spent,
then raises `StoreUnavailable`, whose exit code the Job retries. Access errors and missing keys
are not retried: waiting cannot fix them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    GenericError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from kiln_jobs.errors import MissingCredentials, SourceNotFound, StoreUnavailable
from kiln_jobs.sources.uri import Uri

__all__ = ["Bucket", "Retry", "open_bucket", "split"]

log = logging.getLogger(__name__)

CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Any one of these provides credentials without static keys.
_IDENTITY_ENV = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)
RETRY_SECONDS_ENV = "KILN_STORE_RETRY_SECONDS"
TIMEOUT_SECONDS_ENV = "KILN_STORE_TIMEOUT_SECONDS"

# What obstore's messages say for faults that waiting can cure: its retry loop gave up, a 5xx,
# a timeout, a connection that failed or dropped.
_TRANSIENT = re.compile(
    r"after \d+ retries|status code: 5\d\d|timed out|timeout|error sending request|connection",
    re.IGNORECASE,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How long to keep trying a store that answers 5xx or does not answer at all."""

    budget_seconds: float = 600.0
    request_timeout_seconds: float = 120.0
    first_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> Retry:
        """The defaults, or `KILN_STORE_RETRY_SECONDS` / `KILN_STORE_TIMEOUT_SECONDS`."""
        budget = float(os.environ.get(RETRY_SECONDS_ENV) or cls.budget_seconds)
        timeout = float(os.environ.get(TIMEOUT_SECONDS_ENV) or cls.request_timeout_seconds)
        return cls(budget_seconds=budget, request_timeout_seconds=timeout)

    def obstore_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(retry_config, client_options) for obstore: quick retries of single requests."""
        retry = {
            "max_retries": 3,
            "retry_timeout": timedelta(seconds=min(self.budget_seconds, 60.0)),
            "backoff": {
                "init_backoff": timedelta(milliseconds=200),
                "max_backoff": timedelta(seconds=5),
            },
        }
        client = {
            "timeout": timedelta(seconds=self.request_timeout_seconds),
            "connect_timeout": timedelta(seconds=min(self.request_timeout_seconds, 10.0)),
        }
        return retry, client


def split(uri: Uri) -> tuple[str, str]:
    """`s3://bucket/some/prefix` → ("bucket", "some/prefix")."""
    bucket, _, prefix = uri.rest.partition("/")
    return bucket, prefix.strip("/")


def _environment(prefix: str) -> dict[str, str]:
    """The environment with `prefix`ed variables taking the place of their plain names.

    The operator hands the artifact store's credentials to a Job under a prefix, so they never
    collide with the model source's (both are AWS_* keys).
    """
    env = dict(os.environ)
    if prefix:
        env.update({k[len(prefix) :]: v for k, v in os.environ.items() if k.startswith(prefix)})
    return env


def open_bucket(bucket: str, *, env_prefix: str = "", retry: Retry | None = None) -> Bucket:
    """A bucket configured from the environment.

    Args:
        bucket: The bucket name.
        env_prefix: Read `<prefix>AWS_…` before `AWS_…` (the artifact store's credentials).
        retry: The retry policy; `Retry.from_env()` when not given.

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
    retry = retry or Retry.from_env()
    config: dict[str, Any] = {
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if has_keys:
        config["access_key_id"] = env["AWS_ACCESS_KEY_ID"]
        config["secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            config["session_token"] = env["AWS_SESSION_TOKEN"]
    retry_config, client = retry.obstore_config()
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
        client["allow_http"] = endpoint.startswith("http://")
    store = S3Store(
        bucket,
        config=config,  # type: ignore[arg-type]
        client_options=client,  # type: ignore[arg-type]
        retry_config=retry_config,  # type: ignore[arg-type]
    )
    return Bucket(store, retry)


@dataclass
class Bucket:
    """Operations on one bucket (any obstore store: tests pass a `MemoryStore`), each retried
    through transient faults within the retry budget."""

    store: Any
    retry: Retry = field(default_factory=Retry)
    sleep: Callable[[float], None] = time.sleep

    def read_bytes(self, key: str, *, what: str) -> bytes | None:
        """The object at `key`, or None if there is none."""

        def read() -> bytes | None:
            try:
                return bytes(obstore.get(self.store, key).bytes())
            except (NotFoundError, FileNotFoundError):  # obstore raises both for a missing key
                return None

        return self._retried(read, what)

    def upload_file(self, key: str, path: Path, *, what: str) -> None:
        """Put one local file at `key` (a single atomic put, multipart for large files)."""
        self._retried(lambda: obstore.put(self.store, key, path), what)

    def create(self, key: str, data: bytes, *, what: str) -> bool:
        """Put `data` at `key` only if nothing is there (a conditional put); False if taken."""

        def put() -> bool:
            try:
                obstore.put(self.store, key, data, mode="create")
            except (AlreadyExistsError, PreconditionError):
                return False
            return True

        return self._retried(put, what)

    def download_file(self, key: str, target: Path, *, what: str) -> None:
        """Copy one object to `target` (written aside, then renamed into place)."""
        self._retried(lambda: self._download(key, target), what)

    def download_prefix(self, prefix: str, dest: Path, *, what: str) -> Path:
        """Copy every object under `prefix` into `dest`, keeping relative paths.

        Raises:
            SourceNotFound: nothing is stored under `prefix`.
        """
        keys = self.list_keys(prefix, what=what)
        if keys:
            for key in keys:
                relative = key[len(prefix) :].lstrip("/") if prefix else key
                self.download_file(key, dest / relative, what=what)
        elif prefix and self._retried(lambda: self._exists(prefix), what):
            # The prefix names one object (listing is by path segment, so it lists nothing).
            self.download_file(prefix, dest / prefix.rsplit("/", 1)[-1], what=what)
        else:
            raise SourceNotFound(f"{what}: nothing is stored under that prefix")
        return dest

    def list_keys(self, prefix: str, *, what: str) -> list[str]:
        """Every key under `prefix` (a path-segment prefix), without folder markers."""

        def listed() -> list[str]:
            return [
                meta["path"]
                for batch in obstore.list(self.store, prefix or None)
                for meta in batch
                if not meta["path"].endswith("/")  # a folder marker some tools write
            ]

        return self._retried(listed, what)

    def delete_keys(self, keys: list[str], *, what: str) -> None:
        """Delete objects; keys that are already gone are fine, any other failure raises."""
        for key in keys:
            self._retried(lambda key=key: self._delete(key), what)  # type: ignore[misc]

    def _delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError, FileNotFoundError):
            obstore.delete(self.store, key)

    def _exists(self, key: str) -> bool:
        try:
            obstore.head(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        return True

    def _download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with partial.open("wb") as out:
            for chunk in obstore.get(self.store, key).stream():
                out.write(chunk)
        partial.replace(target)

    def _retried(self, operation: Callable[[], T], what: str) -> T:
        """Run `operation`, retrying transient faults with backoff until the budget is spent."""
        began = time.monotonic()
        delay = self.retry.first_backoff_seconds
        for attempt in range(1, 1_000_000):
            try:
                with _translated(what):
                    return operation()
            except StoreUnavailable as err:
                spent = time.monotonic() - began
                if spent + delay > self.retry.budget_seconds:
                    raise StoreUnavailable(
                        f"{err.message}; gave up after {attempt} tries in {spent:.0f} s (retry "
                        f"budget {self.retry.budget_seconds:.0f} s, {RETRY_SECONDS_ENV}); the "
                        "Job retries"
                    ) from err
                log.warning("%s (try %d); retrying in %.0f s", err.message, attempt, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.retry.max_backoff_seconds)
        raise AssertionError("unreachable")


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn the store's errors into Kiln's user-facing ones."""
    try:
        yield
    except (PermissionDeniedError, UnauthenticatedError) as err:
        raise MissingCredentials(f"{what}: access denied ({_first_line(err)})") from err
    except (NotFoundError, FileNotFoundError) as err:
        # obstore raises Python's FileNotFoundError for a missing key or bucket.
        raise SourceNotFound(f"{what}: not found ({_first_line(err)})") from err
    except GenericError as err:
        if _TRANSIENT.search(str(err)):
            message = f"{what}: the store is unavailable ({_first_line(err)})"
            raise StoreUnavailable(message) from err
        # A TLS failure, a malformed endpoint: the store cannot be used as given.
        raise SourceNotFound(f"{what}: cannot be used ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
