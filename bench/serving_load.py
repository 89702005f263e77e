"""Benchmark: Kiln-served SmolLM2 under concurrent load, measured as the speed gate measures it.

Starts `kiln run -f <file> --workdir <dir> --keep-serving` (FP8 PTQ of SmolLM2 on CPU, a real
tritonserver from the nvidia-pytriton wheel). The plan is published into `<dir>/artifacts`, so a
second run with the same workdir reuses it and only starts the server. Then the product's own
load test (`kiln_jobs.serving.loadtest`, what `evaluation.performance` and the speed gate run)
drives Triton's HTTP generate endpoint at each concurrency level: a closed loop of streamed
requests with a fixed prompt and `--max-tokens` new tokens. Per level it records requests/s,
output tokens/s, time to first token, inter-token latency and end-to-end latency, and the
highest level's throughput over the lowest's (does batching pay?). The OpenAI-compatible
endpoint is not measured: it translates each request onto the same Triton endpoint, and the
load test speaks only Triton's. kiln, Triton and its backend processes are stopped at the end,
also on failure, Ctrl-C or SIGTERM.

    .venv/bin/python -m bench.serving_load [-f examples/quickstart.yaml] \\
        [--concurrency 1 4 16] [--requests 32] [--per-worker 4] [--max-tokens 16] \\
        [--workdir kiln-runs/bench-serving-load] [--out bench/results]

Each level sends max(--requests, --per-worker x concurrency) requests. Writes
`<out>/serving-load-<UTC timestamp>.json`, `.md` and `.png` (throughput, time to first token and
end-to-end latency against concurrency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from kiln_jobs.serving.loadtest import LevelStats, measure

PROMPT = "The GNU General Public License is"
# What `kiln run --keep-serving` prints once it serves (kiln_jobs.local).
_TRITON_LINE = re.compile(r"^triton: http://(?P<http>\S+) \(gRPC (?P<grpc>\S+)\)")
_OPENAI_LINE = re.compile(r"^openai: (?P<url>\S+)")
_SERVING_LINE = re.compile(r"^serving model '(?P<model>[^']+)'")
_PUBLISHED_LINE = re.compile(r"^\s+published\s+(?P<dir>\S+)(?P<reused> \(reused\))?")
_RUNTIME_LINE = re.compile(r"^\s+runtime\s+(?P<runtime>\S+)")


@dataclass
class Served:
    """Where `kiln run` serves, as it printed it."""

    http_url: str = ""
    grpc_url: str = ""
    openai_url: str = ""
    model: str = ""
    publish_dir: str = ""
    runtime: str = ""
    reused: bool = False
    startup_seconds: float = 0.0


class KilnServing:
    """`kiln run --keep-serving` as a child process; stopping it stops everything it started."""

    def __init__(self, file: Path, workdir: Path, store: str | None, timeout: float) -> None:
        self.argv = [str(Path(sys.executable).with_name("kiln")), "run", "-f", str(file)]
        self.argv += ["--workdir", str(workdir), "--keep-serving"]
        self.argv += ["--store", store] if store else []
        self.log_path = workdir / "bench-kiln-run.log"
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Served:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with self.log_path.open("wb") as log:
            # Its own session: a Ctrl-C at the terminal reaches this benchmark only, which then
            # stops kiln in order (kiln stops Triton, Triton its backend stubs).
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            served = self._wait_serving()
        except BaseException:
            self.stop()  # `with` calls __exit__ only once __enter__ has returned
            raise
        served.startup_seconds = round(time.monotonic() - began, 1)
        return served

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_serving(self) -> Served:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            served = parse_served(self.log_path.read_text(errors="replace"))
            if served is not None:
                return served
            assert self.process is not None  # set by __enter__
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"kiln run exited with code {self.process.returncode}:\n{self._tail()}"
                )
            time.sleep(1.0)
        raise RuntimeError(f"kiln run was not serving after {self.timeout:.0f}s:\n{self._tail()}")

    def stop(self) -> None:
        """SIGTERM to kiln (while serving it treats it as Ctrl-C: stops Triton and exits); then
        kill whatever of its process tree is left."""
        import psutil

        if self.process is None:
            return
        process, self.process = self.process, None
        tree: list[Any] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = psutil.Process(process.pid).children(recursive=True)
        # Not SIGINT: a shell starts background jobs with SIGINT ignored, and kiln inherits that.
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            print("kiln run did not stop within 30 s; killing it", flush=True)
            process.kill()
            process.wait(timeout=10)
        _kill_survivors(tree)
        print(f"kiln run stopped (exit code {process.returncode})", flush=True)

    def _tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").replace("\r", "\n")
        return "\n".join(text.splitlines()[-lines:])


def _kill_survivors(tree: list[Any]) -> None:
    """Kill the processes kiln started (Triton, backend stubs) that outlived it, by pid."""
    import psutil

    alive = [p for p in tree if p.is_running()]
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, still = psutil.wait_procs(alive, timeout=10)
    for child in still:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    if alive:
        print(f"stopped {len(alive)} process(es) left behind by kiln run", flush=True)


def parse_served(log: str) -> Served | None:
    """The endpoints from `kiln run`'s output, once it printed the serving line; else None."""
    served = Served()
    for line in log.replace("\r", "\n").splitlines():
        if match := _PUBLISHED_LINE.match(line):
            served.publish_dir, served.reused = match["dir"], bool(match["reused"])
        elif match := _RUNTIME_LINE.match(line):
            served.runtime = match["runtime"]
        elif match := _TRITON_LINE.match(line):
            served.http_url, served.grpc_url = match["http"], match["grpc"]
        elif match := _OPENAI_LINE.match(line):
            served.openai_url = match["url"]
        elif match := _SERVING_LINE.match(line):
            served.model = match["model"]
    return served if served.model and served.http_url else None


