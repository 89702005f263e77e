"""Golden tests of the generated Triton repositories: every config.pbtxt parses back with
protobuf's text format, says what the Plan says, speaks the serving contract, and matches
upstream's templates where it follows them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.contract import (
    ENGINE_INNER_MODELS,
    KILN_BACKEND,
    MODEL_MOUNT,
    REQUEST_TENSORS,
    RESPONSE_TENSORS,
)
from kiln_jobs.plan import DataRef, SpeculativePlan, TrainingPlan
from kiln_jobs.serving.engine_repository import write_engine_repository
from kiln_jobs.serving.llm_repository import write_llm_repository
from kiln_jobs.serving.models import KILN_MODELS
from tests.unit.serving.plans import make_plan

pytestmark = pytest.mark.unit

# TensorRT-LLM's LLM-API model for Triton (triton_backend/all_models/llmapi/tensorrt_llm/
# config.pbtxt): its request tensors, with their types (see TRTLLM_LLMAPI_FACTS.md, section 1).
UPSTREAM_LLMAPI_INPUTS = {
    "text_input": "STRING",
    "streaming": "BOOL",
    "sampling_param_best_of": "INT32",
    "sampling_param_top_k": "INT32",
    "sampling_param_max_tokens": "INT32",
    "sampling_param_temperature": "FP32",
    "sampling_param_top_p": "FP32",
    "sampling_param_frequency_penalty": "FP32",
    "sampling_param_presence_penalty": "FP32",
    "sampling_param_seed": "UINT64",
    "sampling_param_exclude_input_from_output": "BOOL",
    "sampling_param_return_perf_metrics": "BOOL",
    "sampling_param_stop": "STRING",
}
UPSTREAM_LLMAPI_OUTPUTS = {"text_output": "STRING", "finish_reason": "STRING"}


def _parse(model_dir: Path) -> pb.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


def _params(config: pb.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def _type(tensor: pb.ModelInput | pb.ModelOutput) -> str:
    return pb.DataType.Name(tensor.data_type).removeprefix("TYPE_")


def _assert_contract(config: pb.ModelConfig) -> None:
    assert [(i.name, _type(i), list(i.dims), i.optional) for i in config.input] == [
        (t.name, t.dtype, list(t.dims), t.optional) for t in REQUEST_TENSORS
    ]
    assert [(o.name, _type(o), list(o.dims)) for o in config.output] == [
        (t.name, t.dtype, list(t.dims)) for t in RESPONSE_TENSORS
    ]
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled


@pytest.fixture
def engine_repo(tmp_path: Path) -> tuple[Path, dict[str, pb.ModelConfig]]:
    plan = make_plan(serving={"model_name": "llama"})
    write_engine_repository(plan, tmp_path)
    return tmp_path, {p.name: _parse(p) for p in tmp_path.iterdir()}


def test_engine_layout_holds_no_code(engine_repo) -> None:
    root, configs = engine_repo
    assert sorted(configs) == sorted(["llama", *ENGINE_INNER_MODELS])
    for name, config in configs.items():
        assert config.name == name
        assert (root / name / "1").is_dir()
    assert not list(root.rglob("*.py"))  # Kiln's models come with the kiln backend
    for name in ("llama", "preprocessing", "postprocessing"):
        assert configs[name].backend == KILN_BACKEND
        assert _params(configs[name])["kiln_model"] in KILN_MODELS


def test_tensorrt_llm_parameters_follow_the_plan(engine_repo) -> None:
    _, configs = engine_repo
    config = configs["tensorrt_llm"]
    params = _params(config)
    assert config.backend == "tensorrtllm"
    assert config.max_batch_size == 16  # triton_max_batch_size <= the engine's max batch
    assert config.model_transaction_policy.decoupled is False
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == f"{MODEL_MOUNT}/engine"
    assert params["tokenizer_dir"] == f"{MODEL_MOUNT}/checkpoint"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.85"
    assert params["max_attention_window_size"] == "2048"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert params["exclude_input_in_output"] == "true"
    assert params["max_beam_width"] == "1"
    assert params["gpu_device_ids"] == "0,1"  # TP=2
    assert all(value and "${" not in value for value in params.values())
    scalars = {i.name for i in config.input if i.HasField("reshape")}
    assert {"input_lengths", "request_output_len", "end_id", "temperature"} <= scalars
    assert next(i for i in config.input if i.name == "input_ids").allow_ragged_batch


def test_pre_and_postprocessing_parameters(engine_repo) -> None:
    _, configs = engine_repo
    pre, post = _params(configs["preprocessing"]), _params(configs["postprocessing"])
    assert pre["tokenizer_dir"] == post["tokenizer_dir"] == f"{MODEL_MOUNT}/checkpoint"
    assert pre["max_input_len"] == "1024"
    assert post["skip_special_tokens"] == "true"
    assert configs["preprocessing"].max_batch_size == configs["postprocessing"].max_batch_size == 16


def test_the_engine_front_model_speaks_the_contract(engine_repo) -> None:
    _, configs = engine_repo
    front = configs["llama"]
    _assert_contract(front)
    params = _params(front)
    assert params["kiln_model"] == "bls"
    assert params["tensorrt_llm_model_name"] == "tensorrt_llm"
    assert {params["preprocessing_model_name"], params["postprocessing_model_name"]} == {
        "preprocessing",
        "postprocessing",
    }


@pytest.mark.parametrize("runtime", ["tensorrtllm-pytorch", "python"])
def test_llm_layout_follows_the_plan_and_the_contract(tmp_path: Path, runtime: str) -> None:
    plan = make_plan(
        backend="pytorch", tensor_parallel=2, pipeline_parallel=2, serving={"model_name": "chat"}
    )
    write_llm_repository(plan, tmp_path, runtime)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["chat"]
    assert not list(tmp_path.rglob("*.py"))
    config = _parse(tmp_path / "chat")
    values = yaml.safe_load((tmp_path / "chat" / "1" / "model.yaml").read_text())
    _assert_contract(config)
    params = _params(config)
    assert config.backend == KILN_BACKEND and params["kiln_model"] == "llm"
    assert params["default_max_tokens"] == str(plan.serving.max_new_tokens)
    assert values["model"] == "checkpoint"  # relative to the published plan directory
    # --disable-auto-complete-config: config.pbtxt must agree with model.yaml's triton_config.
    assert values["triton_config"] == {
        "max_batch_size": config.max_batch_size,
        "decoupled": config.model_transaction_policy.decoupled,
    }
    if runtime == "tensorrtllm-pytorch":
        assert params["llm_api"] == "tensorrt_llm"
        assert values["backend"] == "pytorch"
        assert (values["tensor_parallel_size"], values["pipeline_parallel_size"]) == (2, 2)
        assert (values["max_batch_size"], values["max_seq_len"]) == (16, 2048)
        assert values["kv_cache_config"] == {"free_gpu_memory_fraction": 0.85}
        assert "speculative_config" not in values
    else:
        assert params["llm_api"] == "kiln_jobs.serving.torch_llm"
        assert set(values) == {
            "model", "max_batch_size", "max_input_len", "max_seq_len", "triton_config"
        }  # fmt: skip


def test_the_contract_follows_upstreams_llmapi_template() -> None:
    """Every request and response tensor upstream's LLM-API model declares under the same name
    has the same type; Kiln adds only token counts."""
    for tensor in REQUEST_TENSORS:
        assert UPSTREAM_LLMAPI_INPUTS[tensor.name] == tensor.dtype, tensor.name
    kiln_only = {"num_input_tokens", "num_output_tokens"}
    for tensor in RESPONSE_TENSORS:
        if tensor.name not in kiln_only:
            assert UPSTREAM_LLMAPI_OUTPUTS[tensor.name] == tensor.dtype


def _eagle_plan(algorithm: str = "eagle3") -> object:
    draft = SpeculativePlan(
        algorithm=algorithm,  # type: ignore[arg-type]
        training=TrainingPlan(
            steps=1, learning_rate=1e-4, batch_size=1, data=DataRef(samples=1, seq_length=8),
            checkpoint_every=1,
        ),
    )  # fmt: skip
    plan = make_plan(backend="pytorch", tensor_parallel=1)
    return plan.model_copy(update={"techniques": (draft, *plan.techniques)})


def test_an_eagle3_draft_is_served_through_speculative_config(tmp_path: Path) -> None:
    plan = _eagle_plan()
    write_llm_repository(plan, tmp_path, "tensorrtllm-pytorch")  # type: ignore[arg-type]
    values = yaml.safe_load((tmp_path / "model" / "1" / "model.yaml").read_text())
    assert values["speculative_config"] == {
        "decoding_type": "Eagle",
        "max_draft_len": 3,
        "speculative_model_dir": "draft",
        "eagle3_one_model": True,
    }


def test_the_pytorch_runtime_serves_without_the_draft_and_says_so(tmp_path: Path) -> None:
    from kiln_jobs.serving.llm_repository import speculation

    plan = _eagle_plan()
    write_llm_repository(plan, tmp_path, "python")  # type: ignore[arg-type]
    values = yaml.safe_load((tmp_path / "model" / "1" / "model.yaml").read_text())
    assert "speculative_config" not in values
    record = speculation(plan, "python")  # type: ignore[arg-type]
    assert record is not None and not record.served and "without a draft" in (record.reason or "")
    served = speculation(plan, "tensorrtllm-pytorch")  # type: ignore[arg-type]
    assert served is not None and served.served and served.draft_dir == "draft"
