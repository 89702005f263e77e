"""The TensorRT-LLM engine repository's wiring in the real `tritonserver`, on CPU.

Only the GPU part is stood in (`tests/standins/engine_model.py`): the C++ `tensorrt_llm` engine
model becomes a Python model with the same tensors. The generated configs and Kiln's front
(BLS), preprocessing and postprocessing models run as written, and must answer what the other
runtimes answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiln_jobs.serving.client import generate
from kiln_jobs.serving.engine_repository import write_engine_repository
from kiln_jobs.serving.triton_config import read_config, write_config
from kiln_jobs.serving.tritonserver import TritonServer
from tests.integration.serving.conftest import MAX_TOKENS, PROMPT
from tests.unit.serving.plans import make_plan

pytestmark = pytest.mark.integration

STANDINS = Path(__file__).parents[2] / "standins"


def test_engine_front_model_answers_like_the_other_runtimes(tiny_published, tmp_path: Path) -> None:
    plan = make_plan(
        tensor_parallel=1, max_batch_size=2, max_input_len=128, max_seq_len=256,
        serving={"model_name": "legacy"},
    )  # fmt: skip
    repository = tmp_path / "triton"
    # Mounted at the publish dir, so tokenizer_dir and the stand-in's checkpoint resolve here.
    write_engine_repository(plan, repository, mount=str(tiny_published.root))
    engine = read_config(repository / "tensorrt_llm")
    assert engine.backend == "tensorrtllm"
    engine.backend = "python"
    write_config(repository / "tensorrt_llm", engine)
    shutil.copyfile(STANDINS / "engine_model.py", repository / "tensorrt_llm" / "1" / "model.py")

    with TritonServer(repository) as server:
        http = generate(server.http_url, "legacy", PROMPT, max_tokens=MAX_TOKENS)
        grpc = generate(server.grpc_url, "legacy", PROMPT, max_tokens=MAX_TOKENS, protocol="grpc")
        streamed = generate(
            server.http_url, "legacy", PROMPT, max_tokens=MAX_TOKENS, streaming=True
        )
    assert http.text == grpc.text == streamed.text == tiny_published.expected
    assert http.output_tokens == MAX_TOKENS and http.finish_reason == "length"
    assert len(streamed.chunks) == 1  # engines answer a streaming request in one piece
