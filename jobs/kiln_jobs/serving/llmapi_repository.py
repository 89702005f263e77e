"""The LLM-API repository: TensorRT-LLM's PyTorch backend serves the unified HF checkpoint.

    tensorrt_llm/config.pbtxt   backend "python", text_input + sampling_param_* -> text_output
    tensorrt_llm/1/model.yaml   tensorrt_llm.LLM arguments (model, TP/PP, limits, KV cache)
                                and triton_config (max_batch_size, decoupled)
    tensorrt_llm/1/model.py     Kiln's minimal LLM-API model (models/llmapi.py), or TensorRT-LLM's
                                own (see below)

This is the layout of `triton_backend/all_models/llmapi` in TensorRT-LLM's repository, and the
path Triton's guide recommends: no engine build, the Model Optimizer checkpoint is read directly
(its `hf_quant_config.json` selects the quantized kernels), any GPU the release supports serves
it. Prefer it over the engine ensemble (`engine_repository`) unless a pre-built engine's latency
on one fixed GPU model matters more than portability.

`max_batch_size` and `decoupled` are written both into `config.pbtxt` and `model.yaml`'s
`triton_config` with the same values: the operator starts Triton with
`--disable-auto-complete-config`, so `config.pbtxt` must be complete, while the upstream
`model.py` reads `triton_config` to auto-complete. When the job image ships TensorRT-LLM's own
`model.py` (with streaming and cancellation; it must match the image's TensorRT-LLM version),
point `KILN_TRTLLM_LLMAPI_MODEL_DIR` at its `llmapi/tensorrt_llm/1` directory and its `*.py` files
are copied instead of Kiln's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.contract import MODEL_MOUNT
from kiln_jobs.errors import UserError
from kiln_jobs.plan import Plan
from kiln_jobs.serving.engine import max_num_tokens
from kiln_jobs.serving.models import source_path
from kiln_jobs.serving.triton_config import (
    input_tensor,
    model_config,
    output_tensor,
    write_config,
)

__all__ = ["LLMAPI_MODEL", "UPSTREAM_MODEL_ENV", "write_llmapi_repository"]

LLMAPI_MODEL = "tensorrt_llm"
UPSTREAM_MODEL_ENV = "KILN_TRTLLM_LLMAPI_MODEL_DIR"
# The upstream model handles one prompt per request; TensorRT-LLM batches requests in flight.
_TRITON_MAX_BATCH = 0
_DECOUPLED = False


def llmapi_config(plan: Plan) -> pb.ModelConfig:
    """config.pbtxt of the LLM-API model (the tensor names of TensorRT-LLM's template)."""
    optional = {"optional": True}
    return model_config(
        LLMAPI_MODEL,
        backend="python",
        max_batch_size=_TRITON_MAX_BATCH,
        inputs=[
            input_tensor("text_input", "STRING", [-1]),
            input_tensor("streaming", "BOOL", [1], **optional),
            input_tensor("sampling_param_max_tokens", "INT32", [1], **optional),
            input_tensor("sampling_param_temperature", "FP32", [1], **optional),
            input_tensor("sampling_param_top_k", "INT32", [1], **optional),
            input_tensor("sampling_param_top_p", "FP32", [1], **optional),
            input_tensor("sampling_param_frequency_penalty", "FP32", [1], **optional),
            input_tensor("sampling_param_presence_penalty", "FP32", [1], **optional),
            input_tensor("sampling_param_stop", "STRING", [-1], **optional),
            input_tensor("sampling_param_seed", "UINT64", [1], **optional),
            input_tensor("sampling_param_exclude_input_from_output", "BOOL", [1], **optional),
        ],
        outputs=[
            output_tensor("text_output", "STRING", [-1]),
            output_tensor("finish_reason", "STRING", [-1]),
        ],
        instances=1,  # one LLM per server: TensorRT-LLM spreads it over the TP x PP GPUs
        decoupled=_DECOUPLED,
    )


def llmapi_model_yaml(plan: Plan, mount: str = MODEL_MOUNT) -> dict[str, Any]:
    """The `tensorrt_llm.LLM` arguments and the Triton settings for `plan`."""
    engine = plan.engine
    return {
        "model": f"{mount}/checkpoint",
        "backend": "pytorch",
        "tensor_parallel_size": engine.tensor_parallel,
        "pipeline_parallel_size": engine.pipeline_parallel,
        "max_batch_size": engine.max_batch_size,
        "max_input_len": engine.max_input_len,
        "max_seq_len": engine.max_seq_len,
        "max_num_tokens": max_num_tokens(engine),
        "kv_cache_config": {
            "free_gpu_memory_fraction": plan.serving.kv_cache_free_gpu_mem_fraction,
        },
        "triton_config": {"max_batch_size": _TRITON_MAX_BATCH, "decoupled": _DECOUPLED},
    }


def _model_sources() -> list[Path]:
    upstream = os.environ.get(UPSTREAM_MODEL_ENV)
    if not upstream:
        return [source_path("llmapi")]
    files = sorted(Path(upstream).glob("*.py"))
    if not any(f.name == "model.py" for f in files):
        raise UserError(f"{UPSTREAM_MODEL_ENV}={upstream} holds no model.py")
    return files


def write_llmapi_repository(plan: Plan, repository: Path, mount: str = MODEL_MOUNT) -> None:
    """Write the LLM-API repository into `repository`.

    Args:
        plan: The Plan being served.
        repository: The `triton/` directory to fill.
        mount: Where the plan-hash directory is mounted when served.
    """
    model_dir = repository / LLMAPI_MODEL
    write_config(model_dir, llmapi_config(plan))
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(llmapi_model_yaml(plan, mount), sort_keys=False)
    if yaml.safe_load(text) != llmapi_model_yaml(plan, mount):
        raise ValueError("model.yaml does not survive a YAML round trip")
    (version / "model.yaml").write_text(text)
    for source in _model_sources():
        target = "model.py" if source.name == "llmapi.py" else source.name
        shutil.copyfile(source, version / target)
