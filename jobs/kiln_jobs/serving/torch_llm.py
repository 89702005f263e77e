"""Kiln's PyTorch runtime: the part of TensorRT-LLM's LLM API that Kiln's Triton model uses
(`kiln_jobs.contract.LLMAPI_SURFACE`), implemented on PyTorch.

It serves a published Model Optimizer checkpoint with its real quantization numerics
(`kiln_jobs.serving.checkpoint`) wherever TensorRT-LLM does not run: on CPUs, for
`engine.backend: none`, and for `kiln run`. Being the same surface, the same Triton model
(`models/llm.py`) drives it and TensorRT-LLM alike.

One worker thread decodes requests one at a time, token by token (`generation.iter_ids`), so a
greedy request's text is exactly the checkpoint's own greedy continuation whatever else is
queued. `generate_async` returns at once; the `RequestOutput` is updated after every token and
can be awaited step by step (`async for`), waited for (`result()`, `aresult()`) or aborted.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]


@dataclass
class SamplingParams:
    """How to generate; field names and defaults follow TensorRT-LLM's `SamplingParams`."""

    max_tokens: int = 32
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    end_id: int | None = None
    exclude_input_from_output: bool = True


@dataclass
class CompletionOutput:
    """One generated sequence so far."""

    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    # "stop" (an end token or a stop string), "length", "cancelled"; None while generating.
    finish_reason: str | None = None
    # The text added by the latest step.
    text_diff: str = ""


class RequestOutput:
    """A request in flight; updated after every generated token."""

    def __init__(self, prompt: str, prompt_token_ids: list[int], echo: bool) -> None:
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput(text=prompt if echo else "")]
        self.finished = False
        self.error: BaseException | None = None
        self._echo = echo
        self._aborted = threading.Event()
        self._done = threading.Event()
        # Steps reach the event loop that asked (the Triton model's), if one did.
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        # Each step's state travels to the event loop and is applied there when read, so every
        # step is seen on its own (as TensorRT-LLM delivers them), however far generation is
        # ahead of the reader.
        self._steps: asyncio.Queue[_Step] = asyncio.Queue()

    def abort(self) -> None:
        """Stop generating; the request finishes with finish_reason "cancelled"."""
        self._aborted.set()

    def result(self, timeout: float | None = None) -> RequestOutput:
        """Wait until the request finished."""
        if not self._done.wait(timeout):
            raise TimeoutError("the request did not finish in time")
        if self.error is not None:
            raise self.error
        return self

    async def aresult(self) -> RequestOutput:
        """Wait until the request finished, without blocking the event loop."""
        async for _ in self:
            pass
        return self

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[RequestOutput]:
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("iterate a RequestOutput on the event loop that created it")
        while True:
            step = await self._steps.get()
            if self.error is not None:
                raise self.error
            self._apply(step)
            yield self
            if step.finish is not None:
                return

    # -- written by the worker ---------------------------------------------------------------

    def _step(self, text: str, token_ids: list[int], finish: str | None) -> None:
        step = _Step(self.prompt + text if self._echo else text, list(token_ids), finish)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._steps.put_nowait, step)
        # Without a reader on a loop, and at the end for `result()`, the state is set here.
        if self._loop is None or finish is not None:
            self._apply(step)
        if finish is not None:
            self._done.set()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.finished = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._steps.put_nowait, _Step("", [], "error"))
        self._done.set()

    def _apply(self, step: _Step) -> None:
        output = self.outputs[0]
        output.text_diff = (
            step.text[len(output.text) :] if step.text.startswith(output.text) else ""
        )
        output.text, output.token_ids, output.finish_reason = step.text, step.token_ids, step.finish
        self.finished = step.finish is not None


@dataclass(frozen=True)
class _Step:
    """The state of a request after one generated token."""

    text: str
    token_ids: list[int]
    finish: str | None


@dataclass
class _Job:
    output: RequestOutput
    params: SamplingParams


