"""The facts the operator and the job both depend on, each stated once.

The operator imports this package (torch-free, nothing heavy); the job package builds on it. Add a
quantization format, a KV-cache precision, a GPU generation or a serving runtime here and the API
schema, the admission checks, the job's device check, the Plan and the manifest follow:

- `formats`: each quantization format with its Model Optimizer config, the oldest GPU generation
  that runs it, whether it is AWQ (block-quantized weights), how many calibration passes its
  algorithm makes and whether a CPU can produce it. `format_spec` refuses a name that is not in
  the table, so an unknown format fails loudly everywhere instead of passing a lookup.
- `serving`: the serving runtimes and the one function that picks one for an engine backend, the
  tensors every served model speaks, which drafts each runtime serves, and the TensorRT-LLM LLM
  API surface Kiln uses.
- `layout`: paths, environment names and ports that travel between the operator's pod specs and
  the programs inside them, and the Triton command line.
"""

from kiln_jobs.contract.formats import *  # noqa: F403
from kiln_jobs.contract.formats import __all__ as _formats
from kiln_jobs.contract.layout import *  # noqa: F403
from kiln_jobs.contract.layout import __all__ as _layout
from kiln_jobs.contract.serving import *  # noqa: F403
from kiln_jobs.contract.serving import __all__ as _serving

__all__ = [*_formats, *_serving, *_layout]
