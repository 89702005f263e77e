"""Sliding-window perplexity and the accuracy gate."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from kiln_jobs import gate
from kiln_jobs.evaluate import evaluation_tokens, perplexity, windows
from kiln_jobs.plan import DataRef, EvaluationPlan, PTQPlan, QATPlan, TrainingPlan

pytestmark = [pytest.mark.unit, pytest.mark.numerics]

VOCAB = 11


class _Bigram(torch.nn.Module):
    """Logits depend on the previous token only, so every prediction is checkable by hand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB))

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def _by_hand(model: _Bigram, tokens: torch.Tensor) -> float:
    log_probs = torch.log_softmax(model.table, dim=-1)
    nll = -sum(log_probs[a, b] for a, b in itertools.pairwise(tokens))
    return math.exp(float(nll) / (len(tokens) - 1))


def test_windows_score_each_token_once() -> None:
    assert windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]


def test_overlapping_windows_score_every_token_after_the_first() -> None:
    model = _Bigram()
    tokens = torch.randint(0, VOCAB, (37,), generator=torch.Generator().manual_seed(1))
    # With a bigram model context does not matter: overlapping windows give the exact value.
    assert perplexity(model, tokens, seq_length=8, stride=3) == pytest.approx(
        _by_hand(model, tokens)
    )


def test_disjoint_windows_skip_each_window_s_first_token() -> None:
    model = _Bigram()
    tokens = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(2))
    parts = [_by_hand(model, tokens[i : i + 8]) for i in (0, 8)]
    expected = math.exp(sum(7 * math.log(p) for p in parts) / 14)
    assert perplexity(model, tokens, seq_length=8, stride=8) == pytest.approx(expected)


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity() -> None:
    model = _Bigram()
    with torch.no_grad():
        model.table.zero_()
    tokens = torch.randint(0, VOCAB, (20,))
    assert perplexity(model, tokens, seq_length=5, stride=5) == pytest.approx(VOCAB)


def test_the_model_is_left_in_its_training_mode_and_progress_is_reported() -> None:
    model = _Bigram().train()
    seen: list[float] = []
    perplexity(
        model,
        torch.arange(10) % VOCAB,
        seq_length=4,
        stride=4,
        progress=lambda p, m="": seen.append(p),
    )
    assert model.training
    assert seen[-1] == 100.0


def test_evaluation_uses_the_first_samples_times_seq_length_tokens() -> None:
    ref = DataRef(samples=2, seq_length=3)
    assert evaluation_tokens(torch.arange(10), ref).tolist() == [0, 1, 2, 3, 4, 5]


def _evaluation(**fields: object) -> EvaluationPlan:
    return EvaluationPlan(data=DataRef(samples=1, seq_length=8), stride=8, **fields)


def test_degradation_and_the_limit() -> None:
    assert gate.degradation_percent(20.0, 21.0) == pytest.approx(5.0)
    assert gate.degradation_percent(20.0, 19.0) == pytest.approx(-5.0)
    limited = _evaluation(max_degradation_percent=5.0)
    assert gate.passes(limited, 5.0)
    assert not gate.passes(limited, 5.01)
    assert gate.passes(_evaluation(), 1000.0)


def test_escalation_stacks_are_tried_only_when_escalating() -> None:
    calibration = DataRef(samples=1, seq_length=8)
    ptq = PTQPlan(format="int8_sq", calibration=calibration)
    training = TrainingPlan(
        steps=1, learning_rate=1e-5, batch_size=1, data=calibration, checkpoint_every=1
    )
    ladder = ((ptq, QATPlan(training=training)),)
    failing = _evaluation(max_degradation_percent=5.0, escalation=ladder)
    assert gate.attempt_stacks((ptq,), failing) == [(ptq,)]
    escalating = failing.model_copy(update={"on_gate_failure": "escalate"})
    assert gate.attempt_stacks((ptq,), escalating) == [(ptq,), ladder[0]]
    assert gate.stack_label(ladder[0]) == "ptq(int8_sq)+qat"
