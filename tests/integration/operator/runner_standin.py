"""TEST-ONLY stand-in for the runner in optimization Jobs that kwok runs (no real work is done).

A Job pod kwok runs does nothing, and a Job whose pod exits 0 without a result publishes nothing
(the operator says `ResultMissing`). For operator tests that need a published plan without the
cost of a real optimization, this thread does what the runner's publish stage does for pods
labelled `test.kiln.dev/runner=stand-in` (with the `run-forever` fate, so they wait for it): it
reads the Job's Plan from its ConfigMap, writes the plan's real Triton repository beside a
placeholder checkpoint config, commits a manifest with digests into the store the Job would
publish to, and then lets the pod succeed. No metrics are recorded: nothing was measured.

The operator finds the published plan the way it does in production when it can see the store:
through the manifest (`store_mounts`), not through a termination message.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from kiln_jobs.manifest import CheckpointInfo, Manifest, Metrics
from kiln_jobs.plan import Plan
from kiln_jobs.publish import DirectoryStore, digest_files
from kiln_jobs.serving.repository import write_repository
from kiln_operator.naming import COMPONENT_LABEL
from tests.cluster.kube import Cluster
from tests.cluster.stages import FATE_LABEL

__all__ = ["RUNNER_LABEL", "RunnerStandIn", "stand_in_labels"]

RUNNER_LABEL = "test.kiln.dev/runner"
log = logging.getLogger(__name__)


def stand_in_labels() -> dict[str, str]:
    """Pod labels that hand a Job's pod to the stand-in runner."""
    return {FATE_LABEL: "run-forever", RUNNER_LABEL: "stand-in"}


class RunnerStandIn:
    """Publishes for labelled Job pods, then lets them succeed; a background thread."""

    def __init__(self, kube: Cluster, interval: float = 0.3) -> None:
        self.kube = kube
        self.interval = interval
        self.published: list[str] = []  # plan hashes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runner-standin", daemon=True)

    def start(self) -> RunnerStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._pass()
            except Exception as error:  # the API server may be restarting: next pass
                log.warning("runner stand-in: %r", error)

    def _pass(self) -> None:
        out = self.kube.kubectl(
            "get", "pods", "-A", "-o", "json",
            # Job pods only: a resource's pod labels reach its Triton pods too.
            "-l", f"{RUNNER_LABEL}=stand-in,{FATE_LABEL}=run-forever,{COMPONENT_LABEL}=optimize",
        ).stdout  # fmt: skip
        for pod in json.loads(out)["items"]:
            if (pod.get("status") or {}).get("phase") == "Running":
                self._finish(pod)

    def _finish(self, pod: dict[str, Any]) -> None:
        namespace = pod["metadata"]["namespace"]
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "plan")
        configmap = json.loads(
            self.kube.kubectl(
                "get", "configmap", volume["configMap"]["name"], "-n", namespace, "-o", "json"
            ).stdout
        )  # fmt: skip
        plan = Plan.from_json(configmap["data"]["plan.json"])
        self._publish(namespace, plan)
        self.kube.set_fate(namespace, pod["metadata"]["name"], "succeed")

    def _publish(self, namespace: str, plan: Plan) -> None:
        scheme, rest = plan.output.store.split("://", 1)
        if scheme != "pvc":
            raise ValueError(f"the stand-in runner publishes to pvc:// stores, not {scheme}://")
        claim, _, prefix = rest.partition("/")
        store = DirectoryStore(
            self.kube.pvc_dir(namespace, claim) / prefix, uri=plan.output.store.rstrip("/")
        )
        plan_hash = plan.hash()
        if store.existing(plan_hash) is not None:
            return
        staging = store.staging(plan_hash)
        (staging / "checkpoint").mkdir()
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        (staging / "checkpoint" / "config.json").write_text(json.dumps(config))
        served = write_repository(plan, staging)
        manifest = Manifest(
            plan_hash=plan_hash,
            plan=plan,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            stages=[],
            metrics=Metrics(),
            checkpoint=CheckpointInfo(),
            serving_runtime=served.runtime,
            speculation=served.speculation,
            files=digest_files(staging),
        )
        store.commit(staging, manifest)
        self.published.append(plan_hash)
