"""The serving contract in the real `tritonserver`, for both LLM runtimes Kiln publishes:

- `python`: Kiln's PyTorch runtime (`kiln_jobs.serving.torch_llm`);
- `tensorrtllm-pytorch`: TensorRT-LLM's LLM API, here the labelled stand-in under tests/standins.

Both run Kiln's one LLM model (the `kiln` backend) on the tiny FP8 checkpoint's published
repository, named after the resource's modelName, and must answer every request shape — HTTP,
gRPC, streamed, concurrent, through the OpenAI-compatible endpoint — with the optimized model's
own greedy continuation.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln_jobs.contract import DRAFT_DIR, EAGLE_DRAFT_LENGTH
from kiln_jobs.plan import DataRef, Plan, SpeculativePlan, TrainingPlan
from kiln_jobs.serving.client import InferenceFailed, generate
from kiln_jobs.serving.llm_repository import write_llm_repository
from kiln_jobs.serving.openai_api import OpenAIServer
from kiln_jobs.serving.tritonserver import TritonServer
from tests.integration.serving.conftest import MAX_TOKENS, PROMPT, Published, group_alive
from tests.unit.serving.plans import make_plan

pytestmark = pytest.mark.integration

STANDINS = Path(__file__).parents[2] / "standins"
MODEL = "tiny-chat"
RECORD_ENV = "KILN_STANDIN_RECORD"
CONCURRENT = 8


@dataclass
class Served:
    """A running Triton (and OpenAI endpoint) for one runtime."""

    runtime: str
    server: TritonServer
    openai: OpenAIServer
    record: Path  # what the TensorRT-LLM stand-in was built with


def _serve(published: Published, runtime: str, tmp: Path, plan: Plan) -> Iterator[Served]:
    """Write the runtime's repository beside the checkpoint and serve it."""
    repository = published.root / f"triton-{tmp.name}"
    shutil.rmtree(repository, ignore_errors=True)
    write_llm_repository(plan, repository, runtime)  # type: ignore[arg-type]
    record = tmp / "standin-record.jsonl"
    server = TritonServer(repository, python_path=[STANDINS], log_path=tmp / "triton.log")
    os.environ[RECORD_ENV] = str(record)
    try:
        with server:
            group = server.pid
            openai = OpenAIServer(server.http_url, MODEL, published.root / "checkpoint", port=0)
            openai.start()
            try:
                yield Served(runtime, server, openai, record)
            finally:
                openai.stop()
    finally:
        os.environ.pop(RECORD_ENV, None)
    assert group is not None and not group_alive(group)


def _plan() -> Plan:
    return make_plan(
        backend="pytorch", tensor_parallel=1, max_batch_size=4, max_input_len=128,
        max_seq_len=256, serving={"model_name": MODEL},
    )  # fmt: skip


