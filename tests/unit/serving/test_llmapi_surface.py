"""The TensorRT-LLM stand-in provides exactly what Kiln's Triton model uses of the LLM API
(`kiln_jobs.contract.LLMAPI_SURFACE`), and Kiln's model uses nothing else of `tensorrt_llm`."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln_jobs.contract import LLMAPI_RESULT_FIELDS, LLMAPI_SURFACE

pytestmark = pytest.mark.unit

STANDINS = Path(__file__).parents[2] / "standins"
KILN_MODEL = Path(__file__).parents[3] / "jobs" / "kiln_jobs" / "serving" / "models" / "llm.py"


@pytest.fixture
def standin() -> Iterator[None]:
    """The stand-in importable as `tensorrt_llm`, for this test only."""
    sys.path.insert(0, str(STANDINS))
    try:
        yield
    finally:
        sys.path.remove(str(STANDINS))
        for name in [
            m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")
        ]:
            del sys.modules[name]


@pytest.mark.parametrize(("module", "path"), LLMAPI_SURFACE, ids=lambda v: str(v))
def test_the_standin_provides_every_symbol_kiln_uses(standin, module: str, path: str) -> None:
    target: object = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(target, part), f"the stand-in lacks {module}.{path}"
        target = getattr(target, part)


def test_the_standin_results_carry_every_field_kiln_reads(standin) -> None:
    llmapi = importlib.import_module("tensorrt_llm.llmapi")
    output = llmapi.RequestOutput("prompt", [1, 2, 3], echo=False)
    for name in LLMAPI_RESULT_FIELDS["RequestOutput"]:
        assert hasattr(output, name), name
    completion_fields = {f.name for f in dataclasses.fields(llmapi.CompletionOutput)}
    assert set(LLMAPI_RESULT_FIELDS["CompletionOutput"]) <= completion_fields


def test_the_standin_refuses_what_upstream_refuses(standin) -> None:
    llmapi = importlib.import_module("tensorrt_llm.llmapi")
    utils = importlib.import_module("tensorrt_llm.llmapi.llm_utils")
    with pytest.raises(ValueError, match="unknown arguments"):
        llmapi.LLM("/nowhere", max_batch_size=1, no_such_argument=1)
    with pytest.raises(ValueError, match="unknown decoding_type"):
        utils.update_llm_args_with_extra_dict({}, {"speculative_config": {"decoding_type": "X"}})
    with pytest.raises(ValueError, match="needs speculative_model_dir"):
        utils.update_llm_args_with_extra_dict(
            {}, {"speculative_config": {"decoding_type": "Eagle"}}
        )
    medusa = utils.update_llm_args_with_extra_dict(
        {}, {"speculative_config": {"decoding_type": "Medusa", "max_draft_len": 4}}
    )
    with pytest.raises(ValueError, match="not supported on the PyTorch backend"):
        llmapi.LLM("/nowhere", **medusa)
    with pytest.raises(TypeError):
        llmapi.SamplingParams(no_such_parameter=1)
    assert llmapi.SamplingParams().max_tokens == 32  # upstream's default


def test_kiln_imports_nothing_of_tensorrt_llm_outside_the_surface() -> None:
    surface = {f"{module}.{path.split('.')[0]}" for module, path in LLMAPI_SURFACE}
    tree = ast.parse(KILN_MODEL.read_text())
    imported = {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tensorrt_llm")
        for alias in node.names
    }
    assert imported and imported <= surface, imported - surface
