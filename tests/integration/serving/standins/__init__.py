"""Stand-ins for the GPU-only parts of the TensorRT-LLM repositories, so the real `tritonserver`
can run their wiring on CPU: a Python `tensorrt_llm` model with the C++ backend's tensors, and a
`tensorrt_llm` package with the LLM API's `LLM` / `SamplingParams`. Both generate with Kiln's CPU
loader, so their answers are comparable with the CPU runtime's."""
