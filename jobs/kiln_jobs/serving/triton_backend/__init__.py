"""The `kiln` Triton backend: a Python-based backend whose `model.py` is installed beside
Triton's backends (`<backends>/kiln/model.py`; the job image's Dockerfile and
`kiln_jobs.serving.tritonserver` put it there). See `model.py`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["backend_model_file"]


def backend_model_file() -> Path:
    """The file to install as `<backends>/kiln/model.py`."""
    return Path(str(resources.files(__name__).joinpath("model.py")))
