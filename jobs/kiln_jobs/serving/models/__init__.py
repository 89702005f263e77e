"""Triton Python-backend model sources that `repository` copies into `<model>/1/model.py`.

Each module runs under Triton's Python stub, not as part of Kiln's import tree: it imports
`triton_python_backend_utils`, which only the stub provides.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["source_path"]


def source_path(name: str) -> Path:
    """The file of the model source `name` (e.g. `cpu_llm`), to copy into a repository."""
    return Path(str(resources.files(__name__).joinpath(f"{name}.py")))
