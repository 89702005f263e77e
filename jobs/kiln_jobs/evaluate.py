"""Perplexity on the evaluation text, with a sliding window.

The evaluation text is the first `samples * seq_length` tokens of the evaluation data's token
stream (`sources.data.token_stream`, role `eval`; shorter text is used whole). Windows of
`seq_length` tokens start every `stride` tokens. Each window scores only the tokens that no earlier
window scored; the tokens before them are context. So:

- `stride == seq_length`: disjoint windows; the first token of each window is context only;
- `stride < seq_length`: overlapping windows; every token after the first is scored once, with at
  least `seq_length - stride` tokens of context (closer to the model's real use, and slower).

Perplexity is `exp(total negative log-likelihood / scored tokens)`, in float64 over all windows.
The same text, windows and model code score the baseline and every optimized model, so the
degradation between them is the technique's alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kiln_jobs.plan import DataRef
from kiln_jobs.techniques.context import ProgressReporter

__all__ = ["evaluation_tokens", "perplexity", "windows"]


def evaluation_tokens(stream: torch.Tensor, ref: DataRef) -> torch.Tensor:
    """The part of the evaluation stream that is scored: its first `samples * seq_length`."""
    return stream[: ref.samples * ref.seq_length]


def windows(n_tokens: int, seq_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `n_tokens` tokens."""
    spans = []
    scored_until = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + seq_length, n_tokens)
        spans.append((begin, end, max(scored_until, begin + 1)))
        scored_until = end
        if end == n_tokens:
            break
    return spans


@torch.inference_mode()
def perplexity(
    model: Any,
    tokens: torch.Tensor,
    *,
    seq_length: int,
    stride: int,
    progress: ProgressReporter | None = None,
) -> float:
    """Sliding-window perplexity of `model` on a 1-D token tensor (see the module docstring)."""
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError("perplexity needs a 1-D tensor of at least two tokens")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    spans = windows(tokens.numel(), seq_length, stride)
    total_nll, total_scored = 0.0, 0
    try:
        for index, (begin, end, first_scored) in enumerate(spans, start=1):
            ids = tokens[begin:end].to(device)[None]
            logits = model(input_ids=ids).logits[0].float()
            # Position p predicts token p + 1: score targets first_scored .. end - 1.
            targets = ids[0, first_scored - begin :]
            predictions = logits[first_scored - begin - 1 : -1]
            nll = torch.nn.functional.cross_entropy(predictions, targets, reduction="sum")
            total_nll += float(nll.double())
            total_scored += targets.numel()
            if progress is not None:
                progress(100.0 * index / len(spans), f"window {index}/{len(spans)}")
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_scored)
