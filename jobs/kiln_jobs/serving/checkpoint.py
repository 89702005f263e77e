"""Load Model Optimizer's unified HF checkpoint on CPU with the real quantized numerics.

`export_hf_checkpoint` writes quantized weights (FP8, int8, packed int4) beside their scales
(`weight_scale`, `weight_scale_2`, `input_scale`, `pre_quant_scale`, `k_scale`/`v_scale`).
transformers loads such a checkpoint on CPU while silently dropping the scales, so the model
computes with unscaled weights and answers nonsense without any error. This module reads the
quantization from `hf_quant_config.json` (or config.json's `quantization_config`) and replaces every
quantized Linear with a `QuantizedLinear` that computes what the quantized kernels compute:

| quant_algo            | weight                                   | activation (per tensor)   |
|-----------------------|------------------------------------------|---------------------------|
| FP8                   | fp8 x weight_scale                       | FP8 E4M3 with input_scale |
| W8A8_SQ_PER_CHANNEL   | int8 x weight_scale[out]                 | x*pre_quant_scale, int8   |
| W4A16_AWQ             | int4 (packed) x weight_scale[out, group] | x*pre_quant_scale         |
| W4A8_AWQ              | int4 x weight_scale, then FP8 with scale_2 | x*pre_quant_scale, FP8  |

An FP8 KV cache (`kv_cache_quant_algo: FP8`) is reproduced by an attention function that
fake-quantizes keys (after RoPE) and values with `k_scale`/`v_scale`, as Model Optimizer's
quantized attention does. Weights are dequantized once at load into the compute dtype: the
numerics are those of the quantized model, the memory and speed those of a dense one. Any other
format is refused with a clear error instead of being served wrong.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln_jobs.errors import UserError

__all__ = [
    "SUPPORTED_KV_CACHE_ALGOS",
    "SUPPORTED_QUANT_ALGOS",
    "QuantSpec",
    "QuantizedLinear",
    "dequantize_weight",
    "fake_quant_fp8",
    "fake_quant_int8",
    "load_checkpoint",
    "read_quant_spec",
    "unpack_int4",
]

FP8_MAX = 448.0
SUPPORTED_QUANT_ALGOS = ("FP8", "W8A8_SQ_PER_CHANNEL", "W4A16_AWQ", "W4A8_AWQ")
SUPPORTED_KV_CACHE_ALGOS = ("FP8",)
_ATTENTION_NAME = "kiln_fp8_kv"
# Suffixes of the tensors that belong to a quantized Linear rather than to the model.
_QUANT_SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale")
_KV_SUFFIXES = ("k_scale", "v_scale")


@dataclass(frozen=True)
class QuantSpec:
    """What a checkpoint's quantization is, as its producer declared it."""

    quant_algo: str | None
    kv_cache_quant_algo: str | None = None
    group_size: int | None = None
    exclude_modules: tuple[str, ...] = ()
    # Per-layer algorithms of a MIXED_PRECISION checkpoint.
    layer_algos: Mapping[str, str] = field(default_factory=dict)
    producer: str | None = None

    def algo_for(self, module: str) -> str | None:
        """The algorithm that quantized `module`, or None when it is not quantized."""
        if any(fnmatch.fnmatch(module, pattern) for pattern in self.exclude_modules):
            return None
        if self.quant_algo == "MIXED_PRECISION":
            return self.layer_algos.get(module)
        return self.quant_algo


def read_quant_spec(checkpoint_dir: Path) -> QuantSpec:
    """Read the quantization of a unified HF checkpoint.

    Args:
        checkpoint_dir: The directory `export_hf_checkpoint` wrote.

    Returns:
        The declared quantization; `quant_algo` None for an unquantized checkpoint.
    """
    hf_quant = checkpoint_dir / "hf_quant_config.json"
    if hf_quant.is_file():
        data = json.loads(hf_quant.read_text())
        quant = data.get("quantization", {})
        producer = data.get("producer", {})
    else:
        config = json.loads((checkpoint_dir / "config.json").read_text())
        quant = dict(config.get("quantization_config") or {})
        producer = quant.get("producer", {})
        if quant and quant.get("quant_method") != "modelopt":
            raise UserError(
                f"{checkpoint_dir}: quantization method {quant.get('quant_method')!r} is not a "
                "Model Optimizer checkpoint; Kiln's CPU runtime serves only modelopt exports"
            )
        quant.setdefault("exclude_modules", quant.get("ignore", []))
    layers = quant.get("quantized_layers") or {}
    return QuantSpec(
        quant_algo=quant.get("quant_algo"),
        kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
        group_size=quant.get("group_size"),
        exclude_modules=tuple(quant.get("exclude_modules") or ()),
        layer_algos={name: cfg["quant_algo"] for name, cfg in layers.items()},
        producer=f"{producer.get('name')} {producer.get('version')}" if producer else None,
    )