def _levels(args: argparse.Namespace) -> dict[int, int]:
    return {c: max(args.requests, args.per_worker * c) for c in args.concurrency}


def drive(served: Served, args: argparse.Namespace) -> list[LevelStats]:
    """Warm the endpoint up (untimed), then run every level against it."""

    def run(concurrency: int, requests: int) -> LevelStats:
        # One level per call: the load test sends the same request count at every level, the
        # benchmark scales it with concurrency.
        [level] = measure(
            served.http_url, served.model, args.prompt, levels=[concurrency],
            requests=requests, max_tokens=args.max_tokens, timeout=args.request_timeout,
        )  # fmt: skip
        return level

    if args.warmup:
        run(1, args.warmup)
    levels = []
    for concurrency, requests in _levels(args).items():
        levels.append(run(concurrency, requests))
        print(levels[-1].summary(), flush=True)
    return levels


def scaling(levels: Sequence[LevelStats]) -> dict[str, Any]:
    """Throughput at the highest concurrency over throughput at the lowest."""
    ordered = sorted(levels, key=lambda level: level.concurrency)
    low, high = ordered[0], ordered[-1]
    return {
        "from_concurrency": low.concurrency,
        "to_concurrency": high.concurrency,
        "requests_per_second_ratio": _ratio(high.requests_per_second, low.requests_per_second),
        "tokens_per_second_ratio": _ratio(
            high.output_tokens_per_second, low.output_tokens_per_second
        ),
    }


def _ratio(high: float, low: float) -> float | None:
    return round(high / low, 3) if low else None


