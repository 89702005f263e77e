"""`kiln operator`: configure kopf and run the handlers until stopped."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kopf

from kiln_operator.api import GROUP
from kiln_operator.config import OperatorConfig, load_config
from kiln_operator.controller import Reconciler
from kiln_operator.handlers import register
from kiln_operator.kube import KubeApi, load_kube_config
from kiln_operator.metrics import serve_metrics
from kiln_operator.naming import MANAGED_BY_LABEL

__all__ = ["peering_problem", "run_operator"]

log = logging.getLogger("kiln.operator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln operator", description=__doc__)
    parser.add_argument("--config", type=Path, help="operator config YAML (Helm mounts one)")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: all)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: for a single replica or local development",
    )
    parser.add_argument("--peering", default="kiln", help="kopf peering object name")
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default: random, so replicas never tie)",
    )
    parser.add_argument(
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    parser.add_argument("--json-logs", action="store_true", help="log JSON lines")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def json_log_formatter() -> logging.Formatter:
    """One JSON object per line; a kopf record's object reference becomes ``object``."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    class _Formatter(JsonFormatter):
        def add_fields(
            self, log_record: dict[str, Any], record: logging.LogRecord, message: dict[str, Any]
        ) -> None:
            super().add_fields(log_record, record, message)
            ref = getattr(record, "k8s_ref", None)
            if ref:
                log_record["object"] = ref

    # kopf's extras include its settings (which hold queues); they are never serialised, and
    # any other unknown extra is written as its str() rather than breaking the line.
    return _Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        reserved_attrs=[*RESERVED_ATTRS, "k8s_skip", "k8s_ref", "settings"],
        json_default=str,
    )


def _logging(json_logs: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler()
    if json_logs:
        handler.setFormatter(json_log_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # kopf logs every handler call at INFO; keep the operator's own story readable.
    logging.getLogger("kopf").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


def configure_kopf(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """kopf's bookkeeping lives in annotations, never in `status` (status is Kiln's)."""
    prefix = GROUP
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{prefix}/cleanup"
    # Kiln posts its own, readable Events; kopf's per-handler events would drown them.
    settings.posting.enabled = False
    # Recover from silently dropped watch streams: reconnect at least every 5 minutes.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.execution.max_workers = 8
    # Watch only Kiln's own children: the API server filters, so an operator in a big cluster
    # neither receives nor holds every Pod, Job and Deployment there is.
    managed = f"{MANAGED_BY_LABEL}=kiln"
    for child in ("v1/pods", "batch/v1/jobs", "apps/v1/deployments"):
        group_version, plural = child.rsplit("/", 1)
        group = group_version.rsplit("/", 1)[0] if "/" in group_version else ""
        settings.watching.label_selectors[group, plural] = managed
    # A timer caught mid-call (it runs in a thread) finishes within a second; look again soon
    # rather than kopf's default minute, or deleting a resource waits that long.
    settings.background.instant_exit_timeout = 0.5
    settings.background.cancellation_polling = 1
    if config.webhook:
        from kiln_operator.webhook import configure_webhook

        configure_webhook(settings, config)


def peering_problem(api_client: Any, name: str, namespaces: Sequence[str]) -> str | None:
    """Why kopf peering named `name` cannot work here, or None. Without its CRD or its object,
    kopf would wait forever without a word."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups or []}
    install = (
        "install the chart's CRDs (charts/kiln/crds/kopf-peering.yaml) and its peering object, "
        "or run a single replica with --standalone"
    )
    if "kopf.dev" not in groups:
        return f"the kopf peering CRDs (kopf.dev) are not installed: {install}"
    custom = client.CustomObjectsApi(api_client)
    try:
        if namespaces:
            for namespace in namespaces:
                custom.get_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", name
                )
        else:
            custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
    except ApiException as error:
        if error.status == 404:
            return f"the kopf peering object {name!r} does not exist: {install}"
        raise
    return None


def _with_kept_certificate(config: OperatorConfig, api_client: Any) -> OperatorConfig:
    """Provision the webhook's certificate (`webhook_certs`) and serve with it."""
    from kiln_operator.webhook_certs import ensure_webhook_certs, watch_for_rotation

    namespace = config.operator_namespace or os.environ.get("POD_NAMESPACE")
    secret, service = config.webhook_cert_secret, config.webhook_service
    configuration = config.webhook_configuration
    if not (namespace and secret and service and configuration):
        raise SystemExit(
            "kiln operator: webhook_cert_secret needs webhook_service, webhook_configuration "
            "and the operator's namespace (operator_namespace or POD_NAMESPACE)"
        )

    def ensure() -> Any:
        return ensure_webhook_certs(api_client, namespace, secret, service, configuration)

    material = ensure()
    cert_dir = material.write(Path(tempfile.mkdtemp(prefix="kiln-webhook-tls-")))
    watch_for_rotation(ensure, material)
    return config.model_copy(update={"webhook_cert_dir": str(cert_dir)})


def run_operator(argv: Sequence[str]) -> int:
    """Run until SIGINT/SIGTERM."""
    args = _parser().parse_args(list(argv))
    _logging(args.json_logs, args.verbose)
    config = load_config(args.config)
    namespaces = args.namespace or config.namespaces
    if not args.standalone:
        problem = peering_problem(load_kube_config(), args.peering, namespaces)
        if problem:
            log.error("kiln operator: %s", problem)
            return 2
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    api = KubeApi(
        load_kube_config(), log, timeout=config.api_timeout_seconds, namespaces=namespaces
    )
    reconciler = Reconciler(api, config)
    registry = kopf.OperatorRegistry()
    if config.webhook and config.webhook_cert_secret:
        config = _with_kept_certificate(config, api.api_client)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials the kubernetes client uses: in-cluster or KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, config)
        serve_metrics(config.metrics_port)
        log.info(
            "Kiln operator watching %s (job image %s, peering %s)",
            ", ".join(namespaces) or "all namespaces",
            config.job_image,
            "off" if args.standalone else f"{args.peering} priority {priority}",
        )

    register(reconciler, registry, log)
    if config.webhook:
        from kiln_operator.webhook import register_webhook

        register_webhook(registry, config, api)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=args.standalone,
            # Naming a peering makes kopf require it; standalone runs need none.
            peering_name=None if args.standalone else args.peering,
            priority=priority,
            liveness_endpoint=args.liveness,
        )
    )
    return 0
