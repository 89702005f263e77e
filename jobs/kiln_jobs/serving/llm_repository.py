"""The LLM repository: one decoupled model that serves the unified HF checkpoint.

    <modelName>/config.pbtxt   backend "kiln" (kiln_model: llm), the serving contract's tensors
    <modelName>/1/model.yaml   the LLM arguments and triton_config

This is the layout of `triton_backend/all_models/llmapi` in TensorRT-LLM's repository, the path
Triton's guide recommends (no engine build; the Model Optimizer checkpoint is read directly, its
`hf_quant_config.json` selecting the quantized kernels), with the model named after the
resource's `spec.serving.modelName` and Kiln's model code coming from the `kiln` backend rather
than from the store. Two runtimes use it:

- `tensorrtllm-pytorch`: `llm_api: tensorrt_llm`; model.yaml holds `tensorrt_llm.LLM`'s
  arguments (TP/PP, limits, KV cache, and `speculative_config` for an EAGLE-3 draft);
- `python`: `llm_api: kiln_jobs.serving.torch_llm`, Kiln's PyTorch implementation of the same
  calls, with the arguments it takes.

Paths in model.yaml are relative to the published plan directory (`checkpoint`, `draft`); the
model resolves them against the repository's parent, so the repository serves from the store on
any machine and from the Triton pod's read-only mount alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.contract import (
    CHECKPOINT_DIR,
    DRAFT_DIR,
    KILN_BACKEND,
    REQUEST_TENSORS,
    RESPONSE_TENSORS,
    RUNTIMES,
    Runtime,
    draft_length,
)
from kiln_jobs.manifest import Speculation
from kiln_jobs.plan import Plan, SpeculativePlan
from kiln_jobs.serving.engine import max_num_tokens
from kiln_jobs.serving.triton_config import (
    input_tensor,
    model_config,
    output_tensor,
    parameters,
    write_config,
)

__all__ = [
    "LLM_API_MODULES",
    "contract_inputs",
    "contract_outputs",
    "model_yaml",
    "speculation",
    "write_llm_repository",
]

#: runtime -> the module its LLM comes from
LLM_API_MODULES: dict[str, str] = {
    "tensorrtllm-pytorch": "tensorrt_llm",
    "python": "kiln_jobs.serving.torch_llm",
}
# One request per call, no Triton batch dimension: the LLM batches requests in flight.
_TRITON_MAX_BATCH = 0


def contract_inputs() -> list[pb.ModelInput]:
    """The serving contract's request tensors."""
    return [input_tensor(t.name, t.dtype, t.dims, optional=t.optional) for t in REQUEST_TENSORS]


def contract_outputs() -> list[pb.ModelOutput]:
    """The serving contract's response tensors."""
    return [output_tensor(t.name, t.dtype, t.dims) for t in RESPONSE_TENSORS]


def _config(plan: Plan, runtime: Runtime) -> pb.ModelConfig:
    config = model_config(
        plan.serving.model_name,
        backend=KILN_BACKEND,
        max_batch_size=_TRITON_MAX_BATCH,
        inputs=contract_inputs(),
        outputs=contract_outputs(),
        instances=1,  # one LLM per server: TensorRT-LLM spreads it over the TP x PP GPUs
        decoupled=True,
    )
    parameters(
        config,
        {
            "kiln_model": "llm",
            "llm_api": LLM_API_MODULES[runtime],
            "default_max_tokens": plan.serving.max_new_tokens,
        },
    )
    return config


def _speculative(plan: Plan) -> SpeculativePlan | None:
    return next((t for t in plan.techniques if isinstance(t, SpeculativePlan)), None)


def speculation(plan: Plan, runtime: Runtime) -> Speculation | None:
    """The plan's draft and whether `runtime` serves it (`RUNTIMES[...].speculative`)."""
    spec = _speculative(plan)
    if spec is None:
        return None
    serves = RUNTIMES[runtime]
    served = spec.algorithm in serves.speculative
    return Speculation(
        algorithm=spec.algorithm,
        draft_dir=DRAFT_DIR,
        max_draft_len=draft_length(spec.algorithm, spec.medusa_heads),
        served=served,
        reason=None if served else serves.no_draft,
    )


def model_yaml(plan: Plan, runtime: Runtime) -> dict[str, Any]:
    """The LLM arguments and the Triton settings for `plan` on `runtime`."""
    engine = plan.engine
    if runtime == "python":
        args: dict[str, Any] = {
            "model": CHECKPOINT_DIR,
            "max_batch_size": engine.max_batch_size,
            "max_input_len": engine.max_input_len,
            "max_seq_len": engine.max_seq_len,
        }
    else:
        args = {
            "model": CHECKPOINT_DIR,
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
        }
        draft = speculation(plan, runtime)
        if draft is not None and draft.served:
            # TensorRT-LLM 1.0's names; later releases keep them as aliases.
            args["speculative_config"] = {
                "decoding_type": "Eagle",
                "max_draft_len": draft.max_draft_len,
                "speculative_model_dir": draft.draft_dir,
                "eagle3_one_model": True,
            }
    return {**args, "triton_config": {"max_batch_size": _TRITON_MAX_BATCH, "decoupled": True}}


def write_llm_repository(plan: Plan, repository: Path, runtime: Runtime) -> None:
    """Write the LLM repository for `runtime` into `repository`.

    Args:
        plan: The Plan being served.
        repository: The `triton/` directory to fill.
        runtime: `tensorrtllm-pytorch` or `python`.
    """
    model_dir = repository / plan.serving.model_name
    write_config(model_dir, _config(plan, runtime))
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    values = model_yaml(plan, runtime)
    text = yaml.safe_dump(values, sort_keys=False)
    if yaml.safe_load(text) != values:
        raise ValueError("model.yaml does not survive a YAML round trip")
    (version / "model.yaml").write_text(text)
