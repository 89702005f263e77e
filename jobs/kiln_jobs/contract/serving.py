"""The serving contract: how Triton serves a published plan, what every served model looks like
to a client, and which speculative drafts each runtime serves.

Every runtime serves one model named `spec.serving.modelName`, with the same request and
response tensors (`REQUEST_TENSORS`, `RESPONSE_TENSORS`), decoupled so that a request can stream:
the smoke test, `kiln run`, the OpenAI-compatible endpoint and benchmarks all speak this one
shape (`kiln_jobs.serving.client`). The tensor names are those of TensorRT-LLM's LLM-API model
for Triton (`text_input`, `streaming`, `sampling_param_*` → `text_output`, `finish_reason`),
plus token counts. Two of its behaviours are Kiln's, for every runtime alike: `text_output` is
the continuation without the prompt unless `sampling_param_exclude_input_from_output` is false,
and a streamed response carries only the text new since the previous one.

Kiln's Python models are not copied into the published repository: configs name the `kiln`
Triton backend (`KILN_BACKEND`), a Python-based backend installed with Kiln (its `model.py` lives
in the image, `kiln_jobs/serving/triton_backend/`), and a parameter says which of Kiln's models
it runs. The store holds data, never code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = [
    "EAGLE_DRAFT_LENGTH",
    "ENGINE_INNER_MODELS",
    "KILN_BACKEND",
    "LLMAPI_RESULT_FIELDS",
    "LLMAPI_SURFACE",
    "REQUEST_TENSORS",
    "RESPONSE_TENSORS",
    "RUNTIMES",
    "SAMPLING_PREFIX",
    "EngineBackend",
    "Runtime",
    "RuntimeSpec",
    "SpeculativeAlgorithm",
    "TensorSpec",
    "draft_length",
    "runtime_for",
    "speculation_problem",
]

EngineBackend = Literal["pytorch", "tensorrt-llm", "none"]
Runtime = Literal["python", "tensorrtllm-pytorch", "tensorrtllm-engine"]
SpeculativeAlgorithm = Literal["eagle3", "medusa"]


@dataclass(frozen=True)
class RuntimeSpec:
    """How Triton serves a published plan."""

    name: Runtime
    backend: EngineBackend  # the spec.engine.backend that asks for it
    gpu: bool  # the Triton pod needs GPUs
    speculative: frozenset[str]  # draft algorithms it serves
    summary: str
    # Why it serves no draft of an algorithm it lacks, and what to choose instead.
    no_draft: str = ""


RUNTIMES: Final[dict[str, RuntimeSpec]] = {
    spec.name: spec
    for spec in (
        RuntimeSpec(
            "python",
            "none",
            False,
            frozenset(),
            "Kiln's PyTorch runtime (Triton's Python backend)",
            no_draft="the PyTorch runtime decodes without a draft",
        ),
        RuntimeSpec(
            "tensorrtllm-pytorch",
            "pytorch",
            True,
            frozenset({"eagle3"}),
            "TensorRT-LLM's LLM API (PyTorch backend)",
            no_draft="TensorRT-LLM's PyTorch backend serves EAGLE-3 drafts, not Medusa heads: "
            "use algorithm: eagle3",
        ),
        RuntimeSpec(
            "tensorrtllm-engine",
            "tensorrt-llm",
            True,
            frozenset(),
            "TensorRT-LLM engines (legacy)",
            no_draft="Kiln's TensorRT-LLM engines are built without a draft (engines served "
            "only EAGLE-1/2 and Medusa): use engine.backend: pytorch to serve an EAGLE-3 draft",
        ),
    )
}
if tuple(get_args(Runtime)) != tuple(RUNTIMES) or {s.backend for s in RUNTIMES.values()} != set(
    get_args(EngineBackend)
):
    raise RuntimeError("Runtime, EngineBackend and RUNTIMES differ")


def runtime_for(backend: str, *, fallback_reason: str | None = None) -> Runtime:
    """The runtime that serves a plan whose engine backend is `backend`.

    Args:
        backend: `spec.engine.backend`.
        fallback_reason: Why the GPU runtime cannot be produced here, when the Plan allows
            falling back to Kiln's PyTorch runtime (local runs, clusters without TensorRT-LLM);
            None when nothing stands in the way.
    """
    if fallback_reason is not None:
        return "python"
    return next(spec.name for spec in RUNTIMES.values() if spec.backend == backend)


def speculation_problem(backend: str, algorithm: str) -> str | None:
    """Why the runtime of `backend` cannot serve a draft of `algorithm`, or None.

    The PyTorch runtime (`none`) is not refused: it is the CPU and test runtime, and serves the
    model without its draft (status says so)."""
    spec = RUNTIMES[runtime_for(backend)]
    if algorithm in spec.speculative or not spec.gpu:
        return None
    return spec.no_draft


#: Tokens an EAGLE-3 draft proposes per step, when trained and when served (Model Optimizer
#: trains it for 3 test-time steps).
EAGLE_DRAFT_LENGTH: Final = 3


def draft_length(algorithm: str, medusa_heads: int) -> int:
    """Tokens a draft proposes per step: one per Medusa head, `EAGLE_DRAFT_LENGTH` for EAGLE."""
    return medusa_heads if algorithm == "medusa" else EAGLE_DRAFT_LENGTH


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the served model (Triton's type names, shape without a batch dimension)."""

    name: str
    dtype: Literal["STRING", "BOOL", "INT32", "UINT64", "FP32"]
    dims: tuple[int, ...]
    optional: bool = True


