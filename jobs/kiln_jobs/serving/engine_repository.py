"""The TensorRT-LLM engine repository (legacy): Triton's `inflight_batcher_llm` models, fronted
by one model that speaks the serving contract.

    <modelName>/config.pbtxt        the BLS pipeline (kiln_model: bls): contract tensors in,
                                    preprocessing -> tensorrt_llm -> postprocessing
    preprocessing/config.pbtxt      tokenizer: text -> input_ids (+ word lists) (kiln_model)
    tensorrt_llm/{config.pbtxt,1/}  backend "tensorrtllm": the engines
    postprocessing/config.pbtxt     tokenizer: output_ids -> text (kiln_model)

Tensor and parameter names of the three inner models are those of the `all_models/
inflight_batcher_llm` templates of TensorRT-LLM's Triton backend; the values come from the Plan
instead of `fill_template.py`. The Python models are Kiln's own compact implementations of the
same contracts, run by the `kiln` backend. Paths are absolute under the Deployment's mount
(`MODEL_MOUNT`): the C++ backend opens `gpt_model_path` as given.

TensorRT-LLM removed this engine backend upstream in July 2026 (`trtllm-build` is gone; PyTorch
is the only backend) and Triton's guide marks the path deprecated: it serves job images whose
TensorRT-LLM still builds engines, for a pre-built engine's latency on one fixed GPU model.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.contract import KILN_BACKEND, MODEL_MOUNT
from kiln_jobs.plan import Plan
from kiln_jobs.serving.llm_repository import contract_inputs, contract_outputs
from kiln_jobs.serving.triton_config import (
    bool_param,
    input_tensor,
    model_config,
    output_tensor,
    parameters,
    write_config,
)

__all__ = ["write_engine_repository"]

BATCHING_STRATEGY = "inflight_fused_batching"
# The scheduler that never evicts a started request (TensorRT-LLM's safe default).
_SCHEDULER_POLICY = "guaranteed_no_evict"
_EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"
_QUEUE_DELAY_US = 0
# The engines answer whole; the BLS front model is decoupled (the contract) and answers once.
DECOUPLED = False


def _paths(mount: str) -> tuple[str, str]:
    return f"{mount}/engine", f"{mount}/checkpoint"


def _batch(plan: Plan) -> int:
    # Triton's batch cannot exceed what the engines were built for.
    return plan.engine.max_batch_size


def preprocessing_config(plan: Plan, mount: str = MODEL_MOUNT) -> pb.ModelConfig:
    """Tokenization: QUERY -> INPUT_ID, lengths, word lists, end/pad ids."""
    engine_dir, tokenizer_dir = _paths(mount)
    config = model_config(
        "preprocessing",
        backend=KILN_BACKEND,
        max_batch_size=_batch(plan),
        inputs=[
            input_tensor("QUERY", "STRING", [1]),
            input_tensor("REQUEST_OUTPUT_LEN", "INT32", [1]),
            input_tensor("BAD_WORDS_DICT", "STRING", [-1], optional=True),
            input_tensor("STOP_WORDS_DICT", "STRING", [-1], optional=True),
            input_tensor("END_ID", "INT32", [1], optional=True),
            input_tensor("PAD_ID", "INT32", [1], optional=True),
        ],
        outputs=[
            output_tensor("INPUT_ID", "INT32", [-1]),
            output_tensor("REQUEST_INPUT_LEN", "INT32", [1]),
            output_tensor("BAD_WORDS_IDS", "INT32", [2, -1]),
            output_tensor("STOP_WORDS_IDS", "INT32", [2, -1]),
            output_tensor("REQUEST_OUTPUT_LEN", "INT32", [-1]),
            output_tensor("OUT_END_ID", "INT32", [1]),
            output_tensor("OUT_PAD_ID", "INT32", [1]),
        ],
        instances=1,
        dynamic_batching=True,
        queue_delay_us=_QUEUE_DELAY_US,
    )
    parameters(
        config,
        {
            "kiln_model": "preprocessing",
            "tokenizer_dir": tokenizer_dir,
            "add_special_tokens": bool_param(True),
            "gpt_model_path": engine_dir,
            "max_input_len": plan.engine.max_input_len,
        },
    )
    return config


def postprocessing_config(plan: Plan, mount: str = MODEL_MOUNT) -> pb.ModelConfig:
    """Detokenization: TOKENS_BATCH + SEQUENCE_LENGTH -> OUTPUT."""
    _, tokenizer_dir = _paths(mount)
    config = model_config(
        "postprocessing",
        backend=KILN_BACKEND,
        max_batch_size=_batch(plan),
        inputs=[
            input_tensor("TOKENS_BATCH", "INT32", [-1, -1]),
            input_tensor("SEQUENCE_LENGTH", "INT32", [-1]),
        ],
        outputs=[output_tensor("OUTPUT", "STRING", [-1])],
        instances=1,
        dynamic_batching=True,
        queue_delay_us=_QUEUE_DELAY_US,
    )
    parameters(
        config,
        {
            "kiln_model": "postprocessing",
            "tokenizer_dir": tokenizer_dir,
            "skip_special_tokens": bool_param(True),
        },
    )
    return config


def _engine_inputs() -> list[pb.ModelInput]:
    scalar = {"optional": True, "scalar": True}
    return [
        input_tensor("input_ids", "INT32", [-1], ragged=True),
        input_tensor("input_lengths", "INT32", [1], scalar=True),
        input_tensor("request_output_len", "INT32", [1], scalar=True),
        input_tensor("end_id", "INT32", [1], **scalar),
        input_tensor("pad_id", "INT32", [1], **scalar),
        input_tensor("stop_words_list", "INT32", [2, -1], optional=True, ragged=True),
        input_tensor("bad_words_list", "INT32", [2, -1], optional=True, ragged=True),
        input_tensor("beam_width", "INT32", [1], **scalar),
        input_tensor("temperature", "FP32", [1], **scalar),
        input_tensor("runtime_top_k", "INT32", [1], **scalar),
        input_tensor("runtime_top_p", "FP32", [1], **scalar),
        input_tensor("repetition_penalty", "FP32", [1], **scalar),
        input_tensor("seed", "UINT64", [1], **scalar),
        input_tensor("return_log_probs", "BOOL", [1], **scalar),
        input_tensor("exclude_input_in_output", "BOOL", [1], **scalar),
        input_tensor("stop", "BOOL", [1], **scalar),
        input_tensor("streaming", "BOOL", [1], **scalar),
    ]


def _engine_outputs() -> list[pb.ModelOutput]:
    return [
        output_tensor("output_ids", "INT32", [-1, -1]),
        output_tensor("sequence_length", "INT32", [-1]),
        output_tensor("cum_log_probs", "FP32", [-1]),
        output_tensor("output_log_probs", "FP32", [-1, -1]),
    ]


def tensorrt_llm_config(plan: Plan, mount: str = MODEL_MOUNT) -> pb.ModelConfig:
    """The engines behind the C++ `tensorrtllm` backend, with in-flight batching."""
    engine_dir, tokenizer_dir = _paths(mount)
    world = plan.engine.tensor_parallel * plan.engine.pipeline_parallel
    config = model_config(
        "tensorrt_llm",
        backend="tensorrtllm",
        max_batch_size=_batch(plan),
        inputs=_engine_inputs(),
        outputs=_engine_outputs(),
        instances=1,  # the backend itself spans the GPUs; KIND_CPU as the backend requires
        decoupled=DECOUPLED,
        dynamic_batching=True,
        queue_delay_us=_QUEUE_DELAY_US,
    )
    parameters(
        config,
        {
            "gpt_model_type": BATCHING_STRATEGY,
            "gpt_model_path": engine_dir,
            "tokenizer_dir": tokenizer_dir,
            "max_beam_width": 1,
            "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
            "batch_scheduler_policy": _SCHEDULER_POLICY,
            "kv_cache_free_gpu_mem_fraction": plan.serving.kv_cache_free_gpu_mem_fraction,
            "max_attention_window_size": plan.engine.max_seq_len,
            "exclude_input_in_output": bool_param(True),
            "enable_kv_cache_reuse": bool_param(False),
            "enable_chunked_context": bool_param(False),
            "normalize_log_probs": bool_param(True),
            "cancellation_check_period_ms": 100,
            "stats_check_period_ms": 100,
            "iter_stats_max_iterations": 1000,
            "request_stats_max_iterations": 0,
            "gpu_device_ids": ",".join(str(i) for i in range(world)),
            "executor_worker_path": _EXECUTOR_WORKER,
        },
    )
    return config


def bls_config(plan: Plan) -> pb.ModelConfig:
    """The model clients ask, named `spec.serving.modelName`: the contract's tensors in and out,
    preprocessing, the engines and postprocessing called in turn (business-logic scripting)."""
    config = model_config(
        plan.serving.model_name,
        backend=KILN_BACKEND,
        max_batch_size=0,
        inputs=contract_inputs(),
        outputs=contract_outputs(),
        instances=plan.engine.max_batch_size,  # each instance holds one request in flight
        decoupled=True,
    )
    parameters(
        config,
        {
            "kiln_model": "bls",
            "default_max_tokens": plan.serving.max_new_tokens,
            "tensorrt_llm_model_name": "tensorrt_llm",
            "preprocessing_model_name": "preprocessing",
            "postprocessing_model_name": "postprocessing",
        },
    )
    return config


def write_engine_repository(plan: Plan, repository: Path, mount: str = MODEL_MOUNT) -> None:
    """Write the engine repository into `repository`.

    Args:
        plan: The Plan whose engines were built.
        repository: The `triton/` directory to fill.
        mount: Where the plan-hash directory is mounted when served.
    """
    configs = {
        plan.serving.model_name: bls_config(plan),
        "preprocessing": preprocessing_config(plan, mount),
        "tensorrt_llm": tensorrt_llm_config(plan, mount),
        "postprocessing": postprocessing_config(plan, mount),
    }
    for name, config in configs.items():
        write_config(repository / name, config)
        (repository / name / "1").mkdir(parents=True, exist_ok=True)
