"""The one layer that talks to the Kubernetes API: observe children, apply a Decision.

Creation is idempotent by name (409 means it already exists); Deployments, Services and PDBs
go through server-side apply, so re-applying the same desired object is a no-op and a changed
spec patches exactly the fields Kiln owns. Jobs are never patched: Kueue owns `suspend`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from kiln_operator.api import GROUP, PLURAL, VERSION
from kiln_operator.builders.common import input_uris, split_store
from kiln_operator.conditions import now_rfc3339
from kiln_operator.config import OperatorConfig
from kiln_operator.jobstate import parse_progress
from kiln_operator.naming import (
    COMPONENT_LABEL,
    HASH_LABEL,
    OWNER_LABEL,
    deployment_name,
    job_name,
    selector_labels,
    short_hash,
)
from kiln_operator.reconcile import Decision, Event, Observed, Prepared
from kiln_operator.store import find_published

__all__ = ["ChildRejected", "KubeApi", "load_kube_config", "merge_patched", "namespace_terminating"]

Obj = dict[str, Any]
FIELD_MANAGER = "kiln-operator"
_LOG_TAIL_LINES = 40
_KINDS = {
    "Job": ("batch/v1", "Job"),
    "ConfigMap": ("v1", "ConfigMap"),
    "Secret": ("v1", "Secret"),
    "Deployment": ("apps/v1", "Deployment"),
    "Service": ("v1", "Service"),
    "PodDisruptionBudget": ("policy/v1", "PodDisruptionBudget"),
}


def load_kube_config() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else KUBECONFIG."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _missing(error: ApiException) -> bool:
    return error.status == 404


def namespace_terminating(error: ApiException) -> bool:
    """The write was refused because its namespace is being deleted (the resource goes too)."""
    if error.status != 403 or not error.body:
        return False
    try:
        causes = (json.loads(error.body).get("details") or {}).get("causes") or []
    except (ValueError, AttributeError):
        return False
    return any(cause.get("reason") == "NamespaceTerminating" for cause in causes)


def merge_patched(target: Any, patch: Any) -> Any:
    """`target` with a JSON merge patch (RFC 7386) applied: nulls delete, objects merge,
    everything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patched(result.get(key), value)
    return result


class ChildRejected(Exception):
    """The API server refused to create or change a child: retrying the same request cannot
    succeed, the user must change the spec."""

    def __init__(self, kind: str, name: str, error: ApiException) -> None:
        detail = error.reason or ""
        with contextlib.suppress(ValueError):
            detail = json.loads(error.body or "{}").get("message") or detail
        super().__init__(f"the API server refused {kind} {name}: {detail}")
        self.message = str(self)


def _rejection(error: ApiException) -> bool:
    """A 4xx a retry cannot fix (not a conflict, throttling or a namespace going away)."""
    return error.status in (400, 403, 422) and not namespace_terminating(error)


