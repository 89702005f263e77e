"""Serving: TensorRT-LLM engines, Triton model repositories, a local Triton, and a CPU runtime.

The runner calls `engine.build_engine` and `repository.write_repository` after export; `kiln run`
calls `kiln_jobs.local.run_local`, which serves the published repository with the `tritonserver`
binary shipped in `nvidia-pytriton` (`tritonserver.TritonServer`) and checks it with
`client.generate`.

In the cluster the Triton Deployment mounts the plan-hash directory read-only at
`kiln_jobs.contract.MODEL_MOUNT`; paths written into TensorRT-LLM repositories are absolute under
it. The CPU (Python backend) repository resolves its checkpoint relative to the repository
instead, so the same files serve from the mount and from a local publish directory.
"""
