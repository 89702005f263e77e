"""Golden tests of the TensorRT-LLM repositories: every config.pbtxt parses back with protobuf's
text format, and its filled parameters say what the Plan says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.contract import MODEL_MOUNT
from kiln_jobs.serving.engine_repository import ENGINE_MODELS, write_engine_repository
from kiln_jobs.serving.llmapi_repository import UPSTREAM_MODEL_ENV, write_llmapi_repository
from tests.unit.serving.plans import make_plan

pytestmark = pytest.mark.unit


def _parse(model_dir: Path) -> pb.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


def _params(config: pb.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.fixture
def engine_repo(tmp_path: Path) -> tuple[Path, dict[str, pb.ModelConfig]]:
    plan = make_plan()
    write_engine_repository(plan, tmp_path)
    return tmp_path, {name: _parse(tmp_path / name) for name in ENGINE_MODELS}


def test_engine_layout(engine_repo) -> None:
    root, configs = engine_repo
    assert sorted(p.name for p in root.iterdir()) == sorted(ENGINE_MODELS)
    for name, config in configs.items():
        assert config.name == name
        assert (root / name / "1").is_dir()
    for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        source = (root / name / "1" / "model.py").read_text()
        assert "class TritonPythonModel" in source
        compile(source, name, "exec")
    assert not (root / "tensorrt_llm" / "1" / "model.py").exists()  # the C++ backend


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


def test_bls_parameters(engine_repo) -> None:
    _, configs = engine_repo
    bls = configs["tensorrt_llm_bls"]
    params = _params(bls)
    assert params["tensorrt_llm_model_name"] == "tensorrt_llm"
    assert params["accumulate_tokens"] == "false"
    assert (
        bls.model_transaction_policy.decoupled
        is configs["tensorrt_llm"].model_transaction_policy.decoupled
    )
    ensemble_inputs = {i.name for i in configs["ensemble"].input}
    assert {i.name for i in bls.input} == ensemble_inputs


def test_ensemble_wiring_is_consistent(engine_repo) -> None:
    """Every step reads tensors that exist (an ensemble input or an earlier step's output) into
    inputs its model declares, and every required step input is fed."""
    _, configs = engine_repo
    ensemble = configs["ensemble"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 16
    available = {i.name for i in ensemble.input}
    optional_inputs = {i.name for i in ensemble.input if i.optional}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        declared = {i.name: i for i in model.input}
        for target, source in step.input_map.items():
            assert target in declared, f"{step.model_name} has no input {target}"
            assert source in available, f"{source} is not available before {step.model_name}"
            if source in optional_inputs:
                assert declared[target].optional, f"{step.model_name}.{target} must be optional"
        required = {name for name, i in declared.items() if not i.optional}
        assert required <= set(step.input_map), f"{step.model_name} misses {required}"
        outputs = {o.name for o in model.output}
        assert set(step.output_map) <= outputs
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available
    used = {
        source for step in ensemble.ensemble_scheduling.step for source in step.input_map.values()
    }
    assert {i.name for i in ensemble.input} <= used  # Triton rejects unused ensemble inputs


def test_llmapi_layout_follows_the_plan(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(UPSTREAM_MODEL_ENV, raising=False)
    plan = make_plan(backend="pytorch", tensor_parallel=2, pipeline_parallel=2)
    write_llmapi_repository(plan, tmp_path)
    model_dir = tmp_path / "tensorrt_llm"
    config = _parse(model_dir)
    values = yaml.safe_load((model_dir / "1" / "model.yaml").read_text())
    assert config.backend == "python"
    assert {i.name for i in config.input} >= {"text_input", "sampling_param_max_tokens"}
    assert {o.name for o in config.output} >= {"text_output"}
    assert values["model"] == f"{MODEL_MOUNT}/checkpoint"
    assert values["backend"] == "pytorch"
    assert (values["tensor_parallel_size"], values["pipeline_parallel_size"]) == (2, 2)
    assert (values["max_batch_size"], values["max_seq_len"]) == (16, 2048)
    assert values["kv_cache_config"] == {"free_gpu_memory_fraction": 0.85}
    # --disable-auto-complete-config: config.pbtxt must agree with model.yaml's triton_config.
    assert values["triton_config"] == {
        "max_batch_size": config.max_batch_size,
        "decoupled": config.model_transaction_policy.decoupled,
    }
    source = (model_dir / "1" / "model.py").read_text()
    assert "from tensorrt_llm import LLM" in source
    compile(source, "model.py", "exec")


def test_llmapi_takes_upstream_model_files(tmp_path: Path, monkeypatch) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "model.py").write_text("# upstream\n")
    (upstream / "helpers.py").write_text("# helpers\n")
    monkeypatch.setenv(UPSTREAM_MODEL_ENV, str(upstream))
    write_llmapi_repository(make_plan(backend="pytorch"), tmp_path / "repo")
    version = tmp_path / "repo" / "tensorrt_llm" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["helpers.py", "model.py", "model.yaml"]
    assert (version / "model.py").read_text() == "# upstream\n"
