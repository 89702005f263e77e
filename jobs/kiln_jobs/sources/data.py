"""Data sources: text to calibrate, train and evaluate on, as token blocks.

Sources (`DataRef.source`):

- `builtin://common-licenses`: real English text shipped with the OS under
  `/usr/share/common-licenses`. The `eval` role reads GPL-3 only; every other role reads
  Apache-2.0, MPL-2.0, GFDL-1.3, MPL-1.1, Artistic, CC0-1.0 and BSD. The GPL and LGPL family is
  left out of those, because its texts share whole passages with GPL-3: calibration and training
  never see evaluation text.
- a file (`file://`, `pvc://`, `s3://`): `.jsonl` (one JSON object per line, text in
  `DataRef.text_field`) or plain text (`.txt`, `.md`: one document per file);
- a directory: a dataset saved with HF `datasets.save_to_disk` (needs the `datasets` package;
  a `DatasetDict` gives its `validation`/`test` split to `eval` and `train` to the other roles),
  or else every `.jsonl`/`.txt`/`.md` file under it, in path order;
- `hf://datasets/org/name`: a Hub dataset snapshot, read as a directory.

Documents are tokenized without special tokens and joined with the tokenizer's EOS token into one
stream. `token_blocks` cuts the stream into `DataRef.samples` rows of `DataRef.seq_length`
tokens. Calibration and training wrap around a stream that is too short (a small corpus still
calibrates); evaluation never repeats text: it gets as many whole rows as the text holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from kiln_jobs.errors import SourceNotFound, UserError
from kiln_jobs.plan import DataRef
from kiln_jobs.sources import hub, s3
from kiln_jobs.sources.uri import local_path, parse_uri

__all__ = [
    "EVAL_ROLE",
    "blocks_digest",
    "builtin_files",
    "read_documents",
    "token_blocks",
    "token_stream",
]

log = logging.getLogger(__name__)

BUILTIN_LICENSES = "builtin://common-licenses"
LICENSES_DIR = Path("/usr/share/common-licenses")
EVAL_ROLE = "eval"
ROLES = ("calibration", "train", EVAL_ROLE)
_EVAL_LICENSES = ("GPL-3",)
_OTHER_LICENSES = ("Apache-2.0", "MPL-2.0", "GFDL-1.3", "MPL-1.1", "Artistic", "CC0-1.0", "BSD")
_TEXT_SUFFIXES = (".txt", ".md")


def builtin_files(role: str) -> list[Path]:
    """The license files the built-in source reads for a role."""
    names = _EVAL_LICENSES if role == EVAL_ROLE else _OTHER_LICENSES
    files = [LICENSES_DIR / name for name in names if (LICENSES_DIR / name).is_file()]
    if not files:
        raise SourceNotFound(
            f"{BUILTIN_LICENSES}: none of {', '.join(names)} is under {LICENSES_DIR} (Debian's "
            "base-files installs them); point the data source at your own text instead"
        )
    return files


def read_documents(ref: DataRef, role: str, cache_dir: Path) -> list[str]:
    """The documents of a data source for a role, in a fixed order."""
    if ref.source == BUILTIN_LICENSES:
        return [path.read_text(encoding="utf-8") for path in builtin_files(role)]
    uri = parse_uri(ref.source)
    match uri.scheme:
        case "file" | "pvc":
            path = local_path(uri)
        case "s3":
            bucket, prefix = s3.split(uri)
            path = cache_dir / "data" / hashlib.sha256(str(uri).encode()).hexdigest()[:16]
            if not (path / ".complete").exists():
                s3.open_bucket(bucket).download_prefix(prefix, path, what=str(uri))
                (path / ".complete").touch()
        case "hf" if uri.rest.startswith("datasets/"):
            path = hub.snapshot(uri.rest.removeprefix("datasets/").strip("/"), repo_type="dataset")
        case _:
            raise UserError(
                f"{ref.source}: data comes from {BUILTIN_LICENSES}, file://, pvc://, s3:// or "
                "hf://datasets/org/name"
            )
    documents = _documents_at(path, ref, role)
    if not any(doc.strip() for doc in documents):
        raise UserError(f"{ref.source}: holds no text (field {ref.text_field!r})")
    return documents


def token_stream(ref: DataRef, role: str, tokenizer: Any, cache_dir: Path) -> torch.Tensor:
    """All documents as one 1-D token stream, EOS between documents."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in read_documents(ref, role, cache_dir):
        if ids and eos is not None:
            ids.append(eos)
        ids.extend(tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def token_blocks(ref: DataRef, role: str, tokenizer: Any, cache_dir: Path) -> torch.Tensor:
    """`[rows, seq_length]` token blocks: `samples` rows, fewer for evaluation on short text.

    Raises:
        UserError: the text is shorter than one block.
    """
    if role not in ROLES:
        raise ValueError(f"unknown data role {role!r}; expected one of {ROLES}")
    stream = token_stream(ref, role, tokenizer, cache_dir)
    length, wanted = ref.seq_length, ref.samples * ref.seq_length
    if stream.numel() < length:
        raise UserError(
            f"{ref.source} ({role}): {stream.numel()} tokens, fewer than one sequence of "
            f"{length}; use a shorter seq_length or more text"
        )
    if stream.numel() < wanted and role != EVAL_ROLE:
        log.info(
            "%s (%s): %d tokens for %d; wrapping around the text",
            ref.source,
            role,
            stream.numel(),
            wanted,
        )
        stream = stream.repeat(-(-wanted // stream.numel()))
    rows = min(ref.samples, stream.numel() // length)
    return stream[: rows * length].view(rows, length)


def blocks_digest(blocks: torch.Tensor) -> str:
    """`sha256:<hex>` of the exact tokens, so a checkpoint names its calibration data."""
    data = blocks.to(torch.int64).contiguous().numpy().tobytes()
    shape = "x".join(str(n) for n in blocks.shape)
    return "sha256:" + hashlib.sha256(shape.encode() + b"\0" + data).hexdigest()


def _documents_at(path: Path, ref: DataRef, role: str) -> list[str]:
    if path.is_file():
        return _documents_in_file(path, ref.text_field)
    if not path.is_dir():
        raise SourceNotFound(f"{ref.source}: {path} does not exist")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _saved_dataset(path, ref, role)
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in (".jsonl", *_TEXT_SUFFIXES)
    )
    if not files:
        raise SourceNotFound(f"{ref.source}: no .jsonl, .txt or .md files under {path}")
    return [doc for file in files for doc in _documents_in_file(file, ref.text_field)]


def _documents_in_file(path: Path, field: str) -> list[str]:
    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8")]
    documents = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not JSON ({err.msg})") from err
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise UserError(f"{path}:{number}: no text field {field!r}")
            documents.append(record[field])
    return documents


def _saved_dataset(path: Path, ref: DataRef, role: str) -> list[str]:
    """A dataset written by `datasets.save_to_disk` (Dataset or DatasetDict)."""
    try:
        import datasets
    except ImportError as err:
        raise UserError(
            f"{ref.source} is a saved HF dataset: install the `datasets` package in the job "
            "image, or export the text as JSONL"
        ) from err
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        order = ("validation", "test", "train") if role == EVAL_ROLE else ("train",)
        split = next((name for name in order if name in loaded), None)
        if split is None:
            raise UserError(f"{ref.source}: no split among {', '.join(order)} for {role}")
        loaded = loaded[split]
    if ref.text_field not in loaded.column_names:
        raise UserError(f"{ref.source}: no column {ref.text_field!r} ({loaded.column_names})")
    return [str(text) for text in loaded[ref.text_field]]
