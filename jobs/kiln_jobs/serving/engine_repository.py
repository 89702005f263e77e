"""The TensorRT-LLM engine repository: Triton's `inflight_batcher_llm` layout.

    ensemble/config.pbtxt            text_input -> preprocessing -> tensorrt_llm -> postprocessing
    preprocessing/{config.pbtxt,1/model.py}     tokenizer: text -> input_ids (+ word lists)
    tensorrt_llm/{config.pbtxt,1/}              backend "tensorrtllm": the engines
    postprocessing/{config.pbtxt,1/model.py}    tokenizer: output_ids -> text
    tensorrt_llm_bls/{config.pbtxt,1/model.py}  the same pipeline as one Python (BLS) model

Tensor and parameter names are those of the `all_models/inflight_batcher_llm` templates of
TensorRT-LLM's Triton backend (`triton-inference-server/tensorrtllm_backend`, now
`NVIDIA/TensorRT-LLM/triton_backend`); the values come from the Plan instead of
`fill_template.py`. The Python models are Kiln's own compact implementations of the same
contracts. Paths are absolute under the Deployment's mount (`MODEL_MOUNT`): the C++ backend opens
`gpt_model_path` as given.

Triton's guide marks this engine + ensemble path deprecated in favour of the LLM-API (PyTorch)
backend (`llmapi_repository`); choose it only for a pre-built engine's lower latency on a fixed
GPU model, and rebuild the engines whenever the GPU or TensorRT-LLM version changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.contract import MODEL_MOUNT
from kiln_jobs.plan import Plan
from kiln_jobs.serving.models import source_path
from kiln_jobs.serving.triton_config import (
    bool_param,
    input_tensor,
    model_config,
    output_tensor,
    parameters,
    write_config,
)

__all__ = ["ENGINE_MODELS", "write_engine_repository"]

ENGINE_MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
BATCHING_STRATEGY = "inflight_fused_batching"
# The scheduler that never evicts a started request (TensorRT-LLM's safe default).
_SCHEDULER_POLICY = "guaranteed_no_evict"
_EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"
_QUEUE_DELAY_US = 0
# Responses are whole answers; token streaming would need decoupled models and a streaming client.
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
        backend="python",
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
        backend="python",
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
    parameters(config, {"tokenizer_dir": tokenizer_dir, "skip_special_tokens": bool_param(True)})
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


def _frontend_inputs() -> list[pb.ModelInput]:
    """The user-facing request (ensemble and BLS): the CPU runtime's tensors plus penalties."""
    from kiln_jobs.serving.cpu_repository import request_inputs

    inputs = request_inputs()
    # Preprocessing needs the output length: required here, as in TensorRT-LLM's templates.
    next(i for i in inputs if i.name == "max_tokens").optional = False
    return [
        *inputs,
        input_tensor("bad_words", "STRING", [-1], optional=True),
        input_tensor("repetition_penalty", "FP32", [1], optional=True),
        input_tensor("return_log_probs", "BOOL", [1], optional=True),
    ]


def _frontend_outputs() -> list[pb.ModelOutput]:
    return [
        output_tensor("text_output", "STRING", [-1]),
        output_tensor("cum_log_probs", "FP32", [-1]),
        output_tensor("output_log_probs", "FP32", [-1, -1]),
    ]


# ensemble input -> (step, step input); empty step input means the same name.
_ENSEMBLE_ROUTES = {
    "preprocessing": {
        "QUERY": "text_input",
        "REQUEST_OUTPUT_LEN": "max_tokens",
        "BAD_WORDS_DICT": "bad_words",
        "STOP_WORDS_DICT": "stop_words",
        "END_ID": "end_id",
        "PAD_ID": "pad_id",
    },
    "tensorrt_llm": {
        "input_ids": "_INPUT_ID",
        "input_lengths": "_REQUEST_INPUT_LEN",
        "request_output_len": "_REQUEST_OUTPUT_LEN",
        "end_id": "_PREPROCESSOR_END_ID",
        "pad_id": "_PREPROCESSOR_PAD_ID",
        "stop_words_list": "_STOP_WORDS_IDS",
        "bad_words_list": "_BAD_WORDS_IDS",
        "runtime_top_k": "top_k",
        "runtime_top_p": "top_p",
        "temperature": "temperature",
        "repetition_penalty": "repetition_penalty",
        "seed": "seed",
        "return_log_probs": "return_log_probs",
        "streaming": "stream",
    },
    "postprocessing": {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
}
_ENSEMBLE_OUTPUTS = {
    "preprocessing": {
        "INPUT_ID": "_INPUT_ID",
        "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
        "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
        "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
        "BAD_WORDS_IDS": "_BAD_WORDS_IDS",
        "OUT_END_ID": "_PREPROCESSOR_END_ID",
        "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID",
    },
    "tensorrt_llm": {
        "output_ids": "_TOKENS_BATCH",
        "sequence_length": "_SEQUENCE_LENGTH",
        "cum_log_probs": "cum_log_probs",
        "output_log_probs": "output_log_probs",
    },
    "postprocessing": {"OUTPUT": "text_output"},
}


def ensemble_config(plan: Plan) -> pb.ModelConfig:
    """The ensemble that chains preprocessing, the engines and postprocessing."""
    config = model_config(
        "ensemble",
        platform="ensemble",
        max_batch_size=_batch(plan),
        inputs=_frontend_inputs(),
        outputs=_frontend_outputs(),
        instances=None,
    )
    for step_name in ("preprocessing", "tensorrt_llm", "postprocessing"):
        step = config.ensemble_scheduling.step.add(model_name=step_name, model_version=-1)
        step.input_map.update(_ENSEMBLE_ROUTES[step_name])
        step.output_map.update(_ENSEMBLE_OUTPUTS[step_name])
    return config


def bls_config(plan: Plan) -> pb.ModelConfig:
    """The BLS model: one Python model calling preprocessing, tensorrt_llm, postprocessing."""
    config = model_config(
        "tensorrt_llm_bls",
        backend="python",
        max_batch_size=_batch(plan),
        inputs=_frontend_inputs(),
        outputs=_frontend_outputs(),
        instances=plan.engine.max_batch_size,  # each instance holds one request in flight
        decoupled=DECOUPLED,
    )
    parameters(
        config,
        {
            "accumulate_tokens": bool_param(False),
            "tensorrt_llm_model_name": "tensorrt_llm",
            "tensorrt_llm_draft_model_name": "",
            "preprocessing_model_name": "preprocessing",
            "postprocessing_model_name": "postprocessing",
        },
    )
    return config


def write_engine_repository(plan: Plan, repository: Path, mount: str = MODEL_MOUNT) -> None:
    """Write the five-model engine repository into `repository`.

    Args:
        plan: The Plan whose engines were built.
        repository: The `triton/` directory to fill.
        mount: Where the plan-hash directory is mounted when served.
    """
    configs = {
        "ensemble": ensemble_config(plan),
        "preprocessing": preprocessing_config(plan, mount),
        "tensorrt_llm": tensorrt_llm_config(plan, mount),
        "postprocessing": postprocessing_config(plan, mount),
        "tensorrt_llm_bls": bls_config(plan),
    }
    sources = {
        "preprocessing": "trtllm_preprocessing",
        "postprocessing": "trtllm_postprocessing",
        "tensorrt_llm_bls": "trtllm_bls",
    }
    for name, config in configs.items():
        write_config(repository / name, config)
        (repository / name / "1").mkdir(parents=True, exist_ok=True)
        if name in sources:
            shutil.copyfile(source_path(sources[name]), repository / name / "1" / "model.py")
