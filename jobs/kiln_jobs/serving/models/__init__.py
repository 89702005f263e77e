"""The Python models the `kiln` Triton backend runs (`triton_backend/model.py`), by the value of
the config parameter `kiln_model`.

Each module runs under Triton's Python stub, not as part of Kiln's import tree: it imports
`triton_python_backend_utils`, which only the stub provides.
"""

from __future__ import annotations

__all__ = ["KILN_MODELS", "model_module"]

#: kiln_model -> module under kiln_jobs.serving.models
KILN_MODELS = {
    "llm": "llm",
    "preprocessing": "trtllm_preprocessing",
    "postprocessing": "trtllm_postprocessing",
    "bls": "trtllm_bls",
}


def model_module(kind: str) -> str:
    """The module that implements the Kiln model `kind`.

    Raises:
        ValueError: No Kiln model has that name.
    """
    if kind not in KILN_MODELS:
        raise ValueError(f"kiln_model {kind!r}: use one of {sorted(KILN_MODELS)}")
    return f"{__name__}.{KILN_MODELS[kind]}"
