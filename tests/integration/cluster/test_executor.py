"""The local executor runs a Job pod's exact command, with its env and volumes, for real."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.kube import Cluster
from tests.cluster.nodes import LOCAL_EXEC_NODE_SELECTOR, LOCAL_EXEC_TOLERATION
from tests.cluster.procs import is_alive
from tests.integration.cluster.manifests import RESTRICTED_SECURITY, container, job, pod

pytestmark = pytest.mark.integration

# The program a real optimization pod would run: read the Plan, use a secret, publish to the
# artifacts volume, say what happened in the termination message.
WORKER = """
import json, os, pathlib, sys
plan = json.loads(pathlib.Path("/etc/kiln/plan/plan.json").read_text())
pathlib.Path("/scratch/tmp.txt").write_text("scratch")
pathlib.Path("/outside-any-volume.txt").write_text("must not reach the host")
out = {"plan": plan, "token": os.environ["TOKEN"], "ns": os.environ["POD_NAMESPACE"],
       "expanded": os.environ["EXPANDED"], "argv": sys.argv[1:], "cwd": os.getcwd(),
       "uid": os.getuid()}
pathlib.Path("/artifacts/result.json").write_text(json.dumps(out))
pathlib.Path("/dev/termination-log").write_text("published " + plan["model"])
"""


# Says a few lines (one of them on stderr, one a JSON progress record), then waits for the test's
# go-ahead so that the test reads the log while the container runs.
TALKER = """
import json, os, sys, time
for i in range(1, 5):
    print(f"step {i}", flush=True)
print(json.dumps({"kiln_progress": {"stage": "calibrate", "percent": 42.0}}), flush=True)
print("warning: on stderr", file=sys.stderr, flush=True)
deadline = time.monotonic() + 120
while not os.path.exists("/ctl/go") and time.monotonic() < deadline:
    time.sleep(0.05)
