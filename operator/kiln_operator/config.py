"""Operator configuration: what the platform team sets once (Helm values → a YAML file → here).

Every setting can also come from an environment variable `KILN_<NAME>` (upper case), which wins
over the file, so tests and `kiln operator` on a laptop need no file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["OperatorConfig", "load_config"]


class OperatorConfig(BaseModel):
    """Settings of one Kiln installation."""

    model_config = ConfigDict(extra="forbid")

    job_image: str = "ghcr.io/kiln-dev/kiln-job:0.1.0"
    """Image of the optimization Job (TensorRT-LLM release image + Model Optimizer + kiln_jobs).
    Part of every plan hash: a new image means new artifacts."""
    triton_image: str = "ghcr.io/kiln-dev/kiln-job:0.1.0"
    """Default Triton image for serving (the job image ships tritonserver and the backends)."""
    job_command: list[str] = Field(default_factory=lambda: ["python", "-m", "kiln_jobs"])
    """Entry point of the job image; the runner's arguments follow it."""
    tritonserver: str = "tritonserver"
    """The tritonserver binary in the Triton image."""
    default_store: str | None = None
    """Artifact store for resources that name none (pvc://claim/prefix or s3://bucket/prefix)."""
    sharing_domain: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Let every namespace of this installation reuse each other's published plans (a name for
    that domain). Unset (the default), a plan is reused only within its own namespace: one
    tenant never serves another's artifacts, even with the same recipe and store."""
    store_mounts: dict[str, str] = Field(default_factory=dict)
    """Store URI prefixes the operator can read directly, mapped to local paths (e.g. the
    artifacts volume mounted into the operator pod): {"s3://bucket/kiln": "/mnt/kiln"}. A path
    may contain {namespace}, since a pvc:// store is a different claim in each namespace. With
    it, a published plan is served without running a Job at all."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty watches all."""
    job_node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels every optimization Job must match (e.g. a dedicated GPU pool); they win over
    the resource's own spec.scheduling.nodeSelector, which may add others."""
    job_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations added to every optimization Job (e.g. for that pool's taint)."""
    serving_node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels every Triton pod must match (e.g. a dedicated serving pool)."""
    serving_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations added to every Triton pod (e.g. for that pool's taint)."""
    allowed_images: list[str] = Field(default_factory=list)
    """Images (fnmatch patterns) a resource may ask Triton to run as spec.serving.image;
    empty: only triton_image."""
    allowed_service_types: list[str] = Field(default_factory=lambda: ["ClusterIP"])
    """Service types a resource may ask for (LoadBalancer exposes the model outside)."""
    allowed_priority_classes: list[str] = Field(default_factory=list)
    """PriorityClasses a resource may give its Job (they can preempt other tenants)."""
    allowed_toleration_keys: list[str] = Field(default_factory=lambda: ["nvidia.com/gpu"])
    """Taint keys a resource may tolerate (others keep pods off reserved nodes)."""
    default_queue: str | None = None
    """Kueue LocalQueue for Jobs whose resource names none."""
    allowed_queues: list[str] | None = None
    """LocalQueues a resource's Job may use; set it to make every Job go through Kueue."""
    job_service_account: str | None = None
    """ServiceAccount of optimization Jobs (its token is never mounted)."""
    engine_fallback: bool = False
    """Serve with Triton's Python backend when the job image has no TensorRT-LLM. For
    development clusters without GPUs only."""
    smoke_endpoint: str | None = None
    """Send smoke tests here instead of the Service (tests, or an ingress in front of it)."""
    smoke_timeout_seconds: float = 120.0
    """How long one smoke inference may take."""
    api_timeout_seconds: float = 30.0
    """Longest one Kubernetes API call may take before the reconcile gives up and retries."""
    poll_seconds: float = 10.0
    """How often running work is re-examined (progress, scheduling, rollouts)."""
    max_running_jobs: int = Field(default=0, ge=0)
    """Optimization Jobs allowed to run at once across the installation; 0 is unlimited."""
    metrics_port: int = 8080
    """Port of the operator's Prometheus metrics; 0 disables them."""
    webhook: bool = False
    """Serve the validating admission webhook."""
    webhook_port: int = 9443
    """Port of the admission webhook server."""
    webhook_cert_dir: str | None = None
    """Directory with tls.crt and tls.key for the webhook (a Secret you manage, e.g. from
    cert-manager); unset uses `webhook_cert_secret`, or else a self-signed pair."""
    webhook_cert_secret: str | None = None
    """Secret in the operator's namespace where the operator keeps the webhook's CA and serving
    certificate itself (creates, renews, writes the CA into `webhook_configuration`)."""
    webhook_service: str | None = None
    """The Service in front of the webhook: the name the serving certificate is for."""
    webhook_configuration: str | None = None
    """The ValidatingWebhookConfiguration whose caBundle the operator keeps."""
    operator_namespace: str | None = None
    """The operator's own namespace (default: the POD_NAMESPACE environment variable)."""
    webhook_url: str | None = None
    """URL the API server calls for admission when it must reach the webhook by URL rather
    than through a Service (clusters without kube-proxy, tests)."""
    uid: int = 1000
    """UID of Job and Triton containers (they never run as root)."""


_LIST_FIELDS = {
    "namespaces",
    "job_command",
    "allowed_images",
    "allowed_service_types",
    "allowed_priority_classes",
    "allowed_toleration_keys",
    "allowed_queues",
}


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in OperatorConfig.model_fields.items():
        raw = environ.get(f"KILN_{name.upper()}")
        if raw is None:
            continue
        if name in _LIST_FIELDS:
            values[name] = [item for item in raw.replace(",", " ").split() if item]
        elif name in (
            "job_node_selector",
            "job_tolerations",
            "serving_node_selector",
            "serving_tolerations",
        ):
            values[name] = json.loads(raw)
        elif name == "store_mounts":
            pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
            values[name] = {uri.strip(): path.strip() for uri, path in pairs}
        elif field.annotation is bool:
            values[name] = raw.lower() in ("1", "true", "yes", "on")
        else:
            values[name] = raw
    return values


def load_config(path: Path | None = None, environ: dict[str, str] | None = None) -> OperatorConfig:
    """Read the config file (if any), then apply `KILN_*` environment overrides.

    Raises:
        SystemExit: the file or a value is invalid (one line per problem).
    """
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SystemExit(f"kiln operator: cannot read config {path}: {error}") from None
    values.update(_from_env(environ))
    try:
        return OperatorConfig.model_validate(values)
    except ValidationError as error:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
        raise SystemExit("kiln operator: invalid config: " + "; ".join(lines)) from None
