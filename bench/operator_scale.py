"""Benchmark: Kiln's operator against the smallest controller a user could write instead.

On the test cluster (real kube-apiserver, controllers and scheduler; kwok nodes, one of them a
GPU node big enough for every pod), for each resource count N:

1. **The peer** (`bench/peers/bare_kopf.py`, one kopf handler that creates a Job): apply N
   ModelOptimizations at once, measure each one's latency from the resource's arrival to its
   Job's arrival, as a watch on the API server sees both.
2. **Kiln** (`kiln operator`, production settings, no debug logging): the same N resources
   (distinct recipes, so each gets its own plan and Job) and the same latency; then the time
   until every one is Ready (the test-only runner stand-in publishes each plan, kwok readies
   Triton), the operator's peak RSS, reconciles per resource (its metrics), the API requests it
   made while converging and per minute while nothing changes (each controller runs as its own
   ServiceAccount; the API server's audit log counts its requests, not the operator itself), and a
   cached re-apply: a new resource with an existing recipe, which must be Ready with no Job.

    .venv/bin/python -m bench.operator_scale [--counts 100 500 2000] [--idle-seconds 60] \\
        [--no-peer] [--profile]
    .venv/bin/python -m bench.operator_scale --combine RESULT.json... # one table and plot

Writes bench/results/operator-scale-<time>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from tests.cluster.kube import REPO_ROOT, Cluster
from tests.cluster.procs import free_port
from tests.integration.operator.harness import OperatorProcess, mopt
from tests.integration.operator.runner_standin import RunnerStandIn

OWNER_LABEL = "kiln.dev/model-optimization"
GROUP, VERSION, PLURAL = "kiln.dev", "v1alpha1", "modeloptimizations"
# Each controller runs as its own ServiceAccount in this namespace.
IDENTITY_NAMESPACE = "bench"
CONTROLLERS = ("kiln", "peer")


@dataclass
class SideResult:
    """One controller's numbers at one resource count."""

    controller: str
    resources: int
    jobs_seen: int = 0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    # How long creating the resources took: both controllers share the cores with the creator.
    seconds_to_create: float | None = None
    seconds_to_all_jobs: float | None = None
    seconds_to_all_ready: float | None = None
    busy_seconds_after_ready: float | None = None
    ready: int = 0
    peak_rss_mb: float | None = None
    api_requests_converging: int = 0
    api_requests_per_resource: float = 0.0
    idle_api_requests_per_minute: float | None = None
    reconciles_per_resource: float | None = None
    mean_reconcile_ms: float | None = None
    cached_seconds_to_ready: float | None = None
    cached_new_jobs: int | None = None
    profile: dict[str, Any] | None = None
    converging_requests: dict[str, int] = field(default_factory=dict)
    idle_requests: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Arrivals:
    """When each resource was created (its create call returned) and when its Job first
    appeared on a watch of the namespace."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.api_client = cluster.api_client()
        self.namespace = namespace
        self.resources: dict[str, float] = {}
        self.jobs: dict[str, float] = {}
        self._watches: list[watch.Watch] = []
        self._stopped = False
        self._threads = [threading.Thread(target=self._watch_jobs, daemon=True)]

    def __enter__(self) -> Arrivals:
        for thread in self._threads:
            thread.start()
        time.sleep(1)  # the watch is open before anything is created
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped = True
        for stream in self._watches:
            stream.stop()

    def _stream(self, list_call: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]:
        stream = watch.Watch()
        self._watches.append(stream)
        try:
            for event in stream.stream(list_call, **kwargs, timeout_seconds=3600):
                if event["type"] == "ADDED":
                    yield event["raw_object"]
        except Exception:  # the connection closes under a stopped watch
            if not self._stopped:
                raise

    def _watch_jobs(self) -> None:
        batch = client.BatchV1Api(self.api_client)
        for job in self._stream(batch.list_namespaced_job, namespace=self.namespace):
            owner = (job["metadata"].get("labels") or {}).get(OWNER_LABEL)
            if owner:
                self.jobs.setdefault(owner, time.monotonic())

    def latencies(self) -> list[float]:
        return sorted(
            self.jobs[name] - seen for name, seen in self.resources.items() if name in self.jobs
        )


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(fraction * len(values)))], 3)


def _wait(what: str, done: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not reached in {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def _user(controller: str) -> str:
    return f"system:serviceaccount:{IDENTITY_NAMESPACE}:{controller}"


# The API server logs one event per answered request (a watch when it ends) of the controllers
# under test, and nothing else: the bench's own requests and the cluster's are not counted.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "Metadata", "users": [_user(c) for c in CONTROLLERS]},
        {"level": "None"},
    ],
}


class AuditedRequests:
    """The requests one controller made, counted in the API server's audit log."""

    def __init__(self, audit_log: Path, controller: str) -> None:
        self.audit_log, self.user = audit_log, _user(controller)
        self._offset = 0
        self.seen: list[str] = []  # "verb resource" of each request, in order

    @property
    def hits(self) -> int:
        self._read_new()
        return len(self.seen)

    def since(self, mark: int) -> dict[str, int]:
        """The requests after the `mark`-th, by verb and resource."""
        self._read_new()
        return dict(Counter(self.seen[mark:]).most_common())

    def _read_new(self) -> None:
        with self.audit_log.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            event = json.loads(line)
            if event.get("user", {}).get("username") == self.user:
                what = event.get("objectRef") or {}
                self.seen.append(f"{event.get('verb')} {what.get('resource', '?')}")


