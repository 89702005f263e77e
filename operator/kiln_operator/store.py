"""What the operator can see of the artifact store directly.

When the platform team mounts the artifacts volume into the operator (config `store_mounts`), a
plan that is already published is served at once, with no Job. Otherwise the Job finds the
manifest itself and exits within seconds, which is slower but equally correct.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path

from pydantic import ValidationError

from kiln_jobs.manifest import MANIFEST_FILE, Manifest
from kiln_operator.published import Published

__all__ = ["find_published", "remove_published"]

log = logging.getLogger(__name__)


def local_plan_dir(
    store_uri: str, plan_hash: str, mounts: dict[str, str], namespace: str = ""
) -> Path | None:
    """Where `<store>/<plan_hash>` is on this machine, if a mount covers the store.

    A PVC is per namespace, so a mount path may contain `{namespace}`: with
    `{"pvc://artifacts": "/mnt/shares/{namespace}/artifacts"}` each namespace's claim of that
    name is found under its own directory.
    """
    store = store_uri.rstrip("/")
    for prefix, path in sorted(mounts.items(), key=lambda item: -len(item[0])):
        prefix = prefix.rstrip("/")
        if store == prefix or store.startswith(prefix + "/"):
            root = Path(path.replace("{namespace}", namespace))
            return root / store[len(prefix) :].lstrip("/") / plan_hash
    if store.startswith("file://"):
        return Path(store[len("file://") :]) / plan_hash
    return None


def find_published(
    store_uri: str, plan_hash: str, mounts: dict[str, str], namespace: str = "", scope: str = ""
) -> Published | None:
    """The published plan, when its manifest is visible, describes this plan and was published
    for this plan's cache scope (another scope's manifest is not served, whatever it says)."""
    directory = local_plan_dir(store_uri, plan_hash, mounts, namespace)
    if directory is None:
        return None
    path = directory / MANIFEST_FILE
    try:
        raw = path.read_bytes()
        manifest = Manifest.model_validate_json(raw)
    except (OSError, ValidationError):
        return None
    if manifest.scope_problem(plan_hash, scope or manifest.plan.scope) is not None:
        return None
    return Published.from_manifest(manifest, hashlib.sha256(raw).hexdigest())


def remove_published(
    store_uri: str, plan_hash: str, mounts: dict[str, str], namespace: str = ""
) -> bool:
    """Delete one plan's artifacts where the store is mounted here, writable; False when it is
    not (not mounted, or read-only as the chart mounts it): then a cleanup Job must do it."""
    directory = local_plan_dir(store_uri, plan_hash, mounts, namespace)
    if directory is None:
        return False
    if directory.exists():
        doomed = directory.with_name(f".removing-{plan_hash}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(directory, doomed)  # out of sight at once, like the job's own removal
        except OSError as err:
            log.info("cannot remove %s here (%s); a cleanup Job will", directory, err.strerror)
            return False
    # Also what an earlier, interrupted removal left; an error raises, and the handler retries.
    for leftover in directory.parent.glob(f".removing-{plan_hash}-*"):
        shutil.rmtree(leftover)
    return True