def fake_quant_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Quantize to FP8 E4M3 with a per-tensor scale and back, saturating at +-448."""
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).to(x.dtype)


def fake_quant_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Quantize to int8 [-128, 127] with a per-tensor scale and back (modelopt's full range)."""
    q = torch.clamp(torch.round(x.float() / scale), -128, 127)
    return (q * scale).to(x.dtype)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Unpack modelopt's int4 layout: two's-complement nibbles of rows 2i (low) and 2i+1 (high).

    Args:
        packed: uint8 tensor of shape (out // 2, in).

    Returns:
        int8 tensor of shape (out, in) with values in [-8, 7].
    """
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    nibbles = torch.stack((low, high), dim=1)  # (out // 2, 2, in)
    nibbles = torch.where(nibbles >= 8, nibbles - 16, nibbles)
    return nibbles.reshape(-1, packed.shape[-1])


def _group_scale(scale: torch.Tensor, in_features: int) -> torch.Tensor:
    group = in_features // scale.shape[-1]
    return scale.float().repeat_interleave(group, dim=-1)


def dequantize_weight(algo: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The float32 weight a quantized Linear computes with.

    Args:
        algo: The layer's `quant_algo`.
        tensors: The layer's exported tensors by suffix (`weight`, `weight_scale`, ...).

    Returns:
        The dequantized (out, in) weight.
    """
    weight, scale = tensors["weight"], tensors["weight_scale"].float()
    if algo == "FP8":
        w = weight.view(torch.float8_e4m3fn).float()
        return w * (scale[:, None] if scale.ndim == 1 else scale)
    if algo == "W8A8_SQ_PER_CHANNEL":
        return weight.float() * scale.reshape(-1, 1)
    if algo in ("W4A16_AWQ", "W4A8_AWQ"):
        ints = unpack_int4(weight).float()
        w = ints * _group_scale(scale, ints.shape[-1])
        if algo == "W4A8_AWQ":
            # The kernel dequantizes int4 to FP8 with the per-tensor weight_scale_2.
            w = fake_quant_fp8(w, tensors["weight_scale_2"].float())
        return w
    raise UserError(_unsupported(algo))


def _unsupported(algo: str | None) -> str:
    return (
        f"quantization {algo!r} cannot be served on CPU by Kiln (supported: "
        f"{', '.join(SUPPORTED_QUANT_ALGOS)}); serve it with TensorRT-LLM on a GPU"
    )


class QuantizedLinear(nn.Module):
    """A Linear that computes what the quantized kernel computes, on any device.

    y = Q_act(x * pre_quant_scale) @ W^T + b, with W dequantized from the exported tensors and
    Q_act the per-tensor activation quantization (FP8 or int8) when the format has one.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    pre_quant_scale: torch.Tensor | None
    input_scale: torch.Tensor | None

    def __init__(
        self,
        algo: str,
        tensors: Mapping[str, torch.Tensor],
        bias: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.algo = algo
        weight = dequantize_weight(algo, tensors).to(dtype)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        pre = tensors.get("pre_quant_scale")
        self.register_buffer("pre_quant_scale", None if pre is None else pre.to(dtype))
        scale = tensors.get("input_scale")
        self.register_buffer("input_scale", None if scale is None else scale.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the smoothing, the activation quantization and the matmul."""
        if self.pre_quant_scale is not None:
            x = x * self.pre_quant_scale
        if self.input_scale is not None:
            if self.algo == "W8A8_SQ_PER_CHANNEL":
                x = fake_quant_int8(x, self.input_scale)
            else:
                x = fake_quant_fp8(x, self.input_scale)
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """Show the format next to the shape."""
        return f"{self.in_features}, {self.out_features}, algo={self.algo}"


def _read_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{checkpoint_dir}: no *.safetensors files (not an HF checkpoint)")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(path))
    return state


def _split_quantized(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]:
    """Pop every quantized Linear's tensors and every KV-cache scale out of `state`."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    kv: dict[str, dict[str, torch.Tensor]] = {}
    for key in [k for k in state if k.endswith(".weight_scale")]:
        prefix = key[: -len(".weight_scale")]
        tensors = {"weight": state.pop(f"{prefix}.weight")}
        for suffix in _QUANT_SUFFIXES:
            if f"{prefix}.{suffix}" in state:
                tensors[suffix] = state.pop(f"{prefix}.{suffix}")
        layers[prefix] = tensors
    for key in [k for k in state if k.rsplit(".", 1)[-1] in _KV_SUFFIXES]:
        proj, suffix = key.rsplit(".", 1)
        attention = proj.rsplit(".", 1)[0]
        kv.setdefault(attention, {})[suffix] = state.pop(key)
    return layers, kv


def _check_leftovers(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse quantized tensors that no known layout explains (never serve them raw)."""
    for key, tensor in state.items():
        stray = key.rsplit(".", 1)[-1] in _QUANT_SUFFIXES
        if stray or tensor.dtype in (torch.int8, torch.uint8, torch.float8_e4m3fn):
            raise UserError(
                f"checkpoint tensor {key} ({tensor.dtype}) belongs to a quantization layout "
                "Kiln cannot dequantize on CPU"
            )


def _fp8_kv_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA attention with keys and values fake-quantized to FP8, as the FP8 KV cache stores."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    k_scale, v_scale = getattr(module, "kiln_k_scale", None), getattr(module, "kiln_v_scale", None)
    if k_scale is not None:
        key = fake_quant_fp8(key, k_scale)
    if v_scale is not None:
        value = fake_quant_fp8(value, v_scale)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def _register_kv_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION_NAME, _fp8_kv_attention)


