"""The CPU loader computes what the quantized checkpoint computes: real modelopt PTQ + export.

Two references per format:
- the fake-quantized modelopt model after the exporter's resmoothing (`fused_reference`): the
  numerics the checkpoint holds. Tolerance 1e-4 on logits of magnitude ~1 (float32 round-off;
  measured 2e-7 to 5e-7 over the default, AVX2 and AVX-512 kernels, 1 and 2 threads); W4A8
  5e-2, because its FP8 activation rounding flips where the exporter folded AWQ scales into the
  RMSNorm weights (same math, other float order): 3e-7 on most kernels, 1.0e-4 with AVX2's.
- the model as calibrated (before export): equal for FP8; INT8-SQ and AWQ move when the exporter
  averages the smoothing scales of q/k/v and gate/up, so only the greedy continuation is compared
  there, and only for FP8 and INT8-SQ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln_jobs.serving.checkpoint import QuantizedLinear, load_checkpoint, read_quant_spec
from kiln_jobs.serving.generation import SamplingParams, generate_ids
from tests.integration.serving.tiny_models import byte_tokenizer, export_tiny

pytestmark = [pytest.mark.integration, pytest.mark.numerics]

TOLERANCE = {"fp8": 1e-4, "int8_sq": 1e-4, "int4_awq": 1e-4, "w4a8_awq": 5e-2}
ALGO = {"fp8": "FP8", "int8_sq": "W8A8_SQ_PER_CHANNEL", "int4_awq": "W4A16_AWQ",
        "w4a8_awq": "W4A8_AWQ"}  # fmt: skip


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module", params=sorted(TOLERANCE))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    fmt = request.param
    return fmt, export_tiny(fmt, tmp_path_factory.mktemp(fmt) / "checkpoint")


def test_logits_match_the_exported_numerics(exported) -> None:
    fmt, export = exported
    model = load_checkpoint(export.checkpoint)
    got = _logits(model, export.probe)
    error = (got - export.fused_logits).abs().max().item()
    print(f"{fmt}: max |logit error| vs export numerics = {error:.2e}")
    assert error <= TOLERANCE[fmt]
    assert read_quant_spec(export.checkpoint).quant_algo == ALGO[fmt]
    assert any(isinstance(m, QuantizedLinear) for m in model.modules())


def test_greedy_continuation_matches(exported) -> None:
    _, export = exported
    model = load_checkpoint(export.checkpoint)
    prompt = export.probe[0, :16].tolist()
    params = SamplingParams(max_tokens=12)
    ours, _ = generate_ids(model, prompt, params)
    reference, _ = generate_ids(export.fused_model, prompt, params)
    assert ours == reference


def test_fp8_matches_the_calibrated_model_and_naive_loading_does_not(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    export = export_tiny("fp8", tmp_path / "checkpoint")
    ours = _logits(load_checkpoint(export.checkpoint), export.probe)
    assert (ours - export.fake_quant_logits).abs().max().item() <= 1e-4
    # transformers drops weight_scale on CPU: the weights are used unscaled, silently.
    naive = AutoModelForCausalLM.from_pretrained(export.checkpoint).eval()
    naive_error = (_logits(naive, export.probe) - export.fake_quant_logits).abs().max().item()
    print(f"fp8: naive transformers loading is off by {naive_error:.2f}")
    assert naive_error > 0.1


def test_int8_sq_continuation_matches_the_calibrated_model(tmp_path: Path) -> None:
    export = export_tiny("int8_sq", tmp_path / "checkpoint")
    ours = _logits(load_checkpoint(export.checkpoint), export.probe)
    assert torch.equal(ours.argmax(-1), export.fake_quant_logits.argmax(-1))


def test_fp8_kv_cache_is_reproduced(tmp_path: Path) -> None:
    export = export_tiny("fp8", tmp_path / "checkpoint", kv_fp8=True)
    assert read_quant_spec(export.checkpoint).kv_cache_quant_algo == "FP8"
    model = load_checkpoint(export.checkpoint)
    assert model.model.layers[0].self_attn.kiln_k_scale.item() > 0
    error = (_logits(model, export.probe) - export.fused_logits).abs().max().item()
    assert error <= 1e-4
    # Decoding with the cache quantizes the cached keys the same way as a full forward pass.
    prompt = export.probe[0, :16].tolist()
    ours, _ = generate_ids(model, prompt, SamplingParams(max_tokens=8))
    reference, _ = generate_ids(export.fused_model, prompt, SamplingParams(max_tokens=8))
    assert ours == reference


def test_tokenizer_round_trips_text() -> None:
    tokenizer = byte_tokenizer()
    text = "Kiln serves FP8 on CPU — grüße"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
