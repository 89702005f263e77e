"""The whole product on this machine, nothing simulated but the nodes and the GPU library:

kubectl apply -f examples/quickstart.yaml → the operator compiles the plan and creates a Job →
the real scheduler puts it on a (kwok) H100 node → the local executor runs the Job's exact
command: the real runner loads SmolLM2-135M, quantizes it to FP8 with Model Optimizer, checks
the perplexity gate and publishes the plan's production repository (the LLM API runtime, no
fallback) → the operator rolls out the plan's Triton revision (the real Deployment controller) →
the executor runs the Deployment pod's own containers with their own argv: `tritonserver` (here
the wheel's, with Kiln's backend) serving the published repository through TensorRT-LLM's LLM
API (here the labelled stand-in, on the published checkpoint), and the OpenAI-compatible sidecar
→ their readiness probes pass → the operator's smoke test is answered → the served-model
evaluation Job runs its own argv against the candidate Service (the tests' generative task
scored again, speed measured) → the revision is promoted → `kubectl wait --for=condition=Ready`
succeeds, and clients get the checkpoint's own greedy continuation.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from kiln_jobs.local import checkpoint_continuation
from kiln_jobs.manifest import Manifest
from kiln_jobs.serving.client import generate
from kiln_jobs.serving.tritonserver import free_ports
from kiln_operator.naming import deployment_name
from tests.cluster.kube import REPO_ROOT, Cluster
from tests.cluster.nodes import LOCAL_EXEC_NODE_SELECTOR, LOCAL_EXEC_TOLERATION
from tests.integration.operator.harness import (
    KILN,
    MoptWatch,
    OperatorProcess,
    condition,
    status_of,
    wait_until,
)
from tests.unit.jobs.cloze_task import GENERATIVE_TASK_NAME, write_cloze_task

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
# SmolLM2 on 2 shared CPU cores: loading, a baseline, calibration and the gate take minutes.
OPTIMIZE_TIMEOUT = 40 * 60
SERVE_TIMEOUT = 10 * 60
CONCURRENT = 8
MAX_TOKENS = 16
TASK_QUESTIONS = 8


def test_quickstart_from_kubectl_apply_to_a_served_model(
    kube: Cluster, local_exec_node: str, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    store = kube.create_bound_pvc(ns, "artifacts")
    http, grpc, metrics, openai_port = free_ports(4)
    local_exec = {
        "node_selector": json.dumps(LOCAL_EXEC_NODE_SELECTOR),
        "tolerations": json.dumps([LOCAL_EXEC_TOLERATION]),
    }
    operator = OperatorProcess(
        kube, tmp_path,
        default_store="pvc://artifacts/kiln",
        # The platform's GPU pools, for optimization and for serving, are the node the executor
        # runs for real.
        job_node_selector=local_exec["node_selector"], job_tolerations=local_exec["tolerations"],
        serving_node_selector=local_exec["node_selector"],
        serving_tolerations=local_exec["tolerations"],
        # This machine has no Triton image: the wheel's tritonserver with Kiln's backend.
        tritonserver=str(REPO_ROOT / ".venv" / "bin" / "kiln-tritonserver"),
        smoke_endpoint=f"http://127.0.0.1:{http}",
        poll_seconds="2",
    ).start()  # fmt: skip
    watch = MoptWatch(kube, ns)
    quickstart = yaml.safe_load(QUICKSTART.read_text())
    # The executor's pods share this machine's network: the ports must be free ones.
    quickstart["spec"]["serving"]["service"] = {
        "httpPort": http, "grpcPort": grpc, "metricsPort": metrics, "openaiPort": openai_port,
    }  # fmt: skip
    # A generative task of the tests' own, on the claim: scored in the optimization Job, then
    # again on the rolled-out revision by the served-model evaluation Job before promotion.
    write_cloze_task(store / "tasks", questions=TASK_QUESTIONS, generative=True)
    quickstart["spec"]["evaluation"] = {
        **quickstart["spec"].get("evaluation", {}),
        "tasks": [{"name": GENERATIVE_TASK_NAME, "source": "pvc://artifacts/tasks",
                   "limit": TASK_QUESTIONS, "metric": "exact_match"}],
        "served": {"maxDrop": 0.1},
        "performance": {"concurrency": [2], "requests": 2, "maxTokens": 8},
    }  # fmt: skip
    name = quickstart["metadata"]["name"]
    try:
        kube.apply(quickstart, namespace=ns)

        def optimized() -> dict | None:
            assert operator.alive(), operator.log()[-4000:]
            obj = status_of(kube, ns, name)
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
        # The production runtime, not a CPU fallback.
        assert status["servingRuntime"] == "tensorrtllm-pytorch"

        # The manifest is in the store, with digests of every file; no code is published.
        published = store / "kiln" / status["planHash"]
        manifest = Manifest.model_validate_json((published / "manifest.json").read_text())
        assert manifest.plan_hash == status["planHash"]
        assert manifest.serving_runtime == "tensorrtllm-pytorch"
        assert any(f.path.startswith("checkpoint/") for f in manifest.files)
        assert all(len(f.sha256) == 64 for f in manifest.files)
        assert not [f.path for f in manifest.files if f.path.endswith(".py")]
        assert manifest.report and (published / manifest.report).is_file()

        # `kiln report`: this machine cannot read a pvc:// store, so the report is rendered from
        # the status, and says so.
        report = subprocess.run(
            [KILN, "report", name, "-n", ns, "--out", str(tmp_path / "report")],
            env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "cannot read" in report.stderr
        text = Path(report.stdout.strip()).read_text()
        assert f"Plan `{status['planHash']}`, ptq(fp8)" in text
        assert "**passed the accuracy gate** with attempt 1 of 1" in text
        assert f"| {metrics_['baselinePerplexity']:.3f} |" in text

        kube.wait_for(f"mopt/{name}", ns, condition="Ready", timeout=SERVE_TIMEOUT)
        obj = status_of(kube, ns, name)
        status = obj["status"]
        assert status["phase"] == "Ready"
        assert condition(obj, "SmokeTested")["status"] == "True"
        assert "GNU General Public License" in condition(obj, "SmokeTested")["message"]
        model = quickstart["spec"].get("serving", {}).get("modelName", "model")
        assert status["endpoints"]["model"] == model
        assert status["endpoints"]["openai"].endswith(f":{openai_port}/v1")
        # The served-model evaluation Job ran for real against the candidate Service, on the
        # platform's pool, and its scores decided the promotion.
        validated = condition(obj, "ServingValidated")
        assert validated["status"] == "True", validated
        (served,) = status["metrics"]["served"]
        (in_process,) = status["metrics"]["tasks"]
        assert served["samples"] == TASK_QUESTIONS and served["passed"]
        assert served["inProcess"] == in_process["optimized"]
        assert abs(served["served"] - served["inProcess"]) <= 0.1
        (level,) = status["metrics"]["performance"]
        assert level["concurrency"] == 2 and level["outputTokensPerSecond"] > 0
        checks = kube.pods(ns, "app.kubernetes.io/component=validate")
        assert [p["spec"]["nodeName"] for p in checks] == [local_exec_node]
        assert status["servingPlanHash"] == status["planHash"]
        deployment = kube.get("deployment", deployment_name(name, status["planHash"]), ns)
        assert deployment["metadata"]["labels"]["kiln.dev/quant-algo"] == "FP8"
        triton, sidecar = deployment["spec"]["template"]["spec"]["containers"]
        assert "--model-repository=/kiln/model/triton" in triton["args"]
        assert sidecar["name"] == "openai"
        serving_pods = kube.pods(ns, "app.kubernetes.io/component=serving")
        assert [p["spec"]["nodeName"] for p in serving_pods] == [local_exec_node]

        # Clients of both endpoints get the checkpoint's own greedy continuation.
        prompt = quickstart["spec"]["serving"]["smokeTest"]["prompt"]
        expected = checkpoint_continuation(published / "checkpoint", prompt, MAX_TOKENS)

        def ask_triton(_: int) -> str:
            url = f"127.0.0.1:{http}"
            return generate(url, model, prompt, max_tokens=MAX_TOKENS).text

        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{openai_port}/v1", api_key="unused")

        def ask_openai(_: int) -> str:
            reply = client.completions.create(
                model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
            )
            return reply.choices[0].text

        with ThreadPoolExecutor(CONCURRENT) as pool:
            assert list(pool.map(ask_triton, range(CONCURRENT))) == [expected] * CONCURRENT
            assert list(pool.map(ask_openai, range(CONCURRENT))) == [expected] * CONCURRENT
        streamed = generate(
            f"127.0.0.1:{grpc}", model, prompt, max_tokens=MAX_TOKENS, streaming=True,
            protocol="grpc",
        )  # fmt: skip
        assert streamed.text == expected and len([c for c in streamed.chunks if c]) > 1
    finally:
        history = watch.close()
        kube.kubectl("delete", "mopt", name, "-n", ns, "--wait=false", check=False)
        operator.stop()
        print(operator.log()[-6000:])
    known = {"Pending", "Queued", "Optimizing", "Deploying", "Ready", "Failed"}
    phases = [
        word for line in history.splitlines()[1:] for word in line.split()[1:2] if word in known
    ]
    assert "Optimizing" in phases and phases[-1] == "Ready", history
