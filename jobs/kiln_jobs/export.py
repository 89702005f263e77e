"""Export: Model Optimizer's unified HF checkpoint, and the legacy TensorRT-LLM one on request.

The unified HF checkpoint (`export_hf_checkpoint`) is always written: `config.json` with a
`quantization_config`, `hf_quant_config.json` (quantization algorithm, KV-cache algorithm, group
size, excluded modules), safetensors with the quantized weights and their scales, and the
tokenizer. TensorRT-LLM's LLM-API backend, vLLM and SGLang load it directly; Kiln's CPU serving
path reads it too. It is written in the dtype the model was optimized and evaluated in.

The legacy TensorRT-LLM checkpoint (`export_tensorrt_llm_checkpoint`: `config.json` +
`rank<N>.safetensors`) is what `trtllm-build` reads; it is written only when the Plan asks for it
(`export.tensorrt_llm_checkpoint`), with the Plan's tensor and pipeline parallelism.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from modelopt.torch.export import export_hf_checkpoint, export_tensorrt_llm_checkpoint
from modelopt.torch.export.model_utils import get_model_type

from kiln_jobs.errors import UserError
from kiln_jobs.plan import EnginePlan

__all__ = ["checkpoint_facts", "export_hf", "export_tensorrt_llm"]

log = logging.getLogger(__name__)

HF_QUANT_CONFIG = "hf_quant_config.json"


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (its first floating parameter's)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def export_hf(model: Any, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    """Write the unified HF checkpoint and the tokenizer into `out_dir`.

    Returns:
        What the checkpoint is (see `checkpoint_facts`).
    """
    # The exporter iterates config.architectures; a GGUF-loaded config has None.
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]
    out_dir.mkdir(parents=True, exist_ok=True)
    export_hf_checkpoint(model, dtype=model_dtype(model), export_dir=out_dir)
    tokenizer.save_pretrained(out_dir)
    return checkpoint_facts(out_dir)


def checkpoint_facts(checkpoint_dir: Path) -> dict[str, Any]:
    """quant_algo, kv_cache_quant_algo and group_size as the exported checkpoint states them
    (all None for an unquantized checkpoint)."""
    path = checkpoint_dir / HF_QUANT_CONFIG
    if not path.is_file():
        return {"quant_algo": None, "kv_cache_quant_algo": None, "group_size": None}
    quantization = json.loads(path.read_text()).get("quantization", {})
    return {
        "quant_algo": quantization.get("quant_algo"),
        "kv_cache_quant_algo": quantization.get("kv_cache_quant_algo"),
        "group_size": quantization.get("group_size"),
    }


def export_tensorrt_llm(model: Any, out_dir: Path, engine: EnginePlan) -> None:
    """Write the legacy TensorRT-LLM checkpoint that `trtllm-build` reads.

    Raises:
        UserError: the architecture or format has no TensorRT-LLM checkpoint form.
    """
    decoder = get_model_type(model)
    if decoder is None:
        raise UserError(
            f"export: TensorRT-LLM's checkpoint format has no {type(model).__name__}; serve the "
            "HF checkpoint instead (engine.backend: pytorch)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Parallelism must be explicit: the default (0, "as calibrated") divides by a world size
    # that a single-process job does not have.
    try:
        export_tensorrt_llm_checkpoint(
            model,
            decoder,
            dtype=model_dtype(model),
            export_dir=out_dir,
            inference_tensor_parallel=engine.tensor_parallel,
            inference_pipeline_parallel=engine.pipeline_parallel,
        )
    except (NotImplementedError, ValueError) as err:
        # The legacy exporter covers fewer formats and shapes than the unified one.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"export: the legacy TensorRT-LLM checkpoint cannot hold this model ({first}); "
            "serve the HF checkpoint instead (engine.backend: pytorch)"
        ) from err
