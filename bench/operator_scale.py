"""Benchmark: how fast the operator converges many ModelOptimizations on the test cluster.

Starts the real control plane with kwok GPU nodes (as the tests do), runs `kiln operator`, applies
N resources at once (kwok completes their Jobs and readies their Triton pods), and measures the
time until every one is Ready, plus the operator's reconcile counts and latency from its
Prometheus metrics.

    .venv/bin/python -m bench.operator_scale [--count 50] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from tests.cluster.kube import Cluster
from tests.integration.operator.harness import OperatorProcess, mopt


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready_count(cluster: Cluster, namespace: str) -> int:
    out = cluster.kubectl("get", "mopt", "-n", namespace, "-o", "json").stdout
    items = json.loads(out)["items"]
    return sum(
        1 for item in items
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in (item.get("status") or {}).get("conditions") or [])
    )  # fmt: skip


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    port = _free_port()
    with Cluster() as cluster, tempfile.TemporaryDirectory() as scratch:
        namespace = "bench"
        cluster.kubectl("create", "namespace", namespace)
        cluster.create_bound_pvc(namespace, "artifacts")
        operator = OperatorProcess(
            cluster, Path(scratch), metrics_port=str(port), poll_seconds="2"
        ).start()
        try:
            # Triton on CPU (backend none): the point is the operator, not GPU capacity.
            bodies = [mopt(f"m{i:03d}", engine={"backend": "none"}) for i in range(args.count)]
            started = time.monotonic()
            cluster.apply(*bodies, namespace=namespace)
            ready = 0
            while ready < args.count and time.monotonic() - started < 1800:
                time.sleep(2)
                ready = _ready_count(cluster, namespace)
            seconds = time.monotonic() - started
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        finally:
            operator.stop()
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "resources": args.count,
        "ready": ready,
        "seconds_to_all_ready": round(seconds, 1),
        "reconciles": _metric(metrics, "kiln_reconciles_total"),
        "reconcile_seconds_sum": round(_metric(metrics, "kiln_reconcile_seconds_sum"), 2),
        "reconcile_errors": _metric(metrics, "kiln_reconcile_errors_total"),
    }
    result["mean_reconcile_ms"] = round(
        1000 * result["reconcile_seconds_sum"] / max(1.0, result["reconciles"]), 1
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"operator-scale-{datetime.now(UTC).strftime('%Y%m%d-%H%M')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0 if ready == args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
