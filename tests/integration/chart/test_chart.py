"""The Helm chart with the real helm, kubectl and API server: lint, render, install, and run the
operator with the chart's own ServiceAccount (not admin)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster.kube import REPO_ROOT, Cluster
from tests.integration.operator.harness import (
    OperatorProcess,
    condition,
    mopt,
    status_of,
    wait_until,
)

pytestmark = pytest.mark.integration

CHART = REPO_ROOT / "charts" / "kiln"
HELM = str(REPO_ROOT / ".venv" / "bin" / "helm")
VARIANTS = {
    "defaults": [],
    "namespaced": [
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "replicaCount=1",
        "--set",
        "config.defaultStore=pvc://kiln-artifacts/models",
        "--set",
        "artifactsVolume.claimName=kiln-artifacts",
        "--set",
        "artifactsVolume.storeUri=pvc://kiln-artifacts",
        "--set",
        "config.sharingDomain=team-ab",
        "--set",
        "policy.allowedQueues={gpu-queue}",
        "--set",
        "placement.jobs.nodeSelector.pool=gpu",
    ],
    "minimal": [
        "--set",
        "webhook.enabled=false",
        "--set",
        "metrics.enabled=false",
        "--set",
        "rbac.aggregateToDefaultRoles=false",
        "--set",
        "replicaCount=1",
    ],
}


def helm(kube: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [HELM, f"--kubeconfig={kube.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint(kube: Cluster, variant: str) -> None:
    helm(kube, "lint", str(CHART), "--strict", *VARIANTS[variant])


def test_values_schema_refuses_nonsense(kube: Cluster) -> None:
    proc = helm(kube, "template", "kiln", str(CHART), "--set", "replicaCount=0", check=False)
    assert proc.returncode != 0 and "replicaCount" in proc.stderr
    proc = helm(kube, "template", "kiln", str(CHART), "--set", "bogus=1", check=False)
    assert proc.returncode != 0 and "bogus" in proc.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_accepted_by_the_api_server(kube: Cluster, variant: str) -> None:
    for ns in ("kiln-system", "team-a", "team-b"):
        kube.kubectl("create", "namespace", ns, check=False)
    rendered = helm(
        kube,
        "template",
        "kiln",
        str(CHART),
        "-n",
        "kiln-system",
        "--include-crds",
        *VARIANTS[variant],
    ).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    assert {o["kind"] for o in objects} >= {"Deployment", "ClusterRole", "ConfigMap"}
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    kube.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(crds))
    for crd in crds:
        kube.wait_for(f"crd/{crd['metadata']['name']}", None, condition="Established")
    proc = kube.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump_all(rest),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    from kiln_operator.config import OperatorConfig

    OperatorConfig.model_validate(yaml.safe_load(config["data"]["config.yaml"]))


def test_rbac_grants_no_secret_reads(kube: Cluster) -> None:
    """Jobs' Secrets are created, never read; the one Secret the operator reads is its own
    webhook certificate, by name, in its own namespace."""
    rendered = helm(kube, "template", "kiln", str(CHART), "-n", "kiln-system").stdout
    reads = []
    for obj in yaml.safe_load_all(rendered):
        if obj and obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj["rules"]:
                if "secrets" in rule["resources"] and set(rule["verbs"]) != {"create"}:
                    reads.append((obj["kind"], obj["metadata"].get("namespace"), rule))
    assert reads == [
        ("Role", "kiln-system",
         {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"],
          "resourceNames": ["kiln-webhook-tls"]}),
    ]  # fmt: skip


def test_every_render_is_the_same_and_holds_no_key_material(kube: Cluster) -> None:
    """What Argo CD and `helm template` see: rendering twice gives the same bytes, and no
    certificate or key is in them (the operator keeps its own)."""
    renders = [helm(kube, "template", "kiln", str(CHART), "-n", "kiln-system").stdout for _ in "ab"]
    assert renders[0] == renders[1]
    assert "BEGIN" not in renders[0] and "LS0tLS1CRUdJTi" not in renders[0]  # PEM, base64 PEM
    kinds = [o["kind"] for o in yaml.safe_load_all(renders[0]) if o]
    assert "Secret" not in kinds


def test_the_operator_keeps_its_webhook_certificate_with_the_charts_rights(
    kube: Cluster, tmp_path: Path
) -> None:
    """The chart's ServiceAccount creates the certificate Secret, writes the CA into the
    webhook configuration, and a second start (another replica, a restart) serves the same."""
    from kubernetes import config as kube_config

    from kiln_operator.webhook_certs import ensure_webhook_certs, reissue_reason

    helm(
        kube, "install", "kiln-tls", str(CHART), "-n", "kiln-tls", "--create-namespace",
        "--set", "replicaCount=1", "--set", "webhook.failurePolicy=Ignore", "--wait=false",
    )  # fmt: skip
    try:
        token = kube.sa_token("kiln-tls", "kiln-tls")
        kubeconfig = kube.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig")
        api_client = kube_config.new_client_from_config(str(kubeconfig))
        first = ensure_webhook_certs(
            api_client, "kiln-tls", "kiln-tls-webhook-tls", "kiln-tls-webhook", "kiln-tls"
        )
        again = ensure_webhook_certs(
            api_client, "kiln-tls", "kiln-tls-webhook-tls", "kiln-tls-webhook", "kiln-tls"
        )
        assert again == first
        names = ["kiln-tls-webhook.kiln-tls.svc", "kiln-tls-webhook"]
        assert reissue_reason(first, names) is None
        vwc = kube.get("validatingwebhookconfiguration", "kiln-tls", None)
        bundles = {w["clientConfig"].get("caBundle") for w in vwc["webhooks"]}
        secret = kube.get("secret", "kiln-tls-webhook-tls", "kiln-tls")
        assert bundles == {secret["data"]["ca.crt"]}
        operator = ["--kubeconfig", str(kubeconfig), "auth", "can-i"]
        kubectl = str(REPO_ROOT / ".venv/bin/kubectl")

        def can(*args: str) -> str:
            proc = subprocess.run([kubectl, *operator, *args], capture_output=True, text=True)
            return proc.stdout.strip()

        assert can("get", "secrets/kiln-tls-webhook-tls", "-n", "kiln-tls") == "yes"
        assert can("get", "secrets/other", "-n", "kiln-tls") == "no"
        assert can("patch", "validatingwebhookconfigurations/other") == "no"
    finally:
        helm(kube, "uninstall", "kiln-tls", "-n", "kiln-tls", check=False)
        kube.kubectl("delete", "secret", "kiln-tls-webhook-tls", "-n", "kiln-tls", check=False)


def test_installed_chart_runs_the_operator_with_its_own_service_account(
    kube: Cluster, make_namespace, tmp_path: Path
) -> None:
    helm(
        kube,
        "install",
        "kiln",
        str(CHART),
        "-n",
        "kiln-system",
        "--create-namespace",
        "--set",
        "webhook.enabled=false",
        "--set",
        "replicaCount=1",
        "--wait=false",
    )
    try:
        ns = make_namespace()
        kube.create_bound_pvc(ns, "artifacts")
        token = kube.sa_token("kiln-system", "kiln")
        kubeconfig = kube.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig")

        def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(REPO_ROOT / ".venv/bin/kubectl"), f"--kubeconfig={kubeconfig}", *args],
                capture_output=True,
                text=True,
            )

        # What the operator must never do.
        forbidden = as_operator("get", "secrets", "-n", ns)
        assert forbidden.returncode != 0 and "Forbidden" in forbidden.stderr
        assert as_operator("auth", "can-i", "get", "secrets", "-n", ns).stdout.strip() == "no"
        assert as_operator("auth", "can-i", "create", "secrets", "-n", ns).stdout.strip() == "yes"
        assert as_operator("auth", "can-i", "delete", "nodes").stdout.strip() == "no"

        operator = OperatorProcess(kube, tmp_path)
        operator.env["KUBECONFIG"] = str(kubeconfig)
        operator.start()
        try:
            kube.apply(mopt("rbac"), namespace=ns)
            obj = wait_until(
                "Ready with the chart's RBAC",
                lambda: (
                    (o := status_of(kube, ns, "rbac"))
                    and condition(o, "Ready").get("status") == "True"
                    and o
                ),
                timeout=120,
                describe=operator.log,
            )
            assert obj["status"]["phase"] == "Ready"
            assert "Forbidden" not in operator.log()
        finally:
            operator.stop()
    finally:
        helm(kube, "uninstall", "kiln", "-n", "kiln-system", check=False)


def test_namespace_users_get_modeloptimizations_through_aggregated_roles(
    kube: Cluster, namespace: str
) -> None:
    helm(
        kube,
        "install",
        "kiln-agg",
        str(CHART),
        "-n",
        "kiln-agg",
        "--create-namespace",
        "--set",
        "webhook.enabled=false",
        "--set",
        "replicaCount=1",
        "--wait=false",
    )
    try:
        for role, user in (("edit", "dev"), ("view", "viewer")):
            kube.kubectl(
                "create",
                "rolebinding",
                user,
                "-n",
                namespace,
                f"--clusterrole={role}",
                f"--user={user}",
            )

        def can(user: str, verb: str) -> str:
            return kube.kubectl(
                "auth",
                "can-i",
                verb,
                "modeloptimizations.kiln.dev",
                "-n",
                namespace,
                f"--as={user}",
                check=False,
            ).stdout.strip()

        wait_until("aggregation", lambda: can("dev", "create") == "yes")
        assert can("viewer", "list") == "yes"
        assert can("viewer", "create") == "no"
    finally:
        helm(kube, "uninstall", "kiln-agg", "-n", "kiln-agg", check=False)
        print(json.dumps({"uninstalled": True}))


def test_a_namespaced_install_does_its_work_with_nothing_but_its_roles(
    kube: Cluster, make_namespace, tmp_path: Path
) -> None:
    """The mode for multi-tenant clusters: the operator's ServiceAccount has Roles in the watched
    namespaces only, and every call the operator makes (retention, the Job limit) stays inside
    them."""
    team, other = make_namespace(), make_namespace()
    helm(
        kube, "install", "kiln-ns", str(CHART), "-n", "kiln-ns", "--create-namespace",
        "--set", f"watchNamespaces={{{team}}}", "--set", "webhook.enabled=false",
        "--set", "replicaCount=1", "--wait=false",
    )  # fmt: skip
    try:
        kube.create_bound_pvc(team, "artifacts")
        token = kube.sa_token("kiln-ns", "kiln-ns")
        kubeconfig = kube.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig")

        def can(*args: str) -> str:
            proc = subprocess.run(
                [str(REPO_ROOT / ".venv/bin/kubectl"), f"--kubeconfig={kubeconfig}",
                 "auth", "can-i", *args],
                capture_output=True, text=True,
            )  # fmt: skip
            return proc.stdout.strip()

        assert can("create", "jobs", "-n", team) == "yes"
        assert can("create", "jobs", "-n", other) == "no"
        assert can("list", "jobs", "--all-namespaces") == "no"
        assert can("list", "modeloptimizations.kiln.dev", "--all-namespaces") == "no"
        assert can("get", "secrets", "-n", team) == "no"
        assert can("create", "deployments", "-n", other) == "no"

        operator = OperatorProcess(kube, tmp_path, namespaces=team, max_running_jobs="2")
        operator.env["KUBECONFIG"] = str(kubeconfig)
        operator.start()
        try:
            artifacts = {"store": "pvc://artifacts/kiln", "retention": "delete"}
            kube.apply(mopt("scoped", artifacts=artifacts), namespace=team)
            wait_until(
                "Ready with only the namespace's Roles",
                lambda: condition(status_of(kube, team, "scoped"), "Ready").get("status") == "True",
                timeout=120,
                describe=operator.log,
            )
            kube.kubectl("delete", "mopt", "scoped", "-n", team, "--timeout=90s")
            assert "Forbidden" not in operator.log(), operator.log()[-3000:]
        finally:
            operator.stop()
    finally:
        helm(kube, "uninstall", "kiln-ns", "-n", "kiln-ns", check=False)