class LLM:
    """A causal LM on PyTorch behind TensorRT-LLM's LLM-API calls."""

    def __init__(
        self,
        model: str | Path,
        *,
        backend: str = "pytorch",
        max_batch_size: int = 8,
        max_input_len: int | None = None,
        max_seq_len: int | None = None,
        dtype: str = "float32",
        num_threads: int = 0,
    ) -> None:
        """Load the checkpoint and its tokenizer, and start the worker.

        Raises:
            ValueError: An argument this runtime cannot honour.
        """
        import torch
        from transformers import AutoTokenizer

        from kiln_jobs.serving.checkpoint import load_checkpoint

        if backend != "pytorch":
            raise ValueError(f"backend {backend!r}: this runtime is PyTorch")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.max_batch_size = max_batch_size
        self.max_input_len = max_input_len
        self.max_seq_len = max_seq_len
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = load_checkpoint(model, dtype=getattr(torch, dtype))
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name="kiln-llm", daemon=True)
        self._worker.start()

    def generate_async(
        self,
        inputs: str,
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
    ) -> RequestOutput:
        """Queue one prompt; returns at once. `streaming` only says the caller reads steps (every
        step is observable here); LoRA and prompt adapters are not supported."""
        if lora_request is not None or prompt_adapter_request is not None:
            raise ValueError("LoRA and prompt adapters are not supported by the PyTorch runtime")
        params = sampling_params or SamplingParams()
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(params, name):
                raise ValueError(f"{name} is not supported by the PyTorch runtime")
        ids = self.tokenizer(inputs)["input_ids"]
        self._check_lengths(len(ids), params.max_tokens)
        output = RequestOutput(inputs, ids, echo=not params.exclude_input_from_output)
        self._jobs.put(_Job(output, params))
        return output

    def generate(
        self, inputs: str | Sequence[str], sampling_params: SamplingParams | None = None
    ) -> Any:
        """Generate for one prompt or a list; waits for all of them."""
        prompts = [inputs] if isinstance(inputs, str) else list(inputs)
        outputs = [self.generate_async(p, sampling_params).result() for p in prompts]
        return outputs[0] if isinstance(inputs, str) else outputs

    def shutdown(self) -> None:
        """Stop the worker once the queued requests are done."""
        self._jobs.put(None)
        self._worker.join(timeout=60)

    def _check_lengths(self, input_tokens: int, max_tokens: int) -> None:
        if self.max_input_len and input_tokens > self.max_input_len:
            raise ValueError(
                f"the prompt has {input_tokens} tokens; max_input_len is {self.max_input_len}"
            )
        if self.max_seq_len and input_tokens + max_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt + max_tokens = {input_tokens + max_tokens} tokens; max_seq_len is "
                f"{self.max_seq_len}"
            )

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._decode(job)
            except Exception as error:  # the request fails, the runtime serves on
                job.output._fail(error)

    def _decode(self, job: _Job) -> None:
        from kiln_jobs.serving.generation import SamplingParams as Decoding
        from kiln_jobs.serving.generation import iter_ids

        params, output = job.params, job.output
        stops = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        decoding = Decoding(
            max_tokens=params.max_tokens,
            temperature=params.temperature or 0.0,
            top_k=params.top_k or 0,
            top_p=1.0 if params.top_p is None else params.top_p,
            seed=params.seed,
            end_id=params.end_id,
        )
        ids: list[int] = []
        text = ""
        for token in iter_ids(self.model, output.prompt_token_ids, decoding):
            if output._aborted.is_set():
                output._step(text, ids, "cancelled")
                return
            ids.append(token)
            decoded = self._text(ids)
            stop = next((s for s in stops if s and s in decoded), None)
            if stop is not None:
                output._step(decoded[: decoded.index(stop)], ids, "stop")
                return
            # A token that ends inside a multi-byte character decodes to U+FFFD: wait for it.
            if not decoded.endswith("\ufffd"):
                text = decoded
            if len(ids) < params.max_tokens and not _is_end(self.model, token, params):
                output._step(text, ids, None)
        finish = "stop" if ids and _is_end(self.model, ids[-1], params) else "length"
        output._step(self._text(ids), ids, finish)

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _is_end(model: Any, token: int, params: SamplingParams) -> bool:
    if params.end_id is not None:
        return token == params.end_id
    eos = getattr(model.generation_config, "eos_token_id", None) or model.config.eos_token_id
    ends = set(eos) if isinstance(eos, list) else {eos}
    return token in ends
