"""The peer: the smallest correct controller a user could write instead of Kiln.

One kopf handler: when a ModelOptimization is created, create a Job that would run the
optimization (the same image and command line Kiln's Job runs, one GPU, owned by the resource
so it is garbage-collected with it), and nothing else: no plan, no cache, no status, no
serving, no retries of its own. `bench.operator_scale` runs it beside Kiln on the same test
cluster and compares how fast each turns a new resource into a Job.

    kopf run --standalone --namespace NS bench/peers/bare_kopf.py
"""

from __future__ import annotations

import os
from typing import Any

import kopf
from kubernetes import client, config

JOB_IMAGE = os.environ.get("PEER_JOB_IMAGE", "registry.test/kiln-job:test")
OWNER_LABEL = "kiln.dev/model-optimization"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # Kiln posts no kopf events either
    settings.execution.max_workers = 8  # as Kiln's
    config.load_kube_config()


@kopf.on.create("kiln.dev", "v1alpha1", "modeloptimizations")
def create_job(name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{name}-optimize", "labels": {OWNER_LABEL: name}},
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": {OWNER_LABEL: name}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "optimize",
                            "image": JOB_IMAGE,
                            "args": ["run", "--plan", "/etc/kiln/plan.json"],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                },
            },
        },
    }
    kopf.adopt(job, owner=body)
    try:
        client.BatchV1Api().create_namespaced_job(namespace, job)
    except client.ApiException as error:
        if error.status != 409:  # created by an earlier try: done
            raise
