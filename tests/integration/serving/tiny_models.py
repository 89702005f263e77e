"""Tiny real checkpoints for the serving tests: a Llama built from a config, a byte-level
tokenizer, real Model Optimizer PTQ and the real `export_hf_checkpoint`.

Nothing is downloaded: the model is random, calibrated on random token ids, and its tokenizer is
a byte-level BPE without merges (every byte is a token), which round-trips any text.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMATS",
    "TinyExport",
    "byte_tokenizer",
    "export_tiny",
    "fused_reference",
    "tiny_llama",
]

# Plan format -> modelopt config name; AWQ block size 64 divides the tiny model's dims.
FORMATS = {
    "fp8": "FP8_DEFAULT_CFG",
    "int8_sq": "INT8_SMOOTHQUANT_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "w4a8_awq": "W4A8_AWQ_BETA_CFG",
}
BLOCK_SIZE = 64
EOS = "<|endoftext|>"


def byte_tokenizer() -> Any:
    """A 257-token byte-level tokenizer (256 bytes + end of text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab[EOS] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)


def tiny_llama(seed: int = 0) -> Any:
    """A 2-layer Llama (GQA, hidden 128) with random weights, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=264,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=256,
        bos_token_id=None,
        pad_token_id=256,
        architectures=["LlamaForCausalLM"],
    )
    return LlamaForCausalLM(config).eval()


def _quant_config(fmt: str, kv_fp8: bool) -> dict[str, Any]:
    import modelopt.torch.quantization as mtq

    config = copy.deepcopy(getattr(mtq, FORMATS[fmt]))
    for entry in config["quant_cfg"]:
        cfg = entry.get("cfg")
        for item in cfg if isinstance(cfg, list) else [cfg] if cfg else []:
            if "block_sizes" in item:
                item["block_sizes"][-1] = BLOCK_SIZE
    if kv_fp8:
        config["quant_cfg"] = config["quant_cfg"] + copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
    return config


@dataclass
class TinyExport:
    """A quantized tiny model, exported, with what the comparisons need."""

    checkpoint: Path
    fake_quant_logits: torch.Tensor  # the modelopt model as calibrated (what was evaluated)
    fused_logits: torch.Tensor  # after the exporter's QKV/gate-up resmoothing (what it wrote)
    fused_model: Any  # the fake-quantized modelopt model after that resmoothing
    probe: torch.Tensor  # the token ids the logits are of


def fused_reference(model: Any) -> Any:
    """A copy of a quantized model with the export's resmoothing applied, still fake-quantized.

    `export_hf_checkpoint` averages the pre_quant_scale of layers sharing an input (q/k/v,
    gate/up), unifies their input and FP8 weight amax and requantizes, because TensorRT-LLM fuses
    those layers. The checkpoint therefore computes this model, not the calibrated one.
    """
    from modelopt.torch.export.unified_export_hf import requantize_resmooth_fused_llm_layers

    fused = copy.deepcopy(model)
    requantize_resmooth_fused_llm_layers(fused)
    return fused


def export_tiny(fmt: str, out: Path, *, kv_fp8: bool = False, seed: int = 0) -> TinyExport:
    """PTQ a tiny Llama to `fmt` with modelopt, export it (with a tokenizer) to `out`."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    model = tiny_llama(seed)
    generator = torch.Generator().manual_seed(seed)
    calibration = [torch.randint(0, 256, (2, 48), generator=generator) for _ in range(4)]
    probe = torch.randint(0, 256, (1, 40), generator=generator)

    def forward_loop(m: Any) -> None:
        for batch in calibration:
            m(batch)

    mtq.quantize(model, _quant_config(fmt, kv_fp8), forward_loop)
    fused = fused_reference(model)
    with torch.no_grad():
        fake = model(probe).logits
        fused_logits = fused(probe).logits
    export_hf_checkpoint(model, export_dir=out)
    byte_tokenizer().save_pretrained(out)
    return TinyExport(out, fake, fused_logits, fused, probe)
