"""The generated CRD on a real kube-apiserver: structural schema, CEL, explain, columns,
status subresource and generation semantics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.cluster.kube import REPO_ROOT, Cluster
from tests.unit.api.test_bad_specs import BAD_NAMES

pytestmark = pytest.mark.integration

BAD_SPECS = sorted((REPO_ROOT / "tests" / "bad_specs").glob("*.yaml"))
SERVER_REJECTS = [p for p in BAD_SPECS if "# apiserver: rejects" in p.read_text()]


def test_crd_is_established_with_cel_compiled(kube: Cluster) -> None:
    crd = kube.get("crd", "modeloptimizations.kiln.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert conditions.get("NonStructuralSchema") is None


def test_every_example_is_accepted(kube: Cluster, namespace: str) -> None:
    proc = kube.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples"))
    created = [line for line in proc.stdout.splitlines() if " created" in line]
    assert len(created) == len(list((REPO_ROOT / "examples").glob("*.yaml")))


def test_enough_bad_specs_are_checked_by_the_server() -> None:
    assert len(SERVER_REJECTS) >= 20


@pytest.mark.parametrize("path", SERVER_REJECTS, ids=lambda p: p.stem)
def test_api_server_rejects_bad_spec_naming_the_field(
    kube: Cluster, namespace: str, path: Path
) -> None:
    field = re.search(r"^# expect: (\S+)", path.read_text(), re.M).group(1)  # type: ignore[union-attr]
    proc = kube.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert proc.returncode != 0, f"the API server accepted {path.name}"
    message = proc.stderr
    if field in ("apiVersion", "kind"):
        assert "no matches for kind" in message or "could not find" in message, message
        return
    # The server names the field's path (CEL rules on a list name the list, with the item's
    # kind in the message): the path up to the first list, and the last segment, must appear.
    segments = re.sub(r"\[\d+\]", "", field).split(".")
    flattened = re.sub(r"\[\d+\]", "", message)
    assert ".".join(segments[:2]) in flattened, f"{field} not named in: {message}"
    assert segments[-1] in message, f"{field} not named in: {message}"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_api_server_rejects_a_name_kiln_cannot_use(
    kube: Cluster, namespace: str, name: str
) -> None:
    body = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": name},
        "spec": {"techniques": [{"ptq": {"format": "fp8"}}]},
    }
    proc = kube.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False
    )
    assert proc.returncode != 0, f"the API server accepted the name {name!r}"
    assert "metadata.name" in proc.stderr or "metadata.name" in proc.stdout, proc.stderr


def test_explain_prints_the_api_docs(kube: Cluster) -> None:
    out = kube.kubectl("explain", "modeloptimization.spec.techniques").stdout
    assert "The optimization stack, applied in order" in out
    ptq = kube.kubectl("explain", "modeloptimization.spec.techniques.ptq.format").stdout
    # Every format with the generation it needs, from the one table (kiln_jobs.contract).
    flat = " ".join(ptq.split())
    assert "nvfp4 (FP4 weights, activations): Blackwell and newer" in flat
    assert "fp8 (FP8 weights and activations): Ada and newer" in flat and "int4_awq" in flat


def test_printer_columns(kube: Cluster, namespace: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "quickstart.yaml"))
    header = kube.kubectl("get", "mopt", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "TECHNIQUES", "PROGRESS", "DEGRADATION", "READY", "AGE"]
    wide = kube.kubectl("get", "kiln", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
    assert "SPEEDUP" in wide and "ENDPOINT" in wide


def _quickstart(kube: Cluster, namespace: str) -> dict:
    kube.kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "quickstart.yaml"))
    return kube.get("mopt", "smollm2-fp8", namespace)


def test_status_only_through_the_subresource(kube: Cluster, namespace: str) -> None:
    before = _quickstart(kube, namespace)
    patch = json.dumps({"status": {"phase": "Ready"}})
    kube.kubectl("patch", "mopt", "smollm2-fp8", "-n", namespace, "--type=merge", "-p", patch)
    assert "status" not in kube.get("mopt", "smollm2-fp8", namespace), "main resource took status"
    kube.kubectl(
        "patch",
        "mopt",
        "smollm2-fp8",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        patch,
        "--subresource=status",
    )
    after = kube.get("mopt", "smollm2-fp8", namespace)
    assert after["status"]["phase"] == "Ready"
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_generation_bumps_on_spec_change_only(kube: Cluster, namespace: str) -> None:
    first = _quickstart(kube, namespace)["metadata"]["generation"]
    kube.kubectl("label", "mopt", "smollm2-fp8", "-n", namespace, "team=a")
    kube.kubectl(
        "patch",
        "mopt",
        "smollm2-fp8",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Pending"}}',
    )
    assert kube.get("mopt", "smollm2-fp8", namespace)["metadata"]["generation"] == first
    kube.kubectl(
        "patch",
        "mopt",
        "smollm2-fp8",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"serving":{"replicas":2}}}',
    )
    assert kube.get("mopt", "smollm2-fp8", namespace)["metadata"]["generation"] == first + 1


def test_unknown_fields_in_status_are_pruned(kube: Cluster, namespace: str) -> None:
    _quickstart(kube, namespace)
    patch = {"status": {"phase": "Pending", "notAField": 1}}
    kube.kubectl(
        "patch",
        "mopt",
        "smollm2-fp8",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    assert "notAField" not in kube.get("mopt", "smollm2-fp8", namespace)["status"]


def test_crd_in_the_chart_is_the_generated_one() -> None:
    chart = yaml.safe_load(
        (REPO_ROOT / "charts/kiln/crds/modeloptimizations.kiln.dev.yaml").read_text()
    )
    generated = yaml.safe_load((REPO_ROOT / "crds/modeloptimizations.kiln.dev.yaml").read_text())
    assert chart == generated
