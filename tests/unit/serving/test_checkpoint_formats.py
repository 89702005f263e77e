"""The checkpoint loader's format handling, on hand-made tensors (no model, no modelopt run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kiln_jobs.errors import UserError
from kiln_jobs.serving.checkpoint import (
    QuantizedLinear,
    dequantize_weight,
    fake_quant_fp8,
    fake_quant_int8,
    load_checkpoint,
    read_quant_spec,
    unpack_int4,
)

pytestmark = [pytest.mark.unit, pytest.mark.numerics]


def test_unpack_int4_inverts_modelopts_packing() -> None:
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    torch.manual_seed(0)
    ints = torch.randint(-8, 8, (6, 8)).float()
    scale = torch.ones(6, 2)
    packed = pack_int4_in_uint8(ints, scale, 4)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 8)
    assert torch.equal(unpack_int4(packed).float(), ints)


def test_awq_dequantization_applies_group_scales() -> None:
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    ints = torch.randint(-8, 8, (4, 8)).float()
    scale = torch.tensor([[1.0, 2.0]] * 4)
    weight = ints * scale.repeat_interleave(4, dim=1)
    packed = pack_int4_in_uint8(weight, scale, 4)
    got = dequantize_weight("W4A16_AWQ", {"weight": packed, "weight_scale": scale})
    assert torch.equal(got, weight)


def test_fp8_and_int8_fake_quant() -> None:
    x = torch.tensor([0.1, -1.0, 3.0, 1000.0])
    assert fake_quant_fp8(x, torch.tensor(1.0))[-1].item() == 448.0  # saturates
    assert fake_quant_int8(x, torch.tensor(0.01)).tolist() == pytest.approx([0.1, -1.0, 1.27, 1.27])
    assert fake_quant_int8(-x, torch.tensor(0.01))[-1].item() == pytest.approx(-1.28)


def test_quantized_linear_smooths_then_quantizes() -> None:
    tensors = {
        "weight": torch.tensor([[2, -1]], dtype=torch.int8),
        "weight_scale": torch.tensor([0.5]),
        "input_scale": torch.tensor(0.25),
        "pre_quant_scale": torch.tensor([2.0, 1.0]),
    }
    layer = QuantizedLinear("W8A8_SQ_PER_CHANNEL", tensors, None, torch.float32)
    x = torch.tensor([[0.3, 1.0]])
    # x * s = [0.6, 1.0] -> int8 with 0.25 -> [0.5, 1.0]; W = [1.0, -0.5]
    assert layer(x).item() == pytest.approx(0.5 * 1.0 + 1.0 * -0.5)


def _write(tmp_path: Path, quant: dict) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps({"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": quant})
    )
    return tmp_path


@pytest.mark.parametrize(
    ("quant", "words"),
    [
        ({"quant_algo": "NVFP4", "group_size": 16}, "'NVFP4' cannot be served on CPU"),
        ({"quant_algo": "FP8", "kv_cache_quant_algo": "NVFP4"}, "KV-cache quantization 'NVFP4'"),
    ],
)
def test_unknown_formats_are_refused(tmp_path: Path, quant: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        load_checkpoint(_write(tmp_path, quant))


def test_quant_spec_from_config_json(tmp_path: Path) -> None:
    config = {
        "quantization_config": {
            "quant_method": "modelopt",
            "quant_algo": "FP8",
            "ignore": ["lm_head"],
            "producer": {"name": "modelopt", "version": "0.47.0"},
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = read_quant_spec(tmp_path)
    assert (spec.quant_algo, spec.exclude_modules, spec.producer) == (
        "FP8",
        ("lm_head",),
        "modelopt 0.47.0",
    )
    assert spec.algo_for("lm_head") is None
    assert spec.algo_for("model.layers.0.mlp.up_proj") == "FP8"


def test_mixed_precision_layers(tmp_path: Path) -> None:
    quant = {
        "quant_algo": "MIXED_PRECISION",
        "quantized_layers": {"model.layers.0.mlp.up_proj": {"quant_algo": "W4A16_AWQ"}},
    }
    spec = read_quant_spec(_write(tmp_path, quant))
    assert spec.algo_for("model.layers.0.mlp.up_proj") == "W4A16_AWQ"
    assert spec.algo_for("model.layers.0.mlp.down_proj") is None


def test_other_quantization_methods_are_refused(tmp_path: Path) -> None:
    config = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="not a Model Optimizer checkpoint"):
        read_quant_spec(tmp_path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        load_checkpoint(tmp_path)