class KubeApi:
    """Reads and writes for one operator process."""

    def __init__(
        self,
        api_client: client.ApiClient,
        logger: logging.Logger | None = None,
        timeout: float = 30.0,
        namespaces: list[str] | None = None,
    ) -> None:
        self.api_client = api_client
        # The namespaces the operator watches; empty: all (it may then list cluster-wide).
        self.namespaces = list(namespaces or [])
        # Every call is bounded: a hung connection must not stall a reconcile forever.
        self.timeout = timeout
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.authorization = client.AuthorizationV1Api(api_client)
        self.dynamic = DynamicClient(api_client)
        self.log = logger or logging.getLogger("kiln.operator")

    # --- the resource -----------------------------------------------------------------------

    def get_resource(self, namespace: str, name: str) -> Obj | None:
        """The ModelOptimization, fresh from the API server."""
        try:
            found = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self.timeout
            )
            return cast(Obj, found)
        except ApiException as error:
            if _missing(error):
                return None
            raise

    def list_resources(self) -> list[Obj]:
        """Every ModelOptimization the operator watches (a namespaced operator lists only its
        namespaces: it may read nothing else)."""
        if not self.namespaces:
            listing = self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=self.timeout
            )
            return list(cast(Obj, listing).get("items", []))
        items: list[Obj] = []
        for namespace in self.namespaces:
            listing = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _request_timeout=self.timeout
            )
            items += cast(Obj, listing).get("items", [])
        return items

    # --- observing ----------------------------------------------------------------------------

    def observe(self, prepared: Prepared, cfg: OperatorConfig) -> Observed:
        """Everything `decide` needs about the resource's current plan."""
        namespace = prepared.resource.metadata.namespace or "default"
        name = prepared.resource.metadata.name
        plan_hash = prepared.plan_hash
        observed = Observed()
        observed.published = find_published(
            prepared.plan.output.store, plan_hash, cfg.store_mounts, namespace,
            prepared.plan.scope,
        )  # fmt: skip
        # A resource Kiln never wrote a status for has made no children yet: its first
        # reconcile reads none (a child left by a failed first try answers its create with 409).
        if (prepared.body.get("status") or {}).get("planHash"):
            self._observe_children(observed, prepared, namespace, name)
        if observed.published is None and observed.job is None:
            observed.missing_claims = self._missing_claims(namespace, prepared)
            if cfg.max_running_jobs:
                observed.running_jobs = self._running_jobs()
        return observed

    def _observe_children(
        self, observed: Observed, prepared: Prepared, namespace: str, name: str
    ) -> None:
        plan_hash = prepared.plan_hash
        observed.job = self._get("Job", namespace, job_name(name, plan_hash))
        if observed.job is not None:
            observed.job_pods = self._job_pods(namespace, observed.job)
            observed.progress = self._progress(namespace, observed.job_pods)
            if not observed.job_pods:
                observed.job_create_failure = self._create_failure(namespace, observed.job)
        observed.deployment = self._get("Deployment", namespace, deployment_name(name))
        if observed.deployment is not None:
            observed.serving_pods = self._pods(namespace, selector_labels(name, "serving"))
        stale = f"{OWNER_LABEL}={name},{HASH_LABEL}!={short_hash(plan_hash)}"
        observed.stale_jobs = self._names("Job", namespace, stale)
        observed.stale_configmaps = self._names("ConfigMap", namespace, stale)

    def _get(self, kind: str, namespace: str, name: str) -> Obj | None:
        api_version, real_kind = _KINDS[kind]
        resource = self.dynamic.resources.get(api_version=api_version, kind=real_kind)
        try:
            found = resource.get(name=name, namespace=namespace, _request_timeout=self.timeout)
            return cast(Obj, found.to_dict())
        except ApiException as error:
            if _missing(error):
                return None
            raise

    def _names(self, kind: str, namespace: str, selector: str) -> list[str]:
        api_version, real_kind = _KINDS[kind]
        resource = self.dynamic.resources.get(api_version=api_version, kind=real_kind)
        listing = resource.get(
            namespace=namespace, label_selector=selector, _request_timeout=self.timeout
        )
        return [item["metadata"]["name"] for item in listing.to_dict().get("items", [])]

    def _create_failure(self, namespace: str, job: Obj) -> str | None:
        """The message of the Job controller's latest FailedCreate Event for `job`."""
        uid = job["metadata"]["uid"]
        events = self.core.list_namespaced_event(
            namespace,
            field_selector=f"involvedObject.uid={uid},reason=FailedCreate",
            _request_timeout=self.timeout,
        ).items
        if not events:
            return None

        def when(event: Any) -> str:
            stamp = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
            return stamp.isoformat() if stamp else ""

        return str(max(events, key=when).message or "").strip() or None

    def _job_pods(self, namespace: str, job: Obj) -> list[Obj]:
        return self._pods(namespace, {"controller-uid": job["metadata"]["uid"]})

    def _pods(self, namespace: str, labels: dict[str, str]) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=self.timeout
        )
        return [self.api_client.sanitize_for_serialization(p) for p in pods.items]

    def _progress(self, namespace: str, pods: list[Obj]):  # type: ignore[no-untyped-def]
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
        if not running:
            return None
        pod = max(running, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        try:
            tail = self.core.read_namespaced_pod_log(
                pod["metadata"]["name"],
                namespace,
                tail_lines=_LOG_TAIL_LINES,
                _request_timeout=self.timeout,
            )
        except ApiException as error:
            self.log.debug("no log for %s: %s", pod["metadata"]["name"], error.reason)
            return None
        return parse_progress(tail or "")

    def _missing_claims(self, namespace: str, prepared: Prepared) -> list[str]:
        uris = [*input_uris(prepared.plan), prepared.plan.output.store]
        claims = sorted({split_store(u).root for u in uris if u.startswith("pvc://")})
        missing = []
        for claim in claims:
            try:
                self.core.read_namespaced_persistent_volume_claim(
                    claim, namespace, _request_timeout=self.timeout
                )
            except ApiException as error:
                if not _missing(error):
                    raise
                missing.append(claim)
        return missing

    def _running_jobs(self) -> int:
        selector = f"app.kubernetes.io/managed-by=kiln,{COMPONENT_LABEL}=optimize"
        if self.namespaces:
            jobs = [
                job
                for namespace in self.namespaces
                for job in self.batch.list_namespaced_job(
                    namespace, label_selector=selector, _request_timeout=self.timeout
                ).items
            ]
        else:
            jobs = self.batch.list_job_for_all_namespaces(
                label_selector=selector, _request_timeout=self.timeout
            ).items
        return sum(1 for job in jobs if job.status and (job.status.active or 0) > 0)

    # --- acting -------------------------------------------------------------------------------

    def execute(self, decision: Decision, body: Obj) -> None:
        """Apply a Decision: children first, then status, then events."""
        namespace = body["metadata"]["namespace"]
        writes: list[tuple[Obj, Any]] = [
            # Generated here, once: the key is random and never read back by the operator.
            ({**obj, "stringData": {"admin-key": secrets.token_urlsafe(32)}}, self._create)
            for obj in decision.secrets
        ]
        writes += [(obj, self._create) for obj in decision.create]
        writes += [(obj, self._apply) for obj in decision.apply]
        for obj, write in writes:
            try:
                write(obj, namespace)
            except ApiException as error:
                if _rejection(error):
                    raise ChildRejected(obj["kind"], obj["metadata"]["name"], error) from error
                raise
        for kind, name in decision.delete:
            self._delete(kind, namespace, name)
        self.patch_status(body, decision.status)
        for event in decision.events:
            self.post_event(body, event)

    def _create(self, obj: Obj, namespace: str) -> None:
        kind = obj["kind"]
        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=kind)
        try:
            resource.create(body=obj, namespace=namespace, _request_timeout=self.timeout)
            self.log.info("created %s %s", kind, obj["metadata"]["name"])
        except ApiException as error:
            if error.status != 409:
                raise

    def _apply(self, obj: Obj, namespace: str) -> None:
        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.server_side_apply(
            body=obj,
            name=obj["metadata"]["name"],
            namespace=namespace,
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            _request_timeout=self.timeout,
        )

    def _delete(self, kind: str, namespace: str, name: str) -> None:
        api_version, real_kind = _KINDS[kind]
        resource = self.dynamic.resources.get(api_version=api_version, kind=real_kind)
        try:
            resource.delete(
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
                _request_timeout=self.timeout,
            )
            self.log.info("deleted %s %s", kind, name)
        except ApiException as error:
            if not _missing(error):
                raise

    def run_once(self, job: Obj) -> str:
        """Create a Job if absent; its state: Running, Succeeded or Failed."""
        namespace = job["metadata"]["namespace"]
        self._create(job, namespace)
        current = self._get("Job", namespace, job["metadata"]["name"]) or {}
        for condition in (current.get("status") or {}).get("conditions") or []:
            if condition.get("status") == "True" and condition.get("type") == "Complete":
                return "Succeeded"
            if condition.get("status") == "True" and condition.get("type") == "Failed":
                return "Failed"
        return "Running"

    def patch_status(self, body: Obj, status: Obj) -> None:
        """Merge-patch the status subresource when the patch would change it."""
        previous = body.get("status") or {}
        if merge_patched(previous, status) == previous:
            return
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            body["metadata"]["namespace"],
            PLURAL,
            body["metadata"]["name"],
            {"status": status},
            _request_timeout=self.timeout,
        )

    def post_event(self, body: Obj, event: Event) -> None:
        """A core/v1 Event on the resource, as `kubectl describe` shows them."""
        meta = body["metadata"]
        now = now_rfc3339()
        manifest = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(
                meta["namespace"], cast(Any, manifest), _request_timeout=self.timeout
            )
        except ApiException as error:
            # A namespace being deleted refuses new Events (403); nobody will read them there.
            level = logging.DEBUG if error.status == 403 else logging.WARNING
            self.log.log(level, "could not post event %s: %s", event.reason, error.reason)
