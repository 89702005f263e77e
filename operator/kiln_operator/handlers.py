"""kopf wiring: which events run the controller (`kiln_operator.controller`), with what retries.

Every trigger — the resource changing, a timer, an owned Job, pod or Deployment changing — runs
the same `Reconciler.reconcile`; deletions of resources that asked for it run `remove_artifacts`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kiln_operator.api import GROUP, PLURAL, VERSION
from kiln_operator.builders.serving_check import CHECK_COMPONENT
from kiln_operator.child_events import ChildChanges, Debouncer
from kiln_operator.controller import Reconciler, artifacts_given_up, remove_artifacts
from kiln_operator.naming import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL

__all__ = ["register"]

_MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}
# About five minutes of tries (5 s apart) to remove a deleted resource's artifacts.
RETENTION_TRIES = 60


def register(
    reconciler: Reconciler, registry: kopf.OperatorRegistry, logger: logging.Logger
) -> None:
    """Register every handler on `registry`."""
    resource = (GROUP, VERSION, PLURAL)
    poll = reconciler.config.poll_seconds

    def converge(namespace: str, name: str, *, periodic: bool = False, seen: Any = None) -> None:
        try:
            reconciler.reconcile(namespace, name, periodic=periodic, seen=seen)
        except ApiException as error:
            if error.status in (409, 429) or error.status >= 500:
                raise kopf.TemporaryError(
                    f"API server said {error.status}: {error.reason}", delay=2
                ) from error
            raise
        except (HTTPError, OSError) as error:  # timeouts, refused or dropped connections
            raise kopf.TemporaryError(f"API server unreachable: {error}", delay=2) from error

    @kopf.on.resume(*resource, registry=registry, retries=10, backoff=5)
    @kopf.on.create(*resource, registry=registry, retries=10, backoff=5)
    @kopf.on.update(*resource, field="spec", registry=registry, retries=10, backoff=5)
    def on_change(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
        with reconciler.first_look(dict(body)):
            converge(namespace or "default", name)

    # Errors are logged and the next tick retries: a timer never needs kopf's retry loop.
    @kopf.timer(*resource, interval=poll, registry=registry, errors=kopf.ErrorsMode.IGNORED)
    def on_tick(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
        converge(namespace or "default", name, periodic=True, seen=dict(body))

    def retention_is_delete(spec: kopf.Spec, **_: Any) -> bool:
        return bool((spec.get("artifacts") or {}).get("retention") == "delete")

    # Only resources that asked for it get a deletion handler (and kopf's finalizer for it).
    @kopf.on.delete(
        *resource,
        registry=registry,
        when=retention_is_delete,
        retries=RETENTION_TRIES,
        backoff=5,
    )
    def on_delete(*, body: kopf.Body, retry: int, **_: Any) -> None:
        try:
            remove_artifacts(reconciler, dict(body), logger)
        except kopf.PermanentError:
            raise
        except Exception as err:
            if retry + 1 >= RETENTION_TRIES:  # kopf gives up after this one: say so
                artifacts_given_up(reconciler, dict(body), retry + 1, err)
            raise

    optimize = {**_MANAGED, COMPONENT_LABEL: "optimize"}
    changes = ChildChanges()
    serving = {**_MANAGED, COMPONENT_LABEL: "serving"}
    check = {**_MANAGED, COMPONENT_LABEL: CHECK_COMPONENT}

    @kopf.on.event("batch", "v1", "jobs", labels=optimize, registry=registry)
    @kopf.on.event("batch", "v1", "jobs", labels=check, registry=registry)
    @kopf.on.event("v1", "pods", labels=optimize, registry=registry)
    @kopf.on.event("apps", "v1", "deployments", labels=serving, registry=registry)
    def on_child(
        *,
        labels: Mapping[str, str],
        namespace: str | None,
        type: str | None,
        body: kopf.Body,
        resource: kopf.Resource,
        **_: Any,
    ) -> None:
        owner = labels.get(OWNER_LABEL)
        if owner is None or namespace is None or type is None:
            return  # type None: the initial listing; the resume handler covers it
        if changes.changed(type, resource.kind or "", body):
            debouncer.trigger(f"{namespace}/{owner}")

    def reconcile_owner(key: str) -> None:
        namespace, name = key.split("/", 1)
        reconciler.reconcile(namespace, name)

    def child_reconcile_failed(key: str, error: BaseException) -> None:
        # The next event or tick retries; a namespace being deleted refuses writes (403).
        status = getattr(error, "status", None)
        expected = isinstance(error, (ApiException, HTTPError, OSError))
        level = logging.DEBUG if status in (403, 404, 409) else logging.WARNING
        logger.log(
            level,
            "reconcile of %s after a child event failed: %s",
            key,
            getattr(error, "reason", None) or error,
            exc_info=not expected,
        )

    debouncer = Debouncer(
        reconcile_owner, on_error=child_reconcile_failed, hold=reconciler.busy_with_new
    )
