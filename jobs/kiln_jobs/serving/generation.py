"""Text generation on CPU with a KV cache: the CPU runtime's decoding loop.

One small loop instead of `model.generate` so the served model and the checks that compare with it
decode identically, and so first-token latency is measured where it happens. Greedy when
`temperature` is 0 (the default), otherwise temperature / top-k / top-p sampling with an optional
seed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["GenerationResult", "SamplingParams", "generate", "generate_ids", "iter_ids"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; the names follow Triton's TensorRT-LLM ensemble inputs."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_words: tuple[str, ...] = ()
    end_id: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The continuation and how long it took."""

    text: str
    input_tokens: int
    output_ids: list[int] = field(default_factory=list)
    first_token_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def output_tokens(self) -> int:
        """How many tokens were generated."""
        return len(self.output_ids)


def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = torch.where(logits < kth, torch.full_like(logits, -torch.inf), logits)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _end_ids(model: Any, params: SamplingParams) -> set[int]:
    if params.end_id is not None:
        return {params.end_id}
    eos = getattr(model.generation_config, "eos_token_id", None) or model.config.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {int(eos)}


def iter_ids(model: Any, input_ids: list[int], params: SamplingParams) -> Iterator[int]:
    """Decode after `input_ids`, yielding each new token id as soon as it is picked; stops after
    `params.max_tokens` tokens or once an end token was yielded."""
    generator = None
    if params.seed is not None:
        generator = torch.Generator().manual_seed(params.seed)
    end_ids = _end_ids(model, params)
    tokens = torch.tensor([input_ids], dtype=torch.long)
    past = None
    for _ in range(params.max_tokens):
        with torch.inference_mode():
            out = model(input_ids=tokens, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = _pick(out.logits[0, -1], params, generator)
        yield token
        if token in end_ids:
            return
        tokens = torch.tensor([[token]], dtype=torch.long)


def generate_ids(
    model: Any, input_ids: list[int], params: SamplingParams
) -> tuple[list[int], float]:
    """Decode up to `params.max_tokens` tokens after `input_ids`.

    Returns:
        The generated ids (without the prompt, with a final end token if one was produced) and
        the seconds until the first token.
    """
    started = time.perf_counter()
    output: list[int] = []
    first = 0.0
    for token in iter_ids(model, input_ids, params):
        if not output:
            first = time.perf_counter() - started
        output.append(token)
    return output, first


def generate(model: Any, tokenizer: Any, prompt: str, params: SamplingParams) -> GenerationResult:
    """Continue `prompt`; the text excludes the prompt, the end token and anything after a stop
    word.

    Args:
        model: A causal LM (e.g. from `checkpoint.load_checkpoint`).
        tokenizer: Its tokenizer.
        prompt: The text to continue.
        params: Sampling settings.
    """
    started = time.perf_counter()
    input_ids = tokenizer(prompt)["input_ids"]
    ids, first = generate_ids(model, input_ids, params)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for stop in params.stop_words:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return GenerationResult(
        text=text,
        input_tokens=len(input_ids),
        output_ids=ids,
        first_token_seconds=first,
        total_seconds=time.perf_counter() - started,
    )
