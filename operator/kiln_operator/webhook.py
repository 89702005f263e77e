"""The validating admission webhook: the checks the CRD schema and CEL cannot express.

Cross-field rules, local paths that mean nothing in a cluster, formats the requested GPU cannot
run and what the platform's policy does not allow (`kiln_operator.policy`) are refused at
`kubectl apply` with the same one-line messages `kiln validate` prints; with the webhook
disabled, the same checks end in a `Stalled` condition instead. Only the webhook sees who asks:
it refuses a resource that names a Secret or PersistentVolumeClaim its author may not read
(SubjectAccessReview as the requesting user), which the operator would otherwise mount for
them. Multi-tenant installations keep it enabled (the chart's default).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from kiln_operator.api import GROUP, PLURAL, VERSION, ModelOptimizationSpec
from kiln_operator.config import OperatorConfig
from kiln_operator.hardware import (
    FAMILY_LABEL,
    PRODUCT_LABEL,
    family_of_product,
    format_support_problem,
    normalize_family,
)
from kiln_operator.kube import KubeApi
from kiln_operator.policy import referenced_objects
from kiln_operator.reconcile import Prepared, prepare
from kiln_operator.validation import parse_resource

__all__ = ["access_problems", "configure_webhook", "needs_review", "register_webhook"]

log = logging.getLogger("kiln.webhook")
WEBHOOK_ID = "validate.modeloptimizations.kiln.dev"


def _node_family(api: KubeApi, product: str) -> str | None:
    """The GPU family GPU feature discovery reports for nodes of `product`, if any."""
    try:
        nodes = api.core.list_node(label_selector=f"{PRODUCT_LABEL}={product}")
    except ApiException as error:
        log.warning("cannot list nodes to check the GPU family: %s", error.reason)
        return None
    for node in nodes.items:
        family = ((node.metadata and node.metadata.labels) or {}).get(FAMILY_LABEL)
        if family:
            return normalize_family(family)
    return None


def _largest_node_gpus(api: KubeApi, product: str | None) -> int | None:
    """Most allocatable GPUs on one node (of `product`, when set); None if none is known."""
    selector = f"{PRODUCT_LABEL}={product}" if product else PRODUCT_LABEL
    try:
        nodes = api.core.list_node(label_selector=selector)
    except ApiException as error:
        log.warning("cannot list nodes to check GPU counts: %s", error.reason)
        return None
    counts = [
        int((node.status.allocatable or {}).get("nvidia.com/gpu", "0"))
        for node in nodes.items
        if node.status is not None
    ]
    return max(counts) if counts else None


def _multi_node_problem(api: KubeApi, spec: ModelOptimizationSpec) -> str | None:
    """Serving across nodes is not supported: TP x PP must fit one node's GPUs."""
    world = spec.engine.tensor_parallel * spec.engine.pipeline_parallel
    if world == 1 or spec.engine.backend == "none":
        return None
    largest = _largest_node_gpus(api, spec.resources.gpu_product)
    if largest is None or world <= largest:
        return None
    where = spec.resources.gpu_product or "any GPU node"
    return (
        f"spec.engine.tensorParallel: tensorParallel x pipelineParallel = {world} GPUs, but the "
        f"largest node with {where} has {largest}; serving across nodes is not supported yet"
    )


def admission_problems(
    body: dict[str, Any], config: OperatorConfig, api: KubeApi | None
) -> list[str]:
    """Everything wrong with a resource, as `path: message` lines."""
    prepared = prepare(body, config)
    if not isinstance(prepared, Prepared):
        return [str(p) for p in prepared]
    spec = prepared.resource.spec
    if api is not None:
        problem = _multi_node_problem(api, spec)
        if problem:
            return [problem]
    product = spec.resources.gpu_product
    fmt = spec.quant_format()
    if product and fmt and api is not None and family_of_product(product) is None:
        family = _node_family(api, product)
        kv_cache = next((t.ptq.kv_cache for t in spec.techniques if t.ptq), "none")
        problem = format_support_problem(fmt, family, kv_cache=kv_cache, where=product)
        if problem:
            return [f"spec.resources.gpuProduct: {problem}"]
    return []


