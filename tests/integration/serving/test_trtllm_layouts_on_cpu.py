"""The TensorRT-LLM repositories' wiring in the real `tritonserver`, on CPU.

Only the GPU parts are stood in (`standins/`): the C++ `tensorrt_llm` engine model becomes a
Python model with the same tensors, and `tensorrt_llm.LLM` a CPU class with the same calls. The
generated configs, the ensemble's routing, Kiln's preprocessing / postprocessing / BLS models and
the LLM-API model.py all run as written, and must answer what the CPU runtime answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiln_jobs.serving.client import generate
from kiln_jobs.serving.engine_repository import write_engine_repository
from kiln_jobs.serving.llmapi_repository import UPSTREAM_MODEL_ENV, write_llmapi_repository
from kiln_jobs.serving.triton_config import read_config, write_config
from kiln_jobs.serving.tritonserver import TritonServer
from tests.integration.serving.conftest import MAX_TOKENS, PROMPT
from tests.unit.serving.plans import make_plan

pytestmark = pytest.mark.integration

STANDINS = Path(__file__).parent / "standins"


def _ask(server: TritonServer, model: str) -> list[str]:
    return [
        generate(server.http_url, model, PROMPT, max_tokens=MAX_TOKENS).text,
        generate(server.grpc_url, model, PROMPT, max_tokens=MAX_TOKENS, protocol="grpc").text,
    ]


def test_engine_ensemble_and_bls(tiny_published, tmp_path: Path) -> None:
    plan = make_plan(tensor_parallel=1, max_batch_size=2, max_input_len=128, max_seq_len=256)
    repository = tmp_path / "triton"
    # Mounted at the publish dir, so tokenizer_dir and the stand-in's checkpoint resolve here.
    write_engine_repository(plan, repository, mount=str(tiny_published.root))
    engine = read_config(repository / "tensorrt_llm")
    assert engine.backend == "tensorrtllm"
    engine.backend = "python"
    write_config(repository / "tensorrt_llm", engine)
    shutil.copyfile(STANDINS / "engine_model.py", repository / "tensorrt_llm" / "1" / "model.py")

    with TritonServer(repository) as server:
        answers = _ask(server, "ensemble") + _ask(server, "tensorrt_llm_bls")
    assert answers == [tiny_published.expected] * 4


def test_llmapi_model(tiny_published, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(UPSTREAM_MODEL_ENV, raising=False)
    plan = make_plan(backend="pytorch", tensor_parallel=1)
    repository = tmp_path / "triton"
    write_llmapi_repository(plan, repository, mount=str(tiny_published.root))
    with TritonServer(repository, python_path=[STANDINS]) as server:
        answers = _ask(server, "tensorrt_llm")
    assert answers == [tiny_published.expected] * 2