print("finished", flush=True)
"""
TALKER_STDOUT = [
    "step 1", "step 2", "step 3", "step 4",
    '{"kiln_progress": {"stage": "calibrate", "percent": 42.0}}',
]  # fmt: skip
TALKER_STDERR = ["warning: on stderr"]


def _is_talker_log(lines: list[str]) -> bool:
    """Both streams in full, each in its own order. As with a real kubelet, stdout and stderr
    are separate pipes, so where the stderr line lands among the stdout lines is not fixed."""
    return (
        sorted(lines) == sorted(TALKER_STDOUT + TALKER_STDERR)
        and [line for line in lines if line in TALKER_STDOUT] == TALKER_STDOUT
    )


def _eventually(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def _local_job(name: str, command: list[str], **kwargs: object) -> dict[str, object]:
    return job(
        name,
        containers=[container(command=command, **kwargs)],  # type: ignore[arg-type]
        node_selector=LOCAL_EXEC_NODE_SELECTOR,
        tolerations=[LOCAL_EXEC_TOLERATION],
        backoff_limit=0,
    )


def _terminated(kube: Cluster, namespace: str, app: str) -> dict[str, object]:
    (p,) = kube.pods(namespace, f"app={app}")
    return dict(p["status"]["containerStatuses"][0]["state"]["terminated"])


def test_runs_the_exact_command_with_env_and_volumes(
    kube: Cluster, namespace: str, local_exec_node: str
) -> None:
    plan = {"model": "smol", "techniques": ["fp8"]}
    kube.kubectl("create", "configmap", "plan", "-n", namespace,
                 f"--from-literal=plan.json={json.dumps(plan)}")  # fmt: skip
    kube.kubectl("create", "secret", "generic", "creds", "-n", namespace,
                 "--from-literal=token=s3cr3t")  # fmt: skip
    artifacts = kube.create_bound_pvc(namespace, "artifacts")
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PLAIN", "value": "hello"},
        {"name": "EXPANDED", "value": "$(PLAIN)-world"},
    ]
    mounts = [
        {"name": "plan", "mountPath": "/etc/kiln/plan", "readOnly": True},
        {"name": "artifacts", "mountPath": "/artifacts"},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    volumes = [
        {"name": "plan", "configMap": {"name": "plan"}},
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "artifacts"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    manifest = _local_job("worker", ["python", "-c", WORKER], args=["--plan", "$(PLAIN)"],
                          env=env, volumeMounts=mounts, workingDir="/artifacts")  # fmt: skip
    manifest["spec"]["template"]["spec"]["volumes"] = volumes  # type: ignore[index]
    kube.apply(manifest, namespace=namespace)

    kube.wait_for("job/worker", namespace, condition="Complete", timeout=90)
    (p,) = kube.pods(namespace, "app=worker")
    assert p["spec"]["nodeName"] == local_exec_node
    term = _terminated(kube, namespace, "worker")
    assert term["exitCode"] == 0
    assert term["message"] == "published smol"
    result = json.loads((artifacts / "result.json").read_text())
    assert result == {
        "plan": plan, "token": "s3cr3t", "ns": namespace, "expanded": "hello-world",
        "argv": ["--plan", "hello"], "cwd": "/artifacts", "uid": 0,
    }  # fmt: skip
    # Writes outside volumes stay in the pod's throw-away layer, as in a container.
    assert not Path("/outside-any-volume.txt").exists()


def test_exit_code_and_message_fail_the_job_through_pod_failure_policy(
    kube: Cluster, namespace: str, local_exec_node: str
) -> None:
    script = (
        "import sys; open('/dev/termination-log', 'w').write('gate failed: 0.41 < 0.5'); "
        "sys.exit(3)"
    )
    manifest = _local_job("gate", ["python", "-c", script])
    manifest["spec"]["podFailurePolicy"] = {"rules": [  # type: ignore[index]
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]}  # fmt: skip
    kube.apply(manifest, namespace=namespace)
    kube.wait_for("job/gate", namespace, condition="Failed", timeout=90)
    done = kube.get("job", "gate", namespace)
    reasons = {c["type"]: c.get("reason") for c in done["status"]["conditions"]}
    assert reasons["Failed"] == "PodFailurePolicy"
    term = _terminated(kube, namespace, "gate")
    assert (term["exitCode"], term["message"]) == (3, "gate failed: 0.41 < 0.5")


def test_fallback_to_logs_on_error(kube: Cluster, namespace: str, local_exec_node: str) -> None:
    script = "import sys; print('Traceback: boom', file=sys.stderr); sys.exit(1)"
    manifest = _local_job("crash", ["python", "-c", script],
                          terminationMessagePolicy="FallbackToLogsOnError")  # fmt: skip
    kube.apply(manifest, namespace=namespace)
    kube.wait_for("job/crash", namespace, condition="Failed", timeout=90)
    term = _terminated(kube, namespace, "crash")
    assert term["exitCode"] == 1
    assert "Traceback: boom" in str(term["message"])
    (p,) = kube.pods(namespace, "app=crash")
    assert "Traceback: boom" in kube.executor_log(namespace, p["metadata"]["name"])


def test_runs_as_the_pods_user_in_a_restricted_namespace(
    kube: Cluster, restricted_namespace: str, local_exec_node: str
) -> None:
    script = "import os; open('/dev/termination-log', 'w').write(f'{os.getuid()}:{os.getgid()}')"
    manifest = _local_job("nonroot", ["python", "-c", script], securityContext=RESTRICTED_SECURITY)
    kube.apply(manifest, namespace=restricted_namespace)
    kube.wait_for("job/nonroot", restricted_namespace, condition="Complete", timeout=90)
    assert _terminated(kube, restricted_namespace, "nonroot")["message"] == "1000:1000"


def test_deleting_the_job_stops_the_process(
    kube: Cluster, namespace: str, local_exec_node: str
) -> None:
    pid_dir = kube.create_bound_pvc(namespace, "out")
    script = (
        "import os, subprocess, time; "
        "child = subprocess.Popen(['sleep', '300']); "
        "open('/out/pids', 'w').write(f'{os.getpid()} {child.pid}'); time.sleep(300)"
    )
    manifest = _local_job("sleeper", ["python", "-c", script],
                          volumeMounts=[{"name": "out", "mountPath": "/out"}])  # fmt: skip
    manifest["spec"]["template"]["spec"]["volumes"] = [  # type: ignore[index]
        {"name": "out", "persistentVolumeClaim": {"claimName": "out"}}
    ]
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2  # type: ignore[index]
    kube.apply(manifest, namespace=namespace)
    pids_file = pid_dir / "pids"
    deadline = time.monotonic() + 60
    while not (pids_file.exists() and pids_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(x) for x in pids_file.read_text().split()]
    assert all(is_alive(pid) for pid in pids)

    kube.kubectl(
        "delete", "job", "sleeper", "-n", namespace, "--cascade=foreground", "--wait=false"
    )
    deadline = time.monotonic() + 30
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(is_alive(pid) for pid in pids), "the pod's processes outlived the pod"


def test_default_storage_class_provisions_the_directory_the_executor_mounts(
    kube: Cluster, namespace: str, local_exec_node: str
) -> None:
    # A claim as an operator would write it: no class (the default one applies), no volume.
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "5Gi"}}}},
               namespace=namespace)  # fmt: skip
    kube.wait_for("pvc/cache", namespace, jsonpath="{.status.phase}=Bound")
    claim = kube.get("pvc", "cache", namespace)
    assert claim["spec"]["storageClassName"] == "kiln-local"
    script = "open('/cache/hello.txt', 'w').write('from the pod')"
    manifest = _local_job("writer", ["python", "-c", script],
                          volumeMounts=[{"name": "cache", "mountPath": "/cache"}])  # fmt: skip
    manifest["spec"]["template"]["spec"]["volumes"] = [  # type: ignore[index]
        {"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}
    ]
    kube.apply(manifest, namespace=namespace)
    kube.wait_for("job/writer", namespace, condition="Complete", timeout=90)
    assert (kube.pvc_dir(namespace, "cache") / "hello.txt").read_text() == "from the pod"

    pv = claim["spec"]["volumeName"]
    kube.kubectl("delete", "job", "writer", "-n", namespace, "--cascade=foreground")
    kube.kubectl("delete", "pvc", "cache", "-n", namespace)
    kube.kubectl("wait", "--for=delete", f"pv/{pv}", "--timeout=60s")


def test_kubectl_logs_serves_the_log_while_the_pod_runs_and_after(
    kube: Cluster, namespace: str, local_exec_node: str
) -> None:
    from kubernetes import client

    ctl = kube.create_bound_pvc(namespace, "ctl")
    manifest = _local_job("talker", ["python", "-c", TALKER],
                          volumeMounts=[{"name": "ctl", "mountPath": "/ctl"}])  # fmt: skip
    manifest["spec"]["template"]["spec"]["volumes"] = [  # type: ignore[index]
        {"name": "ctl", "persistentVolumeClaim": {"claimName": "ctl"}}
    ]
    kube.apply(manifest, namespace=namespace)
    kube.wait_for("pod", namespace, selector="app=talker", jsonpath="{.status.phase}=Running")
    (p,) = kube.pods(namespace, "app=talker")
    name = p["metadata"]["name"]

    def logs(*args: str) -> list[str]:
        return kube.kubectl("logs", "-n", namespace, name, *args).stdout.splitlines()

    def has_said_it_all() -> bool:
        proc = kube.kubectl("logs", "-n", namespace, name, check=False)
        return proc.returncode == 0 and _is_talker_log(proc.stdout.splitlines())

    # While it runs: the whole log, its tail, through kubectl and the Python client.
    _eventually("kubectl logs to show what the container said", has_said_it_all)
    said = logs()
    assert logs("--tail=2") == said[-2:]
    core = client.CoreV1Api(kube.api_client())
    tail = core.read_namespaced_pod_log(name, namespace, tail_lines=3)
    assert tail.splitlines() == said[-3:]
    assert kube.get("pod", name, namespace)["status"]["phase"] == "Running"

    # Following: what the container says next arrives on the open stream. (kwok keeps a
    # follow stream open after the container ends, so the client closes it.)
    stream: Any = core.read_namespaced_pod_log(
        name, namespace, follow=True, tail_lines=1, _preload_content=False, _request_timeout=60
    )
    try:
        assert stream.readline().decode().rstrip("\n") == said[-1]
        (ctl / "go").touch()
        assert stream.readline().decode() == "finished\n"
    finally:
        stream.release_conn()

    # After it ended: the same log, from the kubelet API and from the file.
    kube.wait_for("job/talker", namespace, condition="Complete", timeout=90)
    assert logs() == [*said, "finished"]
    assert logs("--tail=1") == ["finished"]
    assert core.read_namespaced_pod_log(name, namespace, tail_lines=2).splitlines() == [
        said[-1], "finished"
    ]  # fmt: skip
    assert kube.executor_log(namespace, name).splitlines() == [*said, "finished"]
    stamped = logs("--timestamps")
    assert [line.split(" ", 1)[1] for line in stamped] == [*said, "finished"]


def test_other_kwok_pods_have_no_logs_and_say_so_at_once(kube: Cluster, namespace: str) -> None:
    kube.apply(pod("quiet"), namespace=namespace)
    kube.wait_for("pod/quiet", namespace, jsonpath="{.status.phase}=Running")
    started = time.monotonic()
    proc = kube.kubectl("logs", "-n", namespace, "quiet", check=False)
    assert proc.returncode != 0
    assert "no logs found" in proc.stderr
    assert time.monotonic() - started < 10