def configure_webhook(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Serve admission over TLS. In a cluster the Helm chart owns the webhook configuration
    (Service `…-webhook`, path /validate); with `webhook_url`, kopf manages it."""
    cert_dir = Path(config.webhook_cert_dir) if config.webhook_cert_dir else None
    host = None
    if config.webhook_url:
        host = config.webhook_url.split("://", 1)[-1].split(":", 1)[0].split("/", 1)[0]
    settings.admission.server = kopf.WebhookServer(
        addr="0.0.0.0" if not config.webhook_url else host,
        port=config.webhook_port,
        host=host,
        certfile=str(cert_dir / "tls.crt") if cert_dir else None,
        pkeyfile=str(cert_dir / "tls.key") if cert_dir else None,
        cafile=str(cert_dir / "ca.crt") if cert_dir and (cert_dir / "ca.crt").exists() else None,
    )
    if config.webhook_url:
        # No Service in front of the operator (tests, or an API server without kube-proxy):
        # kopf writes the ValidatingWebhookConfiguration itself, pointing at webhook_url.
        settings.admission.managed = WEBHOOK_ID


def register_webhook(registry: kopf.OperatorRegistry, config: OperatorConfig, api: KubeApi) -> None:
    """Register the validating handler. Its checks call the API server (nodes, access
    reviews), so they run on threads of their own: busy reconciles never hold admission up."""
    reviewers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kiln-admission")

    def review(
        body: dict[str, Any], old: dict[str, Any] | None, kwargs: dict[str, Any]
    ) -> list[str]:
        if not needs_review(body, old, kwargs.get("operation", "")):
            return []
        problems = admission_problems(body, config, api)
        return problems or access_problems(body, kwargs.get("userinfo") or {}, api)

    @kopf.on.validate(
        GROUP, VERSION, PLURAL, id="spec", registry=registry, operations=["CREATE", "UPDATE"]
    )
    async def validate(body: kopf.Body, **kwargs: Any) -> None:
        old = kwargs.get("old")
        problems = await asyncio.get_running_loop().run_in_executor(
            reviewers, review, dict(body), dict(old) if old else None, kwargs
        )
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)


def access_problems(body: dict[str, Any], userinfo: dict[str, Any], api: KubeApi) -> list[str]:
    """The Secrets and PersistentVolumeClaims the resource would have Kiln mount that the
    requesting user may not read themselves (a SubjectAccessReview as that user, each)."""
    resource, _ = parse_resource(body)
    if resource is None:
        return []
    user = userinfo.get("username") or "the requesting user"
    namespace = resource.metadata.namespace or body["metadata"].get("namespace")
    problems = []
    for reference in referenced_objects(resource):
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": userinfo.get("username"),
                "uid": userinfo.get("uid"),
                "groups": userinfo.get("groups"),
                "extra": userinfo.get("extra"),
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "get",
                    "resource": reference.resource,
                    "name": reference.name,
                },
            },
        }
        answer = api.authorization.create_subject_access_review(cast(Any, review))
        if not (answer.status and answer.status.allowed):
            kind = "Secret" if reference.resource == "secrets" else "PersistentVolumeClaim"
            problems.append(
                f"{reference.path}: {user} may not read {kind} {reference.name} in {namespace}, "
                "and Kiln would use it on their behalf; name one you may read, or ask for access"
            )
    return problems


def needs_review(body: dict[str, Any], old: dict[str, Any] | None, operation: str) -> bool:
    """Whether an admission request changes what Kiln would check.

    Updates that leave the spec alone (finalizers, labels, annotations) and updates to an
    object being deleted are admitted as they are: the checks read state that changes (the
    cluster's nodes, the default store), and refusing the finalizer's removal would leave a
    delete hanging, and its namespace Terminating, forever."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return False
    return not (operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec"))