@pytest.fixture(scope="module", params=["python", "tensorrtllm-pytorch"])
def served(request, tiny_published, tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(request.param)
    yield from _serve(tiny_published, request.param, tmp, _plan())


def test_every_protocol_answers_the_checkpoints_continuation(served, tiny_published) -> None:
    url = served.server
    http = generate(url.http_url, MODEL, PROMPT, max_tokens=MAX_TOKENS)
    grpc = generate(url.grpc_url, MODEL, PROMPT, max_tokens=MAX_TOKENS, protocol="grpc")
    assert http.text == grpc.text == tiny_published.expected
    assert http.output_tokens == grpc.output_tokens == MAX_TOKENS
    assert http.input_tokens and http.finish_reason == "length"


def test_a_streamed_request_arrives_in_pieces(served, tiny_published) -> None:
    for protocol in ("http", "grpc"):
        reply = generate(
            served.server.http_url if protocol == "http" else served.server.grpc_url,
            MODEL, PROMPT, max_tokens=MAX_TOKENS, streaming=True, protocol=protocol,  # type: ignore[arg-type]
        )  # fmt: skip
        assert reply.text == tiny_published.expected, protocol
        assert len([c for c in reply.chunks if c]) > 1, (protocol, reply.chunks)


def test_concurrent_requests_each_get_their_own_answer(served, tiny_published) -> None:
    prompts = [PROMPT, "Another prompt"]

    def ask(index: int) -> str:
        prompt = prompts[index % 2]
        return generate(served.server.http_url, MODEL, prompt, max_tokens=MAX_TOKENS).text

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(ask, range(CONCURRENT)))
    assert answers[0::2] == [tiny_published.expected] * (CONCURRENT // 2)
    other = set(answers[1::2])
    assert len(other) == 1 and other != {tiny_published.expected}


def test_the_openai_endpoint_serves_the_same_text(served, tiny_published) -> None:
    import openai

    client = openai.OpenAI(base_url=served.openai.url, api_key="unused")
    assert [m.id for m in client.models.list()] == [MODEL]
    whole = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    assert whole.choices[0].text == tiny_published.expected
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == MAX_TOKENS
    pieces = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    texts = [chunk.choices[0].text for chunk in pieces]
    assert "".join(texts) == tiny_published.expected and len(texts) > 1

    def ask(_: int) -> str:
        reply = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
        )
        return reply.choices[0].text

    with ThreadPoolExecutor(CONCURRENT) as pool:
        assert set(pool.map(ask, range(CONCURRENT))) == {tiny_published.expected}


def test_the_openai_endpoint_refuses_what_it_cannot_do(served) -> None:
    import openai

    client = openai.OpenAI(base_url=served.openai.url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, n=2)
    # The tiny model's byte tokenizer has no chat template: say so, point at completions.
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_bad_requests_get_errors_not_a_dead_model(served) -> None:
    url = served.server.http_url
    with pytest.raises(InferenceFailed, match="max_seq_len"):
        generate(url, MODEL, PROMPT, max_tokens=1000)
    with pytest.raises(InferenceFailed):
        generate(served.server.grpc_url, "no_such_model", PROMPT, protocol="grpc")
    assert generate(url, MODEL, PROMPT, max_tokens=2).output_tokens == 2  # still serving


def test_what_reaches_tensorrt_llm_is_model_yaml(served, tiny_published) -> None:
    if served.runtime == "python":
        assert not served.record.exists()  # Kiln's own runtime: no TensorRT-LLM involved
        return
    (args,) = [json.loads(line) for line in served.record.read_text().splitlines()]
    assert args["model"] == str(tiny_published.root / "checkpoint")
    assert args["backend"] == "pytorch" and args["max_seq_len"] == 256
    assert args["kv_cache_config"] == {"free_gpu_memory_fraction": 0.85}
    assert args["speculative_config"] is None


def test_an_eagle3_draft_reaches_tensorrt_llm(tiny_published, tmp_path: Path) -> None:
    # The draft directory stands in for a trained EAGLE-3 head (the stand-in checks it holds a
    # model; it does not speculate, and greedy speculation would not change the text).
    draft = tiny_published.root / DRAFT_DIR
    shutil.copytree(tiny_published.root / "checkpoint", draft, dirs_exist_ok=True)
    training = TrainingPlan(
        steps=1, learning_rate=1e-4, batch_size=1, data=DataRef(samples=1, seq_length=8),
        checkpoint_every=1,
    )  # fmt: skip
    plan = _plan()
    eagle = SpeculativePlan(algorithm="eagle3", training=training)
    plan = plan.model_copy(update={"techniques": (eagle, *plan.techniques)})
    try:
        for served in _serve(tiny_published, "tensorrtllm-pytorch", tmp_path, plan):
            reply = generate(served.server.http_url, MODEL, PROMPT, max_tokens=MAX_TOKENS)
            assert reply.text == tiny_published.expected
    finally:
        shutil.rmtree(draft)
    (args,) = [
        json.loads(line) for line in (tmp_path / "standin-record.jsonl").read_text().splitlines()
    ]
    assert args["speculative_config"] == {
        "decoding_type": "Eagle",
        "max_draft_len": EAGLE_DRAFT_LENGTH,
        "speculative_model_dir": str(draft),
        "eagle3_one_model": True,
    }
