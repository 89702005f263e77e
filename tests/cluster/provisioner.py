"""TEST-ONLY dynamic provisioner: PersistentVolumeClaims of the default StorageClass become
hostPath PersistentVolumes over ``<run dir>/pvc/<namespace>/<claim>``, the directory the local
executor mounts for that claim.

It follows the external-provisioner contract: the real PV controller marks the claim for the
StorageClass's provisioner, this creates a PV pre-bound to the claim, the PV controller binds
them; when a ``Delete``-policy claim is deleted, the PV controller releases the PV and this
deletes it. It runs inside the executor process (same poll loop).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["PROVISIONER", "STORAGE_CLASS", "Provisioner", "storage_class"]

STORAGE_CLASS = "kiln-local"
PROVISIONER = "test.kiln.dev/local-dir"
_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"

log = logging.getLogger("kiln-test-provisioner")


def storage_class() -> dict[str, Any]:
    """The cluster's default StorageClass, served by this provisioner."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


class Provisioner:
    """Creates and deletes PVs for claims of :data:`STORAGE_CLASS`."""

    def __init__(self, core: Any, run_dir: Path) -> None:
        self.core = core
        self.run_dir = run_dir

    def poll(self) -> None:
        """One pass over pending claims and released volumes."""
        for claim in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if self._wants_volume(claim):
                self._provision(claim)
        for pv in self.core.list_persistent_volume().items:
            annotations = pv.metadata.annotations or {}
            if annotations.get(_PROVISIONED_BY) == PROVISIONER and pv.status.phase == "Released":
                log.info("deleting released volume %s", pv.metadata.name)
                self.core.delete_persistent_volume(pv.metadata.name)

    def _wants_volume(self, claim: Any) -> bool:
        return bool(
            claim.spec.storage_class_name == STORAGE_CLASS
            and not claim.spec.volume_name
            and claim.status.phase == "Pending"
            and claim.metadata.deletion_timestamp is None
        )

    def _provision(self, claim: Any) -> None:
        m = claim.metadata
        path = self.run_dir / "pvc" / m.namespace / m.name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        pv: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{m.uid}", "annotations": {_PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]},
                "accessModes": claim.spec.access_modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": str(path)},
                "claimRef": {"namespace": m.namespace, "name": m.name, "uid": m.uid},
            },
        }
        try:
            self.core.create_persistent_volume(pv)
            log.info(
                "provisioned %s for %s/%s at %s", pv["metadata"]["name"], m.namespace, m.name, path
            )
        except Exception as exc:  # already exists from an earlier pass: the binder will catch up
            if getattr(exc, "status", None) != 409:
                raise
