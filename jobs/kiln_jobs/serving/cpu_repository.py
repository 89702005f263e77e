"""The CPU runtime's model repository: one Python-backend model generating on PyTorch.

Layout (`<plan hash>/triton/`):

    <model_name>/config.pbtxt     backend "python", the TensorRT-LLM ensemble's tensors
    <model_name>/1/model.py       kiln_jobs/serving/models/cpu_llm.py

Paths in it are relative to the plan-hash directory, so the same repository serves from a local
publish directory and from the Deployment's read-only mount.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.plan import Plan
from kiln_jobs.serving.models import source_path
from kiln_jobs.serving.triton_config import (
    input_tensor,
    model_config,
    output_tensor,
    parameters,
    write_config,
)

__all__ = ["request_inputs", "write_cpu_repository"]

# The dynamic batcher waits this long for company; generation takes far longer.
_QUEUE_DELAY_US = 1000


def request_inputs() -> list[pb.ModelInput]:
    """The request tensors shared with the TensorRT-LLM ensemble and BLS models."""
    return [
        input_tensor("text_input", "STRING", [1]),
        input_tensor("max_tokens", "INT32", [1], optional=True),
        input_tensor("stop_words", "STRING", [-1], optional=True),
        input_tensor("end_id", "INT32", [1], optional=True),
        input_tensor("pad_id", "INT32", [1], optional=True),
        input_tensor("top_k", "INT32", [1], optional=True),
        input_tensor("top_p", "FP32", [1], optional=True),
        input_tensor("temperature", "FP32", [1], optional=True),
        input_tensor("seed", "UINT64", [1], optional=True),
        input_tensor("stream", "BOOL", [1], optional=True),
    ]


def response_outputs() -> list[pb.ModelOutput]:
    """The response tensors: the continuation and its token counts."""
    return [
        output_tensor("text_output", "STRING", [-1]),
        output_tensor("num_input_tokens", "INT32", [1]),
        output_tensor("num_output_tokens", "INT32", [1]),
    ]


def cpu_model_config(plan: Plan, checkpoint_dir: str = "checkpoint") -> pb.ModelConfig:
    """The Python-backend model config for `plan`.

    Args:
        plan: The Plan being served.
        checkpoint_dir: The checkpoint, relative to the plan-hash directory.
    """
    config = model_config(
        plan.serving.model_name,
        backend="python",
        max_batch_size=plan.engine.max_batch_size,
        inputs=request_inputs(),
        outputs=response_outputs(),
        instances=1,
        decoupled=False,
        dynamic_batching=True,
        queue_delay_us=_QUEUE_DELAY_US,
    )
    parameters(
        config,
        {
            "checkpoint_dir": checkpoint_dir,
            "tokenizer_dir": checkpoint_dir,
            "max_tokens": plan.serving.max_new_tokens,
            "max_input_len": plan.engine.max_input_len,
            "max_seq_len": plan.engine.max_seq_len,
            "dtype": "float32",
            "num_threads": 0,
            "kiln_runtime": "python",
        },
    )
    return config


def write_cpu_repository(plan: Plan, repository: Path, checkpoint_dir: str = "checkpoint") -> None:
    """Write the CPU runtime's repository into `repository` (created if missing)."""
    model_dir = repository / plan.serving.model_name
    write_config(model_dir, cpu_model_config(plan, checkpoint_dir))
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path("cpu_llm"), model_dir / "1" / "model.py")
