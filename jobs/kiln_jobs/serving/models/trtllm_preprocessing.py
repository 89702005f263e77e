"""Kiln's `preprocessing` model of the TensorRT-LLM engine ensemble (run by the `kiln` backend).

Tokenizes QUERY into INPUT_ID (right-padded with the pad id) and REQUEST_INPUT_LEN, turns
BAD_WORDS_DICT / STOP_WORDS_DICT into TensorRT-LLM's word-list format ([2, L]: the words' token
ids end to end, then each word's end offset, padded with 0 and -1), and resolves END_ID / PAD_ID
from the request or the tokenizer. Parameters: `tokenizer_dir`, `add_special_tokens`,
`max_input_len`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _rows(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy()
    return values.reshape(values.shape[0], -1)


def _required(request: Any, name: str) -> np.ndarray:
    rows = _rows(request, name)
    if rows is None:
        raise ValueError(f"missing input {name}")
    return rows


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def word_list(tokenizer: Any, rows: np.ndarray | None, batch: int) -> np.ndarray:
    """[batch, 2, L] word lists: token ids end to end, then cumulative end offsets."""
    lists = []
    for row in range(batch):
        words = [] if rows is None else [_text(w) for w in rows[row] if _text(w)]
        ids: list[int] = []
        offsets: list[int] = []
        for word in words:
            ids += tokenizer.encode(word, add_special_tokens=False)
            offsets.append(len(ids))
        lists.append((ids, offsets))
    width = max([1] + [max(len(ids), len(offs)) for ids, offs in lists])
    out = np.zeros((batch, 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for row, (ids, offsets) in enumerate(lists):
        out[row, 0, : len(ids)] = ids
        out[row, 1, : len(offsets)] = offsets
    return out


class TritonPythonModel:
    """Triton's entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the tokenizer named by `tokenizer_dir`."""
        from transformers import AutoTokenizer

        params = json.loads(args["model_config"]).get("parameters", {})
        value = {k: v.get("string_value", "") for k, v in params.items()}
        self.tokenizer = AutoTokenizer.from_pretrained(value["tokenizer_dir"])
        self.add_special_tokens = value.get("add_special_tokens", "true").lower() == "true"
        self.max_input_len = int(value.get("max_input_len") or 0)
        self.end_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad is None else pad

    def _one(self, request: Any) -> Any:
        queries = _required(request, "QUERY")
        batch = queries.shape[0]
        ids = [
            self.tokenizer.encode(_text(q[0]), add_special_tokens=self.add_special_tokens)
            for q in queries
        ]
        longest = max(len(i) for i in ids)
        if self.max_input_len and longest > self.max_input_len:
            raise ValueError(f"prompt has {longest} tokens, max_input_len is {self.max_input_len}")
        end = _rows(request, "END_ID")
        pad = _rows(request, "PAD_ID")
        end_ids = end.astype(np.int32) if end is not None else np.full((batch, 1), self.end_id)
        pad_ids = pad.astype(np.int32) if pad is not None else np.full((batch, 1), self.pad_id)
        input_ids = np.zeros((batch, longest), dtype=np.int32)
        for row, tokens in enumerate(ids):
            input_ids[row, :] = pad_ids[row, 0]
            input_ids[row, : len(tokens)] = tokens
        outputs = {
            "INPUT_ID": input_ids,
            "REQUEST_INPUT_LEN": np.array([[len(i)] for i in ids], dtype=np.int32),
            "BAD_WORDS_IDS": word_list(self.tokenizer, _rows(request, "BAD_WORDS_DICT"), batch),
            "STOP_WORDS_IDS": word_list(self.tokenizer, _rows(request, "STOP_WORDS_DICT"), batch),
            "REQUEST_OUTPUT_LEN": _required(request, "REQUEST_OUTPUT_LEN").astype(np.int32),
            "OUT_END_ID": np.asarray(end_ids, dtype=np.int32),
            "OUT_PAD_ID": np.asarray(pad_ids, dtype=np.int32),
        }
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Tokenize each request."""
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
        return responses
