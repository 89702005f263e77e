"""Which runtime serves a Plan, the repository written for it, and the command that serves it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from kiln_jobs.contract import triton_argv
from kiln_jobs.errors import UserError
from kiln_jobs.serving import repository
from kiln_jobs.serving.repository import choose_runtime, write_repository
from kiln_jobs.serving.triton_config import input_tensor, model_config, render_config
from tests.unit.serving.plans import make_plan

pytestmark = pytest.mark.unit


@pytest.fixture
def publish(tmp_path: Path) -> Path:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "config.json").write_text("{}")
    return tmp_path


def _engines(publish: Path) -> None:
    (publish / "engine").mkdir()
    (publish / "engine" / "config.json").write_text("{}")
    (publish / "engine" / "rank0.engine").write_bytes(b"")


def test_runtime_per_backend(publish: Path, monkeypatch) -> None:
    monkeypatch.setattr(repository, "llm_api_unavailable", lambda: "no GPU here")
    out = io.StringIO()
    assert choose_runtime(make_plan(backend="none"), publish) == "python"
    assert choose_runtime(make_plan(backend="pytorch"), publish) == "tensorrtllm-pytorch"
    fallback = make_plan(backend="pytorch", allow_fallback=True)
    assert choose_runtime(fallback, publish, out=out) == "python"
    assert "no GPU here" in out.getvalue()
    assert choose_runtime(make_plan(allow_fallback=True), publish) == "python"
    with pytest.raises(UserError, match="holds none"):
        choose_runtime(make_plan(), publish)
    _engines(publish)
    assert choose_runtime(make_plan(), publish) == "tensorrtllm-engine"


@pytest.mark.parametrize(
    ("backend", "runtime"), [("none", "python"), ("pytorch", "tensorrtllm-pytorch")]
)
def test_every_runtime_serves_the_resources_model_name(
    publish: Path, backend: str, runtime: str
) -> None:
    (publish / "triton" / "stale").mkdir(parents=True)
    plan = make_plan(backend=backend, tensor_parallel=1, serving={"model_name": "assistant"})
    served = write_repository(plan, publish)
    assert served.runtime == runtime and served.speculation is None
    assert sorted(p.name for p in (publish / "triton").iterdir()) == ["assistant"]
    config = text_format.Parse(
        (publish / "triton" / "assistant" / "config.pbtxt").read_text(), pb.ModelConfig()
    )
    assert config.name == "assistant"


def test_the_engine_runtime_serves_it_too(publish: Path) -> None:
    _engines(publish)
    served = write_repository(make_plan(serving={"model_name": "assistant"}), publish)
    assert served.runtime == "tensorrtllm-engine"
    front = text_format.Parse(
        (publish / "triton" / "assistant" / "config.pbtxt").read_text(), pb.ModelConfig()
    )
    assert front.name == "assistant" and front.model_transaction_policy.decoupled


def test_write_repository_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no exported checkpoint"):
        write_repository(make_plan(backend="none"), tmp_path)


def test_triton_argv_single_process() -> None:
    argv = triton_argv("tensorrtllm-pytorch", 1)
    assert argv == [
        "tritonserver",
        "--model-repository=/kiln/model/triton",
        "--disable-auto-complete-config",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
    ]


def test_triton_argv_runs_one_rank_per_gpu_for_tp2_engines() -> None:
    argv = triton_argv("tensorrtllm-engine", 2)
    assert argv[:2] == ["mpirun", "--allow-run-as-root"]
    ranks = " ".join(argv[2:]).split(" : ")
    assert len(ranks) == 2
    assert "shm-region-prefix-name=prefix0_" in ranks[0] and "--load-model" not in ranks[0]
    assert "--load-model=tensorrt_llm" in ranks[1] and "prefix1_" in ranks[1]


def test_render_config_round_trips() -> None:
    config = model_config("m", backend="python", inputs=[input_tensor("x", "FP32", [1])])
    text = render_config(config)
    assert text_format.Parse(text, pb.ModelConfig()) == config
    assert 'name: "m"' in text and 'backend: "python"' in text
