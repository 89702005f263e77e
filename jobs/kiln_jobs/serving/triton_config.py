"""Triton `config.pbtxt` files built as protobuf messages, never as text templates.

Every file is written with `text_format.MessageToString` and parsed back before it is written, so
a field Triton would reject (a wrong type, an unknown name) fails here, at generation time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

__all__ = [
    "bool_param",
    "input_tensor",
    "model_config",
    "output_tensor",
    "parameters",
    "read_config",
    "render_config",
    "write_config",
]

CONFIG_FILE = "config.pbtxt"
_DTYPES = {
    "BOOL": pb.TYPE_BOOL,
    "UINT8": pb.TYPE_UINT8,
    "INT32": pb.TYPE_INT32,
    "INT64": pb.TYPE_INT64,
    "UINT64": pb.TYPE_UINT64,
    "FP16": pb.TYPE_FP16,
    "FP32": pb.TYPE_FP32,
    "STRING": pb.TYPE_STRING,
}


def input_tensor(
    name: str,
    dtype: str,
    dims: Iterable[int],
    *,
    optional: bool = False,
    scalar: bool = False,
    ragged: bool = False,
) -> pb.ModelInput:
    """One model input.

    Args:
        name: Tensor name.
        dtype: Triton type without the `TYPE_` prefix (`INT32`, `STRING`, ...).
        dims: Shape without the batch dimension.
        optional: The request may omit it.
        scalar: Reshape `[1]` to a scalar, as the TensorRT-LLM backend expects for its scalars.
        ragged: `allow_ragged_batch` (per-request lengths in one batch).
    """
    tensor = pb.ModelInput(name=name, data_type=_DTYPES[dtype], dims=list(dims), optional=optional)
    if scalar:
        tensor.reshape.SetInParent()  # an empty shape: the batched [1] becomes a scalar
    if ragged:
        tensor.allow_ragged_batch = True
    return tensor


def output_tensor(name: str, dtype: str, dims: Iterable[int]) -> pb.ModelOutput:
    """One model output; `dims` excludes the batch dimension."""
    return pb.ModelOutput(name=name, data_type=_DTYPES[dtype], dims=list(dims))


def bool_param(value: bool) -> str:
    """Booleans as the TensorRT-LLM backend parses them."""
    return "true" if value else "false"


def parameters(config: pb.ModelConfig, values: Mapping[str, str | int | float]) -> None:
    """Set string parameters (`parameters { key ... value { string_value ... } }`)."""
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def model_config(
    name: str,
    *,
    backend: str = "",
    platform: str = "",
    max_batch_size: int = 0,
    inputs: Iterable[pb.ModelInput] = (),
    outputs: Iterable[pb.ModelOutput] = (),
    instances: int | None = 1,
    decoupled: bool | None = None,
    dynamic_batching: bool = False,
    queue_delay_us: int = 0,
) -> pb.ModelConfig:
    """A model config with the fields every Kiln model sets.

    Args:
        name: Model name (its directory name).
        backend: `python`, `tensorrtllm`, ...; empty for an ensemble.
        platform: `ensemble` for an ensemble.
        max_batch_size: 0 disables Triton's batch dimension.
        inputs: Input tensors.
        outputs: Output tensors.
        instances: CPU-kind instance count; None for no `instance_group` (ensembles).
        decoupled: Set `model_transaction_policy.decoupled` when not None.
        dynamic_batching: Enable the dynamic batcher.
        queue_delay_us: The batcher's `max_queue_delay_microseconds`.
    """
    config = pb.ModelConfig(
        name=name, backend=backend, platform=platform, max_batch_size=max_batch_size
    )
    config.input.extend(inputs)
    config.output.extend(outputs)
    if instances is not None:
        config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    if decoupled is not None:
        config.model_transaction_policy.decoupled = decoupled
    if dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
        if max_batch_size:
            config.dynamic_batching.preferred_batch_size.append(max_batch_size)
    return config


def render_config(config: pb.ModelConfig) -> str:
    """The text form, checked to parse back to the same message."""
    text = text_format.MessageToString(config)
    parsed = text_format.Parse(text, pb.ModelConfig())
    if parsed != config:
        raise ValueError(f"model config {config.name!r} does not survive a text round trip")
    return text


def write_config(model_dir: Path, config: pb.ModelConfig) -> Path:
    """Write `<model_dir>/config.pbtxt` (creating the directory)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    path.write_text(render_config(config))
    return path


def read_config(model_dir: Path) -> pb.ModelConfig:
    """Parse `<model_dir>/config.pbtxt`."""
    return text_format.Parse((model_dir / CONFIG_FILE).read_text(), pb.ModelConfig())
