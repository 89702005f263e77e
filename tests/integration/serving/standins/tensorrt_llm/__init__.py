"""A CPU stand-in for `tensorrt_llm`'s LLM API (`LLM`, `SamplingParams`): test-only."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

__all__ = ["LLM", "SamplingParams"]

# What the last LLM was created with, for the tests to check model.yaml reached it.
LAST_ARGS: dict[str, Any] = {}


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None


class LLM:
    def __init__(self, model: str, backend: str = "pytorch", **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        from kiln_jobs.serving.checkpoint import load_checkpoint

        if backend != "pytorch":
            raise ValueError(f"backend {backend}")
        if kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1) != 1:
            raise ValueError("the CPU stand-in runs TP=PP=1 only")
        LAST_ARGS.update(model=model, backend=backend, **kwargs)
        self.model = load_checkpoint(model)
        self.tokenizer = AutoTokenizer.from_pretrained(model)

    def generate(self, prompts: list[str], params: list[SamplingParams]) -> list[Any]:
        from kiln_jobs.serving import generation

        results = []
        for prompt, sampling in zip(prompts, params, strict=True):
            reply = generation.generate(
                self.model,
                self.tokenizer,
                prompt,
                generation.SamplingParams(max_tokens=sampling.max_tokens),
            )
            completion = SimpleNamespace(text=reply.text, finish_reason="length")
            results.append(SimpleNamespace(outputs=[completion]))
        return results

    def shutdown(self) -> None:
        self.model = None