def controller_identities(cluster: Cluster, workdir: Path) -> dict[str, Path]:
    """A ServiceAccount per controller (cluster-admin: both sides get the same rights), and a
    kubeconfig with its token, so the audit log tells their requests apart."""
    cluster.kubectl("create", "namespace", IDENTITY_NAMESPACE)
    kubeconfigs = {}
    for controller in CONTROLLERS:
        cluster.kubectl("create", "serviceaccount", controller, "-n", IDENTITY_NAMESPACE)
        cluster.kubectl(
            "create", "clusterrolebinding", f"bench-{controller}", "--clusterrole=cluster-admin",
            f"--serviceaccount={IDENTITY_NAMESPACE}:{controller}",
        )  # fmt: skip
        token = cluster.sa_token(IDENTITY_NAMESPACE, controller, expiration=12 * 3600)
        kubeconfigs[controller] = cluster.kubeconfig_for_token(
            token, workdir / f"{controller}.kubeconfig"
        )
    return kubeconfigs


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest RSS a process reached, sampled every half second."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak = max(self.peak, _rss_mb(self.pid))
            except OSError:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2)
        return round(self.peak, 1)


class Profile:
    """py-spy sampling every thread of a running process into collapsed stacks (`--profile`)."""

    def __init__(self, pid: int, path: Path) -> None:
        self.path = path
        self._proc = subprocess.Popen(
            # --gil: the samples of the thread holding the GIL, i.e. Python at work.
            [str(REPO_ROOT / ".venv/bin/py-spy"), "record", "--pid", str(pid), "--rate", "50",
             "--gil", "--format", "raw", "--output", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the functions that held the CPU longest, inclusive and self."""
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(60)
        return summarize_profile(self.path.read_text() if self.path.exists() else "")


# Frames that are the process waiting, not working (idle threads sit in these).
_IDLE_FRAMES = ("select (selectors.py", "wait (threading.py", "_worker (concurrent/futures")


def summarize_profile(folded: str, top: int = 25) -> dict[str, Any]:
    """Inclusive and self sample shares per function from py-spy's collapsed stacks, idle
    stacks left out."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    busy = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or any(frames[-1].startswith(idle) for idle in _IDLE_FRAMES):
            continue
        count = int(count_text)
        busy += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [(frame, round(100 * n / max(busy, 1), 1)) for frame, n in best]

    return {
        "busy_samples": busy,
        "inclusive_percent": ranked(inclusive),
        "self_percent": ranked(own),
    }


def _resources(count: int, namespace: str) -> list[dict[str, Any]]:
    """N resources with distinct recipes (so each has its own plan and Job)."""
    bodies = []
    for index in range(count):
        body = mopt(
            f"m{index:04d}",
            engine={"backend": "none"},
            evaluation={"data": {"samples": index + 1}},
        )
        body["metadata"]["namespace"] = namespace
        bodies.append(body)
    return bodies


def _create(cluster: Cluster, bodies: list[dict[str, Any]], arrivals: Arrivals) -> None:
    """Create the resources one by one, as fast as the API server takes them, noting when
    each create returned (the start of its latency)."""
    custom = client.CustomObjectsApi(arrivals.api_client)
    for body in bodies:
        custom.create_namespaced_custom_object(GROUP, VERSION, arrivals.namespace, PLURAL, body)
        arrivals.resources[body["metadata"]["name"]] = time.monotonic()


def _ready_names(cluster: Cluster, namespace: str) -> set[str]:
    items = json.loads(cluster.kubectl("get", "mopt", "-n", namespace, "-o", "json").stdout)
    return {
        item["metadata"]["name"]
        for item in items["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (item.get("status") or {}).get("conditions") or []
        )
    }


def _job_count(cluster: Cluster, namespace: str) -> int:
    out = cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout
    return len(out.split())


def run_peer(cluster: Cluster, count: int, workdir: Path, kubeconfig: Path) -> SideResult:
    namespace = f"peer-{count}"
    cluster.kubectl("create", "namespace", namespace)
    result = SideResult("bare kopf peer", count)
    requests = AuditedRequests(cluster.audit_log, "peer")
    peer = subprocess.Popen(
        ["setpriv", "--pdeathsig", "SIGKILL", "--",
         str(REPO_ROOT / ".venv/bin/kopf"), "run", "--standalone", "--namespace", namespace,
         str(REPO_ROOT / "bench/peers/bare_kopf.py")],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=(workdir / f"peer-{count}.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    rss = PeakRss(peer.pid)
    try:
        time.sleep(3)  # kopf starts its watches
        with Arrivals(cluster, namespace) as arrivals:
            before = requests.hits
            started = time.monotonic()
            _create(cluster, _resources(count, namespace), arrivals)
            result.seconds_to_create = round(time.monotonic() - started, 1)
            _wait("every peer Job", lambda: len(arrivals.jobs) >= count, 1800)
            result.seconds_to_all_jobs = round(time.monotonic() - started, 1)
            result.api_requests_converging = requests.hits - before
            result.converging_requests = requests.since(before)
        _record_latencies(result, arrivals)
    finally:
        result.peak_rss_mb = rss.stop()
        peer.terminate()
        peer.wait(20)
    result.api_requests_per_resource = round(result.api_requests_converging / count, 2)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    return result


def _record_latencies(result: SideResult, arrivals: Arrivals) -> None:
    latencies = arrivals.latencies()
    result.jobs_seen = len(latencies)
    result.latency_p50_s = _percentile(latencies, 0.5)
    result.latency_p95_s = _percentile(latencies, 0.95)


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def run_kiln(
    cluster: Cluster,
    count: int,
    workdir: Path,
    kubeconfig: Path,
    idle_seconds: float,
    profiled: bool = False,
) -> SideResult:
    namespace = f"kiln-{count}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.create_bound_pvc(namespace, "artifacts")
    result = SideResult("kiln", count)
    port = free_port()
    requests = AuditedRequests(cluster.audit_log, "kiln")
    operator = OperatorProcess(
        cluster, workdir, args=("--standalone",), metrics_port=str(port),
        poll_seconds="10", namespaces=namespace,
    )  # fmt: skip
    operator.env["KUBECONFIG"] = str(kubeconfig)
    operator.start()
    assert operator.proc is not None
    rss = PeakRss(operator.proc.pid)
    profile = (
        Profile(operator.proc.pid, Path(tempfile.gettempdir()) / f"kiln-operator-{count}.folded")
        if profiled
        else None
    )
    try:
        time.sleep(5)  # kopf starts its watches
        bodies = _resources(count, namespace)
        with Arrivals(cluster, namespace) as arrivals:
            before = requests.hits
            started = time.monotonic()
            _create(cluster, bodies, arrivals)
            result.seconds_to_create = round(time.monotonic() - started, 1)
            _wait("every Kiln Job", lambda: len(arrivals.jobs) >= count, 3600)
            result.seconds_to_all_jobs = round(time.monotonic() - started, 1)
            _wait(
                "every resource Ready",
                lambda: len(_ready_names(cluster, namespace)) >= count,
                3600,
            )
            result.seconds_to_all_ready = round(time.monotonic() - started, 1)
        if profile is not None:
            result.profile = profile.stop()
            profile = None
        _record_latencies(result, arrivals)
        result.ready = len(_ready_names(cluster, namespace))
        result.busy_seconds_after_ready = _quiet_after(requests)
        result.api_requests_converging = requests.hits - before
        result.converging_requests = requests.since(before)
        result.api_requests_per_resource = round(result.api_requests_converging / count, 2)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        reconciles = _metric(metrics, "kiln_reconciles_total")
        result.reconciles_per_resource = round(reconciles / count, 2)
        seconds = _metric(metrics, "kiln_reconcile_seconds_sum")
        result.mean_reconcile_ms = round(1000 * seconds / max(reconciles, 1.0), 1)
        result.idle_api_requests_per_minute = _idle_requests(requests, idle_seconds, result)
        _cached_reapply(cluster, namespace, bodies[0], result)
    finally:
        result.peak_rss_mb = rss.stop()
        if profile is not None:
            profile.stop()
        operator.stop()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    return result


def _quiet_after(requests: AuditedRequests, timeout: float = 600.0) -> float:
    """Seconds until the operator makes no request for 5 s: the events of the convergence
    are worked off (a watch shows the resources Ready before that)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = requests.hits
        time.sleep(5)
        if requests.hits == before:
            return round(time.monotonic() - started - 5, 1)
    return round(timeout, 1)


def _idle_requests(requests: AuditedRequests, seconds: float, result: SideResult) -> float:
    """Requests per minute while nothing changes (a watch counts when it ends and reopens)."""
    before = requests.hits
    time.sleep(seconds)
    result.idle_requests = requests.since(before)
    return round((requests.hits - before) * 60 / seconds, 1)


def _cached_reapply(
    cluster: Cluster, namespace: str, body: dict[str, Any], result: SideResult
) -> None:
    """A new resource with a recipe that is already published: Ready, and no Job."""
    jobs_before = _job_count(cluster, namespace)
    again = json.loads(json.dumps(body))
    again["metadata"]["name"] = "cached"
    started = time.monotonic()
    cluster.apply(again, namespace=namespace)
    _wait("the cached resource Ready", lambda: "cached" in _ready_names(cluster, namespace), 300)
    result.cached_seconds_to_ready = round(time.monotonic() - started, 1)
    result.cached_new_jobs = _job_count(cluster, namespace) - jobs_before


def _table(results: list[SideResult]) -> str:
    header = (
        "| N | controller | job latency p50 / p95 | all created | all Jobs | all Ready | peak RSS "
        "| API requests / resource | idle requests / min | reconciles / resource "
        "| cached re-apply |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        cached = (
            f"Ready in {r.cached_seconds_to_ready} s, {r.cached_new_jobs} new Jobs"
            if r.cached_seconds_to_ready is not None
            else "—"
        )
        idle = "—" if r.idle_api_requests_per_minute is None else r.idle_api_requests_per_minute
        rows.append(
            f"| {r.resources} | {r.controller} | {r.latency_p50_s} / {r.latency_p95_s} s | "
            f"{r.seconds_to_create} s | {r.seconds_to_all_jobs} s | "
            f"{r.seconds_to_all_ready or '—'} s | {r.peak_rss_mb} MB | "
            f"{r.api_requests_per_resource} | {idle} | {r.reconciles_per_resource or '—'} | "
            f"{cached} |"
        )
    return header + "\n".join(rows) + "\n"


def _requests(results: list[SideResult]) -> str:
    """What each controller asked the API server, per resource, while converging and idle."""
    text = "\n"
    for r in results:
        converging = ", ".join(
            f"{what} {count / r.resources:.2f}" for what, count in r.converging_requests.items()
        )
        text += f"- {r.controller} at {r.resources}, requests per resource: {converging}\n"
        if r.idle_requests:
            idle = ", ".join(f"{what} {count}" for what, count in r.idle_requests.items())
            text += f"  - while idle: {idle}\n"
    return text


def _profiles(results: list[SideResult], top: int = 15) -> str:
    """Where the operator's busy CPU samples went, per resource count (with `--profile`)."""
    text = ""
    for r in results:
        if not r.profile:
            continue
        text += (
            f"\nKiln at {r.resources} resources, {r.profile['busy_samples']} busy samples "
            "(py-spy, 50/s, every thread): share of busy samples\n\n"
            "| function (inclusive) | % | function (self) | % |\n|---|---|---|---|\n"
        )
        pairs = zip(
            r.profile["inclusive_percent"][:top], r.profile["self_percent"][:top], strict=False
        )
        for (inclusive, i_share), (own, o_share) in pairs:
            text += f"| `{inclusive}` | {i_share} | `{own}` | {o_share} |\n"
    return text


def _ratios(results: list[SideResult]) -> dict[str, float | None]:
    by = {(r.controller, r.resources): r for r in results}
    ratios: dict[str, float | None] = {}
    for (controller, count), kiln in by.items():
        peer = by.get(("bare kopf peer", count))
        if controller == "kiln" and peer and kiln.latency_p50_s and peer.latency_p50_s:
            ratios[str(count)] = round(kiln.latency_p50_s / peer.latency_p50_s, 2)
    return ratios


def _plot(results: list[SideResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for controller in ("bare kopf peer", "kiln"):
        rows = [r for r in results if r.controller == controller]
        counts = [r.resources for r in rows]
        axes[0].plot(counts, [r.latency_p50_s for r in rows], "o-", label=f"{controller} p50")
        axes[0].plot(counts, [r.latency_p95_s for r in rows], "x--", label=f"{controller} p95")
        axes[2].plot(counts, [r.peak_rss_mb for r in rows], "o-", label=controller)
    kiln = [r for r in results if r.controller == "kiln"]
    axes[1].plot(
        [r.resources for r in kiln], [r.seconds_to_all_ready for r in kiln], "o-", label="all Ready"
    )
    axes[1].plot(
        [r.resources for r in kiln], [r.seconds_to_all_jobs for r in kiln], "x--", label="all Jobs"
    )
    titles = ("resource → Job latency (s)", "Kiln: seconds until", "peak RSS (MB)")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title)
        axis.set_xlabel("resources")
        axis.set_xscale("log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so every process and the cluster are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--no-peer", action="store_true", help="measure Kiln only")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the operator with py-spy until every resource is Ready (slows it down)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: one table and plot from earlier results (e.g. 2000 run apart)",
    )
    args = parser.parse_args()
    if args.combine:
        return write_results(combined(args.combine), args.out, sources=args.combine)
    return write_results(measure(args), args.out)


def combined(paths: list[Path]) -> list[SideResult]:
    """The results of earlier runs, by resource count."""
    results = [
        SideResult(**row) for path in paths for row in json.loads(path.read_text())["results"]
    ]
    return sorted(results, key=lambda r: (r.resources, r.controller != "bare kopf peer"))


def measure(args: argparse.Namespace) -> list[SideResult]:
    results: list[SideResult] = []
    with Cluster(audit_policy=AUDIT_POLICY) as cluster, tempfile.TemporaryDirectory() as scratch:
        kubeconfigs = controller_identities(cluster, Path(scratch))
        # One GPU node that fits every pod: the subject is the controllers, not capacity.
        cluster.add_node(
            "gpu-bench", gpu="H100", gpus=100_000, pods="100000", cpu="100000", memory="1000Ti"
        )
        standin = RunnerStandIn(cluster).start()
        try:
            for count in args.counts:
                if not args.no_peer:
                    results.append(run_peer(cluster, count, Path(scratch), kubeconfigs["peer"]))
                    print(json.dumps(asdict(results[-1])), flush=True)
                results.append(
                    run_kiln(
                        cluster,
                        count,
                        Path(scratch),
                        kubeconfigs["kiln"],
                        args.idle_seconds,
                        profiled=args.profile,
                    )
                )
                print(json.dumps(asdict(results[-1])), flush=True)
        finally:
            standin.stop()
    return results


def write_results(results: list[SideResult], out: Path, sources: list[Path] | None = None) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "combined_from": [str(path) for path in sources or []],
        "kiln_p50_over_peer_p50": _ratios(results),
        "results": [asdict(r) for r in results],
    }
    base = out / f"operator-scale-{stamp}"
    origin = f", combined from {', '.join(p.name for p in sources)}" if sources else ""
    base.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    base.with_suffix(".md").write_text(
        f"Operator vs bare kopf peer, {summary['date']}, {summary['cpus']} CPUs{origin}\n\n"
        + _table(results)
        + f"\nKiln p50 / peer p50: {summary['kiln_p50_over_peer_p50']}\n"
        + _requests(results)
        + _profiles(results)
    )
    _plot(results, base.with_suffix(".png"))
    print(base.with_suffix(".md").read_text())
    print(f"wrote {base}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
