"""TEST-ONLY stand-in for `tensorrt_llm`: exactly the LLM-API surface Kiln uses
(`kiln_jobs.contract.LLMAPI_SURFACE`), generating on CPU with Kiln's PyTorch runtime.

What it reproduces of TensorRT-LLM 1.0's behaviour (TRTLLM_LLMAPI_FACTS.md): `LLM(**args)` refuses
unknown arguments with ValueError; `generate_async(inputs, sampling_params, lora_request,
prompt_adapter_request, streaming=False)` has upstream's positional order and returns a
RequestOutput to iterate step by step, await or abort; `SamplingParams` has upstream's defaults
(max_tokens 32, exclude_input_from_output True); `speculative_config` is validated as
`update_llm_args_with_extra_dict` and the PyTorch backend would (EAGLE needs a draft directory;
Medusa and Lookahead are refused) and recorded. It does not speculate: greedy speculative
decoding produces the base model's own greedy text, which is what it serves.

With `KILN_STANDIN_RECORD` set, every LLM appends the arguments it was built with to that file
(one JSON line), so a test can check what reached it from model.yaml.
"""

from tensorrt_llm.llmapi import LLM, SamplingParams

__all__ = ["LLM", "SamplingParams"]
__version__ = "0.0.0+kiln-test-standin"
