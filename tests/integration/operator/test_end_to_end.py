"""The whole product on this machine, nothing simulated but the nodes:

kubectl apply -f examples/quickstart.yaml → the operator compiles the plan and creates a Job →
the real scheduler puts it on a (kwok) H100 node → the local executor runs the Job's exact
command: the real runner loads SmolLM2-135M, quantizes it to FP8 with Model Optimizer, checks the
perplexity gate and publishes the manifest → the operator rolls out Triton (the real Deployment
controller; kwok makes the pods Ready) → the smoke inference is answered by a real tritonserver
serving the published model repository → `kubectl wait --for=condition=Ready` succeeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln_jobs.manifest import Manifest
from kiln_jobs.serving.tritonserver import Ports, TritonServer, free_ports
from tests.cluster.kube import REPO_ROOT, Cluster
from tests.cluster.nodes import LOCAL_EXEC_NODE_SELECTOR, LOCAL_EXEC_TOLERATION
from tests.integration.operator.harness import (
    MoptWatch,
    OperatorProcess,
    condition,
    status_of,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
# SmolLM2 on 2 shared CPU cores: loading, a baseline, calibration and the gate take minutes.
OPTIMIZE_TIMEOUT = 40 * 60


def test_quickstart_from_kubectl_apply_to_a_served_model(
    kube: Cluster, local_exec_node: str, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    store = kube.create_bound_pvc(ns, "artifacts")
    http, grpc, metrics = free_ports(3)
    operator = OperatorProcess(
        kube, tmp_path,
        default_store="pvc://artifacts/kiln",
        # This cluster has no TensorRT-LLM: serve with Triton's Python backend on PyTorch.
        engine_fallback="true",
        # The platform's GPU pool for optimization Jobs is the node the executor runs for real.
        job_node_selector=json.dumps(LOCAL_EXEC_NODE_SELECTOR),
        job_tolerations=json.dumps([LOCAL_EXEC_TOLERATION]),
        smoke_endpoint=f"http://127.0.0.1:{http}",
        poll_seconds="2",
    ).start()  # fmt: skip
    watch = MoptWatch(kube, ns)
    triton: TritonServer | None = None
    try:
        kube.kubectl("apply", "-n", ns, "-f", str(QUICKSTART))

        def optimized() -> dict | None:
            assert operator.alive(), operator.log()[-4000:]
            obj = status_of(kube, ns, "smollm2-fp8")
            if condition(obj, "Stalled").get("status") == "True":
                raise AssertionError(f"stalled: {condition(obj, 'Stalled')}")
            return obj if condition(obj, "Optimized").get("status") == "True" else None

        obj = wait_until(
            "the optimization Job to publish",
            optimized,
            OPTIMIZE_TIMEOUT,
            describe=lambda: operator.log()[-4000:],
        )
        status = obj["status"]
        job = kube.get("job", status["jobName"], ns)
        assert job["spec"]["template"]["spec"]["nodeSelector"] == LOCAL_EXEC_NODE_SELECTOR
        pods = kube.pods(ns, f"job-name={status['jobName']}")
        assert pods and pods[-1]["spec"]["nodeName"] == local_exec_node

        # The runner really measured: FP8 passes the 5% gate.
        metrics_ = status["metrics"]
        assert 10 < metrics_["baselinePerplexity"] < 100
        assert metrics_["degradationPercent"] < 5
        assert status["checkpoint"]["quantAlgo"] == "FP8"

        # The manifest is in the store, with digests of every file.
        published = store / "kiln" / status["planHash"]
        manifest = Manifest.model_validate_json((published / "manifest.json").read_text())
        assert manifest.plan_hash == status["planHash"]
        assert any(f.path.startswith("checkpoint/") for f in manifest.files)
        assert all(len(f.sha256) == 64 for f in manifest.files)

        # The Service's stand-in: a real Triton serving the published repository.
        triton = TritonServer(
            published / "triton", ports=Ports(http, grpc, metrics), log_path=tmp_path / "triton.log"
        ).start()
        kube.wait_for("mopt/smollm2-fp8", ns, condition="Ready", timeout=300)
        obj = status_of(kube, ns, "smollm2-fp8")
        assert obj["status"]["phase"] == "Ready"
        assert condition(obj, "SmokeTested")["status"] == "True"
        assert "GNU General Public License" in condition(obj, "SmokeTested")["message"]
        assert obj["status"]["endpoint"].startswith("http://smollm2-fp8-triton.")
        deployment = kube.get("deployment", "smollm2-fp8-triton", ns)
        assert deployment["metadata"]["labels"]["kiln.dev/quant-algo"] == "FP8"
    finally:
        if triton is not None:
            triton.stop()
        history = watch.close()
        operator.stop()
        print(operator.log()[-6000:])
    known = {"Pending", "Queued", "Optimizing", "Deploying", "Ready", "Failed"}
    phases = [
        word for line in history.splitlines()[1:] for word in line.split()[1:2] if word in known
    ]
    assert "Optimizing" in phases and phases[-1] == "Ready", history
