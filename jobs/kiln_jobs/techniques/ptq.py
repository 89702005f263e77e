"""Post-training quantization with Model Optimizer (`modelopt.torch.quantization`).

Each format's Model Optimizer config, calibration passes and the GPU generation it needs are in
`kiln_jobs.contract.FORMATS` (and the KV-cache configs, which quantize keys and values after
RoPE, in `KV_CACHES`). What the algorithms are and what the exporter writes as `quant_algo`:

| format     | algorithm                  | exported `quant_algo` |
|------------|----------------------------|-----------------------|
| `fp8`      | max calibration            | `FP8`                 |
| `int8_sq`  | SmoothQuant                | `W8A8_SQ_PER_CHANNEL` |
| `int4_awq` | AWQ-lite, weight-only      | `W4A16_AWQ`           |
| `w4a8_awq` | AWQ-lite, FP8 activations  | `W4A8_AWQ`            |
| `nvfp4`    | max calibration            | `NVFP4`               |

`PTQPlan.algorithm` swaps the format's calibration algorithm for another Model Optimizer offers
for it (`contract.FORMATS[...].algorithms`: MSE for FP8 and NVFP4, a SmoothQuant strength
search for INT8, AWQ-clip or full AWQ for the 4-bit formats); `keep_sensitive_layers` leaves
the first and last transformer blocks unquantized. The escalation ladder uses both.

AWQ formats quantize weights in blocks along the input dimension, and the exporter packs only
whole blocks: the block size must divide every quantized layer's input width (SmolLM2's 576
rules out 128). With no block size in the Plan the largest of 128, 64 and 32 that fits is taken;
a block size that does not fit is refused before calibration.

Formats the accelerator cannot run are refused by `preflight` before any model is loaded.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from typing import Any

import modelopt.torch.quantization as mtq
import torch
from modelopt.torch.quantization.utils.core_utils import update_quant_cfg_with_kv_cache_quant

from kiln_jobs import hardware
from kiln_jobs.contract import AWQ_BLOCK_SIZES, format_spec, kv_cache_spec
from kiln_jobs.errors import UnsupportedHardware, UserError
from kiln_jobs.evaluate import perplexity
from kiln_jobs.plan import PTQPlan
from kiln_jobs.sources.data import blocks_digest
from kiln_jobs.techniques.context import TechniqueContext, TechniqueOutcome

__all__ = [
    "build_config",
    "preflight",
    "resolve_block_size",
    "run",
]

log = logging.getLogger(__name__)


def preflight(spec: PTQPlan, accelerator: hardware.Accelerator) -> None:
    """Refuse, before any work, a format this accelerator cannot produce or serve."""
    problem = hardware.format_problem(spec.format, spec.kv_cache, accelerator)
    if problem:
        raise UnsupportedHardware(f"ptq: {problem}")


# SmoothQuant migration strengths `smoothquant_search` tries (1.0 is INT8_SMOOTHQUANT_CFG's).
SMOOTHQUANT_ALPHAS: tuple[float, ...] = (0.5, 0.65, 0.8, 0.9, 1.0)


def run(ctx: TechniqueContext, spec: PTQPlan) -> TechniqueOutcome:
    """Calibrate and fake-quantize `ctx.model` (in place, unless a search tries several)."""
    preflight(spec, hardware.detect())
    fmt = format_spec(spec.format)
    sensitive = sensitive_blocks(ctx.model) if spec.keep_sensitive_layers else ()
    block_size = resolve_block_size(ctx.model, spec, sensitive) if fmt.awq else None
    blocks = ctx.token_blocks(spec.calibration, "calibration")
    calibrate = _Calibration(ctx, spec, blocks, fmt.calibration_passes)
    metrics: dict[str, float | int | str] = {
        "calibration_samples": len(blocks),
        "calibration_tokens": blocks.numel(),
        "algorithm": spec.algorithm or fmt.default_algorithm,
    }
    ctx.model.eval()
    if spec.algorithm == "smoothquant_search":
        model, alpha = _search_smoothquant_alpha(ctx, spec, calibrate, sensitive)
        metrics["smoothquant_alpha"] = alpha
    else:
        model = calibrate(ctx.model, build_config(spec, block_size, sensitive=sensitive))
    ctx.progress(100.0, f"{spec.format} calibrated on {len(blocks)} sequences")
    checkpoint: dict[str, Any] = {"calibration_digest": blocks_digest(blocks)}
    if block_size is not None:
        checkpoint["group_size"] = block_size
        metrics["block_size"] = block_size
    if sensitive:
        metrics["unquantized_blocks"] = ",".join(sensitive)
    return TechniqueOutcome(model=model, metrics=metrics, checkpoint=checkpoint)


class _Calibration:
    """`mtq.quantize` over the calibration blocks, reporting progress across every call."""

    def __init__(
        self, ctx: TechniqueContext, spec: PTQPlan, blocks: torch.Tensor, passes: int
    ) -> None:
        self.ctx, self.spec, self.blocks = ctx, spec, blocks
        searches = len(SMOOTHQUANT_ALPHAS) if spec.algorithm == "smoothquant_search" else 1
        self.total = passes * len(blocks) * searches
        self.done = 0

    def __call__(self, model: Any, config: dict[str, Any]) -> Any:
        device = next(model.parameters()).device

        def forward_loop(model: Any) -> None:
            with torch.no_grad():
                for row in self.blocks:
                    model(input_ids=row[None].to(device))
                    self.done += 1
                    percent = min(99.0, 100.0 * self.done / self.total)
                    self.ctx.progress(
                        percent, f"calibrating {self.spec.format}: {self.done} sequences"
                    )

        return mtq.quantize(model, config, forward_loop)

    def perplexity(self, model: Any) -> float:
        """Perplexity on the calibration blocks (never the evaluation text), each block its own
        window, with the evaluator every gate uses."""
        length = self.blocks.shape[1]
        return perplexity(model, self.blocks.flatten(), seq_length=length, stride=length)


def _search_smoothquant_alpha(
    ctx: TechniqueContext, spec: PTQPlan, calibrate: _Calibration, sensitive: tuple[str, ...]
) -> tuple[Any, float]:
    """SmoothQuant at each of `SMOOTHQUANT_ALPHAS` on a copy of the model; the one with the
    lowest perplexity on the calibration text wins. The best strength depends on the model's
    activation outliers (SmolLM2-135M: perplexity +3 % at 0.8, +19-22 % at the config's 1.0);
    choosing it needs enough calibration text (on 4 x 128 tokens it picks 0.9)."""
    best: tuple[float, float, Any] | None = None
    for alpha in SMOOTHQUANT_ALPHAS:
        candidate = calibrate(
            copy.deepcopy(ctx.model), build_config(spec, sensitive=sensitive, alpha=alpha)
        )
        measured = calibrate.perplexity(candidate)
        log.info("ptq: SmoothQuant alpha %.2f: calibration perplexity %.4f", alpha, measured)
        if best is None or measured < best[0]:
            best = (measured, alpha, candidate)
        del candidate
    assert best is not None
    log.info("ptq: SmoothQuant alpha %.2f chosen", best[1])
    return best[2], best[1]


def sensitive_blocks(model: torch.nn.Module) -> tuple[str, ...]:
    """The first and last transformer blocks: the longest ModuleList's ends, by module name."""
    lists = [
        (len(module), name)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) >= 2
    ]
    if not lists:
        raise UserError("ptq: keep_sensitive_layers needs a model built of transformer blocks")
    length, name = max(lists)
    if length < 3:
        raise UserError(
            f"ptq: keep_sensitive_layers keeps the first and last of {length} transformer "
            "blocks, which leaves none to quantize"
        )
    return (f"{name}.0", f"{name}.{length - 1}")


