"""The `kiln` Triton backend's entry point: it runs the Kiln model a config names.

A model repository says `backend: "kiln"` and the parameter `kiln_model` (`llm`,
`preprocessing`, `postprocessing` or `bls`); Triton's Python backend loads this file, which hands
every call to that model in `kiln_jobs.serving.models`. Published repositories therefore hold
only configs and data: the code that runs comes with Kiln.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

# Triton's Python stub embeds an interpreter that ignores PYTHONPATH; honour it, so that a
# launcher can hand the models extra packages.
sys.path[1:1] = [
    p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path
]

from kiln_jobs.serving.models import model_module  # noqa: E402


class TritonPythonModel:
    """Triton's entry points, delegated to the configured Kiln model."""

    model: Any

    def initialize(self, args: dict[str, str]) -> None:
        """Load the model named by the `kiln_model` parameter and initialize it."""
        parameters = json.loads(args["model_config"]).get("parameters", {})
        kind = parameters.get("kiln_model", {}).get("string_value", "")
        self.model = importlib.import_module(model_module(kind)).TritonPythonModel()
        self.model.initialize(args)

    def execute(self, requests: list[Any]) -> Any:
        """Answer (or, for decoupled models, schedule) the requests."""
        return self.model.execute(requests)

    def finalize(self) -> None:
        """Release the model."""
        finalize = getattr(self.model, "finalize", None)
        if finalize is not None:
            finalize()