#: `sampling_param_<name>` carries SamplingParams' `<name>`.
SAMPLING_PREFIX: Final = "sampling_param_"
REQUEST_TENSORS: Final = (
    TensorSpec("text_input", "STRING", (-1,), optional=False),
    TensorSpec("streaming", "BOOL", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}max_tokens", "INT32", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}temperature", "FP32", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}top_k", "INT32", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}top_p", "FP32", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}frequency_penalty", "FP32", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}presence_penalty", "FP32", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}seed", "UINT64", (1,)),
    TensorSpec(f"{SAMPLING_PREFIX}stop", "STRING", (-1,)),
    TensorSpec(f"{SAMPLING_PREFIX}exclude_input_from_output", "BOOL", (1,)),
)
RESPONSE_TENSORS: Final = (
    TensorSpec("text_output", "STRING", (-1,)),
    TensorSpec("finish_reason", "STRING", (-1,)),
    TensorSpec("num_input_tokens", "INT32", (1,)),
    TensorSpec("num_output_tokens", "INT32", (1,)),
)

#: The engine runtime's inner models; the front model (`spec.serving.modelName`) calls them.
ENGINE_INNER_MODELS: Final = ("preprocessing", "tensorrt_llm", "postprocessing")

#: The Python-based Triton backend Kiln installs (`<backends>/kiln/model.py`).
KILN_BACKEND: Final = "kiln"

#: Every piece of TensorRT-LLM's LLM API that Kiln's Triton model uses, as (module, attribute
#: path). On CPU a stand-in provides exactly these; a test holds the stand-in to this list.
LLMAPI_SURFACE: Final = (
    ("tensorrt_llm", "LLM"),
    ("tensorrt_llm", "LLM.generate_async"),
    ("tensorrt_llm", "LLM.shutdown"),
    ("tensorrt_llm", "SamplingParams"),
    ("tensorrt_llm.llmapi", "RequestOutput"),
    ("tensorrt_llm.llmapi", "RequestOutput.abort"),
    ("tensorrt_llm.llmapi", "CompletionOutput"),
    ("tensorrt_llm.llmapi.llm_utils", "update_llm_args_with_extra_dict"),
)
#: What Kiln reads of a RequestOutput and its CompletionOutputs.
LLMAPI_RESULT_FIELDS: Final = {
    "RequestOutput": ("outputs", "finished", "prompt_token_ids"),
    "CompletionOutput": ("text", "text_diff", "token_ids", "finish_reason"),
}