def build_config(
    spec: PTQPlan,
    block_size: int | None = None,
    *,
    sensitive: tuple[str, ...] = (),
    alpha: float | None = None,
) -> dict[str, Any]:
    """The Model Optimizer quantization config for a PTQ plan; `sensitive` names modules kept
    unquantized besides the plan's exclusions, `alpha` is SmoothQuant's strength."""
    fmt = format_spec(spec.format)
    config = copy.deepcopy(getattr(mtq, fmt.modelopt_config))
    if block_size is not None:
        for entry in config["quant_cfg"]:
            if entry.get("quantizer_name") == "*weight_quantizer":
                for part in _parts(entry.get("cfg")):
                    if "block_sizes" in part:
                        part["block_sizes"] = {**part["block_sizes"], -1: block_size}
    config["quant_cfg"] = list(config["quant_cfg"]) + [
        {"quantizer_name": _quantizer_pattern(p), "enable": False}
        for p in (*spec.exclude_modules, *sensitive)
    ]
    algorithm = spec.algorithm or fmt.default_algorithm
    if algorithm == "smoothquant_search" or alpha is not None:
        config["algorithm"] = {"method": "smoothquant", "alpha": alpha or 1.0}
    elif algorithm != fmt.default_algorithm:
        # AWQ's search grid stays the one its configs use.
        awq = algorithm.startswith("awq") and algorithm != "awq_clip"
        config["algorithm"] = {"method": algorithm, "alpha_step": 0.1} if awq else algorithm
    kv_config = kv_cache_spec(spec.kv_cache).modelopt_config
    if kv_config is not None:
        kv = getattr(mtq, kv_config)
        config = update_quant_cfg_with_kv_cache_quant(config, kv["quant_cfg"])
    return config


