"""Serving: TensorRT-LLM engines, Triton model repositories, a local Triton, and a CPU runtime.

The runner calls `engine.build_engine` and `repository.write_repository` after export; `kiln run`
calls `kiln_jobs.local.run_local`, which serves the published repository with the `tritonserver`
binary shipped in `nvidia-pytriton` (`tritonserver.TritonServer`) and checks it with
`client.generate`.

In the cluster the Triton Deployment mounts the plan-hash directory read-only at `MODEL_MOUNT`;
paths written into TensorRT-LLM repositories are absolute under it. The CPU (Python backend)
repository resolves its checkpoint relative to the repository instead, so the same files serve
from the mount and from a local publish directory.
"""

from __future__ import annotations

__all__ = ["GRPC_PORT", "HTTP_PORT", "METRICS_PORT", "MODEL_MOUNT"]

# Where the Triton Deployment mounts `<store>/<plan hash>/` (read-only).
MODEL_MOUNT = "/kiln/model"
# Triton's conventional ports; the Deployment's container and Service use these.
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
