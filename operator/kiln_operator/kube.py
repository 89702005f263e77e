"""The one layer that talks to the Kubernetes API: observe children, apply a Decision.

Creation is idempotent by name (409 means it already exists); Deployments, Services and PDBs
go through server-side apply, so re-applying the same desired object is a no-op and a changed
spec patches exactly the fields Kiln owns. Jobs are never patched: Kueue owns `suspend`.

Requests go out as plain JSON through the client's connection pool and come back as dicts: the
decision reads dicts, and the client's typed models and dynamic wrappers cost more CPU than the
rest of a reconcile (decoding every object into models, then back into dicts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kiln_operator.api import GROUP, PLURAL, VERSION
from kiln_operator.builders.common import input_uris, split_store
from kiln_operator.builders.serving_check import (
    CHECK_COMPONENT,
    check_job_name,
    needs_serving_check,
)
from kiln_operator.conditions import now_rfc3339
from kiln_operator.config import OperatorConfig
from kiln_operator.jobstate import parse_progress
from kiln_operator.naming import (
    COMPONENT_LABEL,
    HASH_LABEL,
    OWNER_LABEL,
    deployment_name,
    job_name,
    serving_selector,
    short_hash,
)
from kiln_operator.reconcile import Decision, Event, Observed, Prepared, recorded_plan_hash
from kiln_operator.store import find_published

__all__ = ["ChildRejected", "KubeApi", "load_kube_config", "merge_patched", "namespace_terminating"]

Obj = dict[str, Any]
FIELD_MANAGER = "kiln-operator"
_LOG_TAIL_LINES = 40
# kind: (the API's path prefix, the resource's plural)
_PATHS = {
    "Job": ("/apis/batch/v1", "jobs"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "ModelOptimization": (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


def _path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    prefix, plural = _PATHS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


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
        self.authorization = client.AuthorizationV1Api(api_client)
        self.log = logger or logging.getLogger("kiln.operator")

    # --- requests -----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One API request, its JSON answer as a dict.

        Raises:
            ApiException: the API server answered with an error status.
        """
        _, url, headers, payload, _ = self.api_client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=self.timeout
        )
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=response, body=data.decode("utf-8", "replace"), data=None
            )
        return cast(Obj, json.loads(data)) if data else {}

    def _get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.request("GET", _path(kind, namespace, name))
        except ApiException as error:
            if _missing(error):
                return None
            raise

    def _list(self, kind: str, namespace: str | None, **query: str) -> list[Obj]:
        return list(self.request("GET", _path(kind, namespace), query=query).get("items") or [])

    # --- the resource -----------------------------------------------------------------------

    def get_resource(self, namespace: str, name: str) -> Obj | None:
        """The ModelOptimization, fresh from the API server."""
        return self._get("ModelOptimization", namespace, name)

    def list_resources(self) -> list[Obj]:
        """Every ModelOptimization the operator watches (a namespaced operator lists only its
        namespaces: it may read nothing else)."""
        if not self.namespaces:
            return self._list("ModelOptimization", None)
        return [
            item
            for namespace in self.namespaces
            for item in self._list("ModelOptimization", namespace)
        ]

    # --- observing ----------------------------------------------------------------------------

    def observe(self, prepared: Prepared, cfg: OperatorConfig, *, resync: bool = False) -> Observed:
        """Everything `decide` needs about the resource's current plan (`resync`: a periodic
        look, which also checks what an event-driven one takes on trust)."""
        namespace = prepared.resource.metadata.namespace or "default"
        name = prepared.resource.metadata.name
        plan_hash = prepared.plan_hash
        observed = Observed(resync=resync)
        observed.published = find_published(
            prepared.plan.output.store, plan_hash, cfg.store_mounts, namespace,
            prepared.plan.scope,
        )  # fmt: skip
        # A resource Kiln never wrote a status for has made no children yet: its first
        # reconcile reads none (a child left by a failed first try answers its create with 409).
        recorded = recorded_plan_hash(prepared.body)
        if recorded:
            self._observe_children(
                observed, prepared, namespace, name, recorded != plan_hash or resync
            )
        if observed.published is None and observed.job is None:
            observed.missing_claims = self._missing_claims(namespace, prepared)
            if cfg.max_running_jobs:
                observed.running_jobs = self._running_jobs()
        return observed

    def _observe_children(
        self,
        observed: Observed,
        prepared: Prepared,
        namespace: str,
        name: str,
        look_for_stale: bool,
    ) -> None:
        plan_hash = prepared.plan_hash
        observed.job = self._get("Job", namespace, job_name(name, plan_hash))
        if observed.job is not None:
            observed.job_pods = self._job_pods(namespace, observed.job)
            observed.progress = self._progress(namespace, observed.job_pods)
            if not observed.job_pods:
                observed.job_create_failure = self._create_failure(namespace, observed.job)
        observed.deployment = self._get("Deployment", namespace, deployment_name(name, plan_hash))
        if observed.deployment is not None:
            observed.serving_pods = self._pods(namespace, serving_selector(name, plan_hash))
        promoted = (prepared.body.get("status") or {}).get("servingPlanHash")
        if promoted != plan_hash and needs_serving_check(prepared.plan):
            wanted = check_job_name(name, prepared.plan)
            check = self._get("Job", namespace, wanted)
            observed.check_job = check
            if check is not None:
                observed.check_job_pods = self._job_pods(namespace, check)
            else:
                # Evaluations of this plan under other thresholds: the new one replaces them.
                checks = (
                    f"{OWNER_LABEL}={name},{COMPONENT_LABEL}={CHECK_COMPONENT},"
                    f"{HASH_LABEL}={short_hash(plan_hash)}"
                )
                observed.other_checks = [
                    job for job in self._names("Job", namespace, checks) if job != wanted
                ]
        # Only a rolled-out revision is promoted (and replaces the others).
        if look_for_stale or (promoted != plan_hash and observed.deployment is not None):
            other = (
                f"{OWNER_LABEL}={name},{COMPONENT_LABEL}=serving,"
                f"{HASH_LABEL}!={short_hash(plan_hash)}"
            )
            observed.other_revisions = self._names("Deployment", namespace, other)
        # The reconcile that records a new plan in status deletes the old plan's children
        # before it writes status: once status names this plan, none are left but after a
        # failure, which the periodic look catches.
        if look_for_stale:
            stale = f"{OWNER_LABEL}={name},{HASH_LABEL}!={short_hash(plan_hash)}"
            observed.stale_jobs = self._names("Job", namespace, stale)
            observed.stale_configmaps = self._names("ConfigMap", namespace, stale)

    def _names(self, kind: str, namespace: str, selector: str) -> list[str]:
        return [
            item["metadata"]["name"] for item in self._list(kind, namespace, labelSelector=selector)
        ]

    def _create_failure(self, namespace: str, job: Obj) -> str | None:
        """The message of the Job controller's latest FailedCreate Event for `job`."""
        uid = job["metadata"]["uid"]
        selector = f"involvedObject.uid={uid},reason=FailedCreate"
        events = self._list("Event", namespace, fieldSelector=selector)
        if not events:
            return None

        def when(event: Obj) -> str:
            # RFC 3339 stamps of one format: they sort as strings.
            return str(
                event.get("lastTimestamp")
                or event.get("eventTime")
                or event["metadata"].get("creationTimestamp")
                or ""
            )

        return str(max(events, key=when).get("message") or "").strip() or None

    def _job_pods(self, namespace: str, job: Obj) -> list[Obj]:
        return self._pods(namespace, {"controller-uid": job["metadata"]["uid"]})

    def _pods(self, namespace: str, labels: dict[str, str]) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return self._list("Pod", namespace, labelSelector=selector)

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
            if self._get("PersistentVolumeClaim", namespace, claim) is None:
                missing.append(claim)
        return missing

    def _running_jobs(self) -> int:
        selector = f"app.kubernetes.io/managed-by=kiln,{COMPONENT_LABEL}=optimize"
        namespaces: list[str | None] = list(self.namespaces) or [None]
        jobs = [
            job
            for namespace in namespaces
            for job in self._list("Job", namespace, labelSelector=selector)
        ]
        return sum(1 for job in jobs if ((job.get("status") or {}).get("active") or 0) > 0)

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
        try:
            self.request("POST", _path(kind, namespace), body=obj)
            self.log.info("created %s %s", kind, obj["metadata"]["name"])
        except ApiException as error:
            if error.status != 409:
                raise

    def _apply(self, obj: Obj, namespace: str) -> None:
        self.request(
            "PATCH",
            _path(obj["kind"], namespace, obj["metadata"]["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )

    def _delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.request(
                "DELETE", _path(kind, namespace, name), body={"propagationPolicy": "Background"}
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
        meta = body["metadata"]
        self.request(
            "PATCH",
            _path("ModelOptimization", meta["namespace"], meta["name"]) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
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
            self.request("POST", _path("Event", meta["namespace"]), body=manifest)
        except ApiException as error:
            # A namespace being deleted refuses new Events (403); nobody will read them there.
            level = logging.DEBUG if error.status == 403 else logging.WARNING
            self.log.log(level, "could not post event %s: %s", event.reason, error.reason)