def _served_batch_size(publish_dir: str) -> Any:
    """`max_batch_size` from the served repository's model.yaml, to read the scaling against."""
    import yaml

    for path in sorted(Path(publish_dir).glob("**/model.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        if "max_batch_size" in config:
            return config["max_batch_size"]
    return None


def _markdown(result: dict[str, Any]) -> str:
    machine, served, ratio = result["machine"], result["served"], result["scaling"]
    lines = [
        f"SmolLM2-135M FP8 served by `kiln run` (runtime {served['runtime']}, model "
        f"'{served['model']}') on "
        f"{machine['cpus']} CPUs (load {machine['load']} at start, {machine['load_after']} at "
        f"end), {machine['date']}",
        "",
        f"Triton's HTTP generate endpoint, driven by `kiln_jobs.serving.loadtest`: prompt "
        f"{result['prompt']!r}, {result['max_tokens']} new tokens, streamed, closed loop; "
        f"model.yaml max_batch_size {result['server_max_batch_size']}; kiln run ready in "
        f"{served['startup_seconds']} s ({'reused plan' if served['reused'] else 'cold'}).",
        "",
        "| concurrency | requests | req/s | output tokens/s | TTFT p50 / p95 s | ITL p50 ms "
        "| latency p50 / p95 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in result["levels"]:
        itl = f"{lv['itl_p50'] * 1000:.1f}" if lv["itl_p50"] is not None else "n/a"
        lines.append(
            f"| {lv['concurrency']} | {lv['requests']} | {lv['requests_per_second']:.2f} | "
            f"{lv['output_tokens_per_second']:.1f} | "
            f"{lv['ttft_p50']:.3f} / {lv['ttft_p95']:.3f} | {itl} | "
            f"{lv['latency_p50']:.3f} / {lv['latency_p95']:.3f} |"
        )
    lines += [
        "",
        f"Throughput at concurrency {ratio['to_concurrency']} is "
        f"{ratio['requests_per_second_ratio']}x that at {ratio['from_concurrency']} "
        f"(output tokens/s {ratio['tokens_per_second_ratio']}x).",
    ]
    return "\n".join(lines) + "\n"


def _plot(levels: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [lv["concurrency"] for lv in levels]
    throughput.plot(xs, [lv["output_tokens_per_second"] for lv in levels], marker="o",
                    label="output tokens/s")  # fmt: skip
    for key, label in (("ttft_p50", "TTFT p50"), ("ttft_p95", "TTFT p95"),
                       ("latency_p95", "end-to-end p95")):  # fmt: skip
        latency.plot(xs, [lv[key] for lv in levels], marker="o", label=label)
    for ax, label in ((throughput, "output tokens/s"), (latency, "seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(c) for c in xs])
        ax.set_ylim(bottom=0)  # a flat line must look flat
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M FP8 on Kiln's CPU runtime, Triton generate (streamed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-f", "--file", type=Path, default=Path("examples/quickstart.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("kiln-runs/bench-serving-load"))
    parser.add_argument("--store", help="artifact store URI (default WORKDIR/artifacts)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per level, at least")
    parser.add_argument("--per-worker", type=int, default=4, help="requests per worker, at least")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests first")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--start-timeout", type=float, default=1800.0, help="for kiln run")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the `with`, which stops kiln run


def main() -> int:
    args = _parser().parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return bench(args)
    except KeyboardInterrupt:
        print("interrupted; kiln run and its servers are stopped", file=sys.stderr)
        return 130


def bench(args: argparse.Namespace) -> int:
    """Serve, drive every level, write the results."""
    machine = _machine()
    workdir = args.workdir.resolve()
    print(f"starting kiln run (log {workdir / 'bench-kiln-run.log'}) ...", flush=True)
    with KilnServing(args.file, workdir, args.store, args.start_timeout) as served:
        print(f"serving: {served}", flush=True)
        levels = drive(served, args)
    machine["load_after"] = round(os.getloadavg()[0], 2)
    result = {
        "machine": machine,
        "served": asdict(served),
        "server_max_batch_size": _served_batch_size(served.publish_dir),
        "prompt": args.prompt,
        "max_tokens": args.max_tokens,
        "levels": [asdict(level) for level in levels],
        "scaling": scaling(levels),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"serving-load-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(_markdown(result))
    _plot(result["levels"], stem.with_suffix(".png"))
    print(_markdown(result))
    print(f"wrote {stem}.json, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
