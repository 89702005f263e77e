"""TEST-ONLY stand-ins for the GPU-only parts Kiln serves through, so that the real `tritonserver`
runs Kiln's production repositories on CPU:

- `tensorrt_llm/`: the LLM-API surface Kiln's Triton model uses
  (`kiln_jobs.contract.LLMAPI_SURFACE`), on Kiln's PyTorch runtime over the published checkpoint
  with its real scales, with upstream's argument checking and speculative-config validation;
- `engine_model.py`: a Python model with the C++ `tensorrtllm` backend's tensors.

Put this directory on a Triton process's PYTHONPATH (the kiln backend honours it) to use them.
"""