def _check_spec(spec: QuantSpec, checkpoint_dir: Path) -> None:
    algos = set(spec.layer_algos.values()) if spec.quant_algo == "MIXED_PRECISION" else set()
    if spec.quant_algo not in (None, "MIXED_PRECISION"):
        algos.add(spec.quant_algo)
    for algo in sorted(algos):
        if algo not in SUPPORTED_QUANT_ALGOS:
            raise UserError(f"{checkpoint_dir}: {_unsupported(algo)}")
    kv_algo = spec.kv_cache_quant_algo
    if kv_algo is not None and kv_algo not in SUPPORTED_KV_CACHE_ALGOS:
        raise UserError(
            f"{checkpoint_dir}: KV-cache quantization {kv_algo!r} cannot be served on CPU "
            f"(supported: {', '.join(SUPPORTED_KV_CACHE_ALGOS)})"
        )


def _build_model(checkpoint_dir: Path, dtype: torch.dtype, fp8_kv: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint_dir)
    # Without this transformers would pick its own quantizer for the checkpoint; Kiln dequantizes.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    attention = _ATTENTION_NAME if fp8_kv else "sdpa"
    if fp8_kv:
        _register_kv_attention()
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)


def _install_layers(
    model: nn.Module,
    layers: Mapping[str, Mapping[str, torch.Tensor]],
    spec: QuantSpec,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> None:
    for name, tensors in layers.items():
        algo = spec.algo_for(name) or spec.quant_algo
        if algo not in SUPPORTED_QUANT_ALGOS:
            raise UserError(f"layer {name}: {_unsupported(algo)}")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if not isinstance(getattr(parent, child, None), nn.Linear):
            raise UserError(f"checkpoint quantizes {name}, which is not a Linear in this model")
        bias = state.pop(f"{name}.bias", None)
        setattr(parent, child, QuantizedLinear(algo, tensors, bias, dtype))


def _install_kv_scales(model: nn.Module, kv: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    for name, scales in kv.items():
        attention = model.get_submodule(name)
        for suffix, value in scales.items():
            attention.register_buffer(f"kiln_{suffix}", value.float().reshape(()))


def load_checkpoint(checkpoint_dir: Path | str, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a Model Optimizer unified HF checkpoint for CPU inference with its real numerics.

    Args:
        checkpoint_dir: The directory `export_hf_checkpoint` wrote (a plain HF checkpoint loads
            too: it simply has no quantized layers).
        dtype: The compute dtype. float32 keeps the result closest to the evaluated model.

    Returns:
        The causal LM in eval mode.

    Raises:
        UserError: The checkpoint uses a format this module cannot reproduce faithfully.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "config.json").is_file():
        raise UserError(f"{checkpoint_dir}: no config.json (not an HF checkpoint)")
    spec = read_quant_spec(checkpoint_dir)
    _check_spec(spec, checkpoint_dir)
    state = _read_state_dict(checkpoint_dir)
    layers, kv = _split_quantized(state)
    if layers and spec.quant_algo is None:
        raise UserError(f"{checkpoint_dir}: quantized tensors but no quantization declared")
    if kv and spec.kv_cache_quant_algo is None:
        raise UserError(f"{checkpoint_dir}: KV-cache scales but no KV-cache quantization declared")
    model = _build_model(checkpoint_dir, dtype, fp8_kv=bool(kv))
    _install_layers(model, layers, spec, state, dtype)
    _install_kv_scales(model, kv)
    _check_leftovers(state)
    _load_dense(model, state, dtype)
    if (checkpoint_dir / "generation_config.json").is_file():
        # End tokens and defaults as exported, not as re-derived from config.json.
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(checkpoint_dir)  # type: ignore[assignment]
    return model.eval()


def _load_dense(model: Any, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    quantized = {
        f"{name}.{buffer}"
        for name, module in model.named_modules()
        if isinstance(module, QuantizedLinear)
        for buffer in ("weight", "bias", "pre_quant_scale", "input_scale")
    }
    # KV scales were installed from the checkpoint already; the names are Kiln's own.
    missing = [k for k in result.missing_keys if k not in quantized and ".kiln_" not in k]
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        missing = [k for k in missing if k != "lm_head.weight"]
        model.tie_weights()
    if missing or result.unexpected_keys:
        raise UserError(
            f"checkpoint does not match its config: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
