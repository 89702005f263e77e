"""The test cluster's pure parts and its process supervision, without a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster import kube as kube_mod
from tests.cluster import stages
from tests.cluster.executor import expand_vars, termination_message
from tests.cluster.nodes import LOCAL_EXEC_LABEL, NodeSpec, node_manifest
from tests.cluster.procs import RUN_MARKER, Supervisor, is_alive, processes_of_run, reap_stale_runs

pytestmark = pytest.mark.unit


def test_expand_vars_like_a_kubelet() -> None:
    env = {"A": "1", "B_C": "two"}
    assert expand_vars("$(A)-$(B_C)", env) == "1-two"
    assert expand_vars("$$(A)", env) == "$(A)"
    assert expand_vars("$(MISSING) $A", env) == "$(MISSING) $A"


def test_termination_message_prefers_the_file_and_caps_it() -> None:
    assert termination_message("gate failed", "log", 3, "FallbackToLogsOnError") == "gate failed"
    assert len(termination_message("x" * 5000, "", 1, "File")) == 4096


def test_termination_message_falls_back_to_the_log_only_on_error() -> None:
    log = "\n".join(f"line {i}" for i in range(200))
    fallback = termination_message("", log, 1, "FallbackToLogsOnError")
    assert fallback.endswith("line 199") and "line 119" not in fallback
    assert termination_message("", log, 0, "FallbackToLogsOnError") == ""
    assert termination_message("", log, 1, "File") == ""


def test_h100_node_has_gfd_labels_and_gpus() -> None:
    node = node_manifest(NodeSpec("n", gpu="H100"))
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_cpu_node_has_no_gpu() -> None:
    node = node_manifest(NodeSpec("c"))
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    assert not any(k.startswith("nvidia.com/") for k in node["metadata"]["labels"])


def test_local_exec_nodes_need_the_name_prefix_kwok_selects_on() -> None:
    with pytest.raises(ValueError, match="local-exec-"):
        node_manifest(NodeSpec("worker", local_exec=True))
    node = node_manifest(NodeSpec("local-exec-1", local_exec=True))
    assert node["metadata"]["labels"][LOCAL_EXEC_LABEL] == "true"


def _stock_dir(tmp_path: Path) -> Path:
    for rel in stages.STOCK_STAGES:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        name = Path(rel).stem
        stage = {"kind": "Stage", "metadata": {"name": name},
                 "spec": {"selector": {"matchExpressions": []}}}  # fmt: skip
        path.write_text(yaml.safe_dump(stage))
    return tmp_path


def test_stock_pod_stages_leave_fated_and_local_pods_alone(tmp_path: Path) -> None:
    by_name = {s["metadata"]["name"]: s for s in stages.all_stages(_stock_dir(tmp_path))}
    complete = by_name["pod-complete"]["spec"]["selector"]["matchExpressions"]
    keys = {(e["key"], e["operator"]) for e in complete}
    assert (f'.metadata.labels["{stages.FATE_LABEL}"]', "DoesNotExist") in keys
    assert any("local-exec-" in e["key"] and e["operator"] == "NotIn" for e in complete)
    ready = by_name["pod-ready"]["spec"]["selector"]["matchExpressions"]
    assert {"key": f'.metadata.labels["{stages.FATE_LABEL}"]', "operator": "NotIn",
            "values": ["never-ready"]} in ready  # fmt: skip


def test_long_running_local_pods_are_left_to_the_executor_for_readiness() -> None:
    stage = stages._local_service_stage()
    exprs = stage["spec"]["selector"]["matchExpressions"]
    assert {"key": stages._LOCAL_SERVICE, "operator": "In", "values": ["true"]} in exprs
    assert 'status: "False"' in stage["spec"]["next"]["statusTemplate"]  # not Ready
    stock = yaml.safe_load("metadata: {name: pod-ready}\nspec: {selector: {matchExpressions: []}}")
    ready = stages._patched_stock(stock)["spec"]["selector"]["matchExpressions"]
    assert {"key": stages._LOCAL_SERVICE, "operator": "NotIn", "values": ["true"]} in ready


def test_every_fate_has_a_stage_and_none_touches_local_pods() -> None:
    fate_key = f'.metadata.labels["{stages.FATE_LABEL}"]'
    covered = set()
    for stage in stages.fate_stages():
        exprs = stage["spec"]["selector"]["matchExpressions"]
        assert any("local-exec-" in e["key"] for e in exprs), stage["metadata"]["name"]
        for e in exprs:
            if e["key"] == fate_key and e["operator"] == "In":
                covered.update(e["values"])
    # run-forever needs no stage of its own: it only keeps the stock pod-complete away.
    assert covered == set(stages.FATES) - {"run-forever"}


def test_fate_templates_render_as_yaml_shapes() -> None:
    # Every template must produce the keys a kubelet would set; a typo here hangs a test later.
    for stage in stages.fate_stages():
        template = stage["spec"]["next"]["statusTemplate"]
        assert "phase:" in template, stage["metadata"]["name"]
        assert "containerStatuses:" in template, stage["metadata"]["name"]


def test_missing_binaries_say_how_to_build_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CLUSTER_CACHE", str(tmp_path))
    with pytest.raises(kube_mod.ClusterBinariesMissing, match="make cluster-bins"):
        kube_mod.Cluster(base_tmp=tmp_path).start()


def test_supervisor_stops_a_component_and_its_children(tmp_path: Path) -> None:
    sup = Supervisor.create(tmp_path)
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    comp = sup.start("sleepy", [sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while len(processes_of_run(sup.run_dir, [comp.pid])) < 2:  # python (setpriv exec'd) + sleep
        assert time.monotonic() < deadline and comp.proc.poll() is None
    assert sup.stop(grace=5) == []
    assert processes_of_run(sup.run_dir, [comp.pid]) == []
    assert "sleepy" in sup.log_paths()


def test_stale_run_of_a_dead_owner_is_reaped(tmp_path: Path) -> None:
    run_dir = tmp_path / "kiln-cluster-dead"
    (run_dir / "pids").mkdir(parents=True)
    (run_dir / "owner.pid").write_text("999999999 1\n")  # no such process
    orphan = subprocess.Popen(["sleep", "60"], env={**os.environ, RUN_MARKER: str(run_dir)},
                              start_new_session=True)  # fmt: skip
    try:
        assert reap_stale_runs(tmp_path) == [run_dir]
        orphan.wait(timeout=5)
        assert not is_alive(orphan.pid)
        assert not run_dir.exists()
    finally:
        orphan.kill()


def test_live_owner_run_is_left_alone(tmp_path: Path) -> None:
    sup = Supervisor.create(tmp_path)
    assert reap_stale_runs(tmp_path) == []
    assert sup.run_dir.exists()