def resolve_block_size(
    model: torch.nn.Module, spec: PTQPlan, sensitive: tuple[str, ...] = ()
) -> int:
    """The AWQ block size: the Plan's if it divides every quantized input width, else refused;
    with none in the Plan, the largest of `AWQ_BLOCK_SIZES` that does."""
    widths = _quantized_input_widths(model, spec, sensitive)
    if not widths:
        raise UserError("ptq: no Linear layer is left to quantize after exclude_modules")
    if spec.block_size is not None:
        misfits = {name: w for name, w in widths.items() if w % spec.block_size}
        if misfits:
            name, width = next(iter(misfits.items()))
            fitting = [b for b in AWQ_BLOCK_SIZES if all(w % b == 0 for w in widths.values())]
            hint = f"use block_size {fitting[0]}" if fitting else "exclude those layers"
            raise UserError(
                f"ptq: block_size {spec.block_size} does not divide the input width {width} of "
                f"{name} ({len(misfits)} layers); partial blocks cannot be exported: {hint}"
            )
        return spec.block_size
    for size in AWQ_BLOCK_SIZES:
        if all(width % size == 0 for width in widths.values()):
            if size != AWQ_BLOCK_SIZES[0]:
                log.info("ptq: AWQ block size %d (divides every quantized input width)", size)
            return size
    odd = sorted(set(widths.values()))
    raise UserError(
        f"ptq: no AWQ block size among {AWQ_BLOCK_SIZES} divides the input widths {odd}; "
        "set block_size explicitly or exclude those layers"
    )


def _quantized_input_widths(
    model: torch.nn.Module, spec: PTQPlan, sensitive: tuple[str, ...]
) -> dict[str, int]:
    """Input width of every Linear the config quantizes, by module name."""
    config = build_config(spec.model_copy(update={"kv_cache": "none"}), sensitive=sensitive)
    disabled = [
        entry["quantizer_name"]
        for entry in config["quant_cfg"]
        if entry.get("enable") is False
        and "parent_class" not in entry
        and entry["quantizer_name"] != "*"
    ]
    return {
        name: module.in_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not any(fnmatch.fnmatch(f"{name}.weight_quantizer", p) for p in disabled)
    }


def _quantizer_pattern(module_pattern: str) -> str:
    """A module-name glob as a quantizer-name glob (quantizers live under their module)."""
    return module_pattern if module_pattern.endswith("*") else f"{module_pattern}.*"


def _parts(cfg: Any) -> list[dict[str, Any]]:
    if isinstance(cfg, dict):
        return [cfg]
    return [part for part in cfg or [] if isinstance(part, dict)]
