"""An OpenAI-compatible endpoint in front of a Kiln-served model.

The interface users of NIM, vLLM and KServe already script against, translated onto the serving
contract (`kiln_jobs.serving.client`), so it is the same for every runtime:

    GET  /v1/models, /v1/models/{id}
    POST /v1/completions          prompt -> text; `stream: true` gives server-sent events
    POST /v1/chat/completions     messages -> the tokenizer's chat template -> text
    GET  /health/ready            200 once the model answers in Triton, else 503

Sampling follows OpenAI's defaults and names (`max_tokens` 16 for completions, `temperature`
1.0, `top_p`, `stop`, `seed`, `presence_penalty`, `frequency_penalty`; `echo` for
completions); what the contract cannot do (`n` > 1, `logprobs`, `best_of`) is refused with a 400
that says so. Streams end with `data: [DONE]`. Token counts in `usage` are the served model's.

It runs beside Triton: in the Triton pod as a sidecar (`python -m kiln_jobs openai`), and in
`kiln run --keep-serving`. Standard library HTTP, one thread per connection.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kiln_jobs.contract import OPENAI_PORT
from kiln_jobs.serving.client import Chunk, InferenceFailed, stream

__all__ = ["OpenAIError", "OpenAIServer", "main"]

log = logging.getLogger(__name__)

# OpenAI's own defaults.
_COMPLETION_MAX_TOKENS = 16
_DEFAULT_TEMPERATURE = 1.0
_UNSUPPORTED = {
    "logprobs": "logprobs are not returned by Kiln's serving contract",
    "top_logprobs": "logprobs are not returned by Kiln's serving contract",
    "best_of": "best_of is not supported; send several requests",
    "suffix": "suffix (insertion) is not supported",
    "tools": "tool calls are not supported",
}


class OpenAIError(Exception):
    """A request the endpoint refuses, with the HTTP status and OpenAI's error shape."""

    def __init__(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.kind, "code": None}}


@dataclass(frozen=True)
class _Request:
    """A completion request reduced to what the serving contract takes."""

    prompt: str
    max_tokens: int | None
    streaming: bool
    sampling: dict[str, Any]


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    for key, why in _UNSUPPORTED.items():
        if body.get(key) not in (None, False, 0, []):
            raise OpenAIError(HTTPStatus.BAD_REQUEST, f"{key}: {why}")
    if int(body.get("n") or 1) != 1:
        raise OpenAIError(HTTPStatus.BAD_REQUEST, "n: only n=1 is supported; send n requests")
    stop = body.get("stop")
    sampling = {
        "temperature": float(
            _DEFAULT_TEMPERATURE if body.get("temperature") is None else body["temperature"]
        ),
        "top_p": body.get("top_p"),
        "seed": body.get("seed"),
        "presence_penalty": body.get("presence_penalty"),
        "frequency_penalty": body.get("frequency_penalty"),
        "stop": [stop] if isinstance(stop, str) else stop,
    }
    return {k: v for k, v in sampling.items() if v not in (None, [])}


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError(HTTPStatus.BAD_REQUEST, "prompt: send one string")
    return prompt


class OpenAIServer:
    """The endpoint; `start()` serves on a background thread, `serve_forever()` in the caller."""

    def __init__(
        self,
        triton_url: str,
        model: str,
        tokenizer_dir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = OPENAI_PORT,
        timeout: float = 600.0,
    ) -> None:
        """Args:
        triton_url: `host:port` of Triton's HTTP endpoint.
        model: The served model's name (`spec.serving.modelName`), also the OpenAI model id.
        tokenizer_dir: Where the chat template comes from (the published checkpoint); chat
            completions are refused without one.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one.
        timeout: Seconds one request may take in Triton.
        """
        self.triton_url = triton_url
        self.model = model
        self.timeout = timeout
        self.created = int(time.time())
        self.tokenizer = _load_tokenizer(tokenizer_dir) if tokenizer_dir else None
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use (`.../v1`)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> OpenAIServer:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the API -------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        """GET /v1/models."""
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        """GET /v1/models/{id}."""
        return {"id": self.model, "object": "model", "created": self.created, "owned_by": "kiln"}

    def ready(self) -> bool:
        """Whether Triton has the model loaded and ready."""
        try:
            url = f"http://{self.triton_url}/v2/models/{self.model}/ready"
            with urllib.request.urlopen(url, timeout=5) as response:
                return bool(response.status == HTTPStatus.OK)
        except OSError:
            return False

    def completion_request(self, body: dict[str, Any]) -> _Request:
        """POST /v1/completions, checked and reduced to the contract."""
        self._check_model(body)
        sampling = _sampling(body)
        if body.get("echo"):
            sampling["exclude_input_from_output"] = False
        max_tokens = body.get("max_tokens")
        return _Request(
            _prompt(body),
            _COMPLETION_MAX_TOKENS if max_tokens is None else int(max_tokens),
            bool(body.get("stream")),
            sampling,
        )

    def chat_request(self, body: dict[str, Any]) -> _Request:
        """POST /v1/chat/completions, checked, templated and reduced to the contract."""
        self._check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError(HTTPStatus.BAD_REQUEST, "messages: send a non-empty list")
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise OpenAIError(
                HTTPStatus.BAD_REQUEST,
                f"{self.model} has no chat template: use /v1/completions with a prompt",
            )
        try:
            prompt = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as error:  # a template's own complaint about the messages
            raise OpenAIError(HTTPStatus.BAD_REQUEST, f"messages: {error}") from error
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        return _Request(
            prompt,
            None if max_tokens is None else int(max_tokens),
            bool(body.get("stream")),
            _sampling(body),
        )

    def run(self, request: _Request) -> Iterator[Chunk]:
        """The served model's responses to a request."""
        try:
            yield from stream(
                self.triton_url, self.model, request.prompt, max_tokens=request.max_tokens,
                streaming=request.streaming, timeout=self.timeout, **request.sampling,
            )  # fmt: skip
        except InferenceFailed as error:
            raise OpenAIError(HTTPStatus.BAD_GATEWAY, error.message, "server_error") from error

    def _check_model(self, body: dict[str, Any]) -> None:
        if body.get("model") not in (None, self.model):
            raise OpenAIError(
                HTTPStatus.NOT_FOUND,
                f"model {body.get('model')!r} does not exist; this endpoint serves {self.model!r}",
                "model_not_found",
            )


def _load_tokenizer(directory: Path | str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def _usage(last: Chunk) -> dict[str, int]:
    prompt, completion = last.input_tokens or 0, last.output_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _choice(chat: bool, text: str, finish: str | None, *, delta: bool) -> dict[str, Any]:
    if not chat:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    key = "delta" if delta else "message"
    return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}


def _finish(reason: str | None) -> str | None:
    return "length" if reason == "length" else ("stop" if reason else None)


def _handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._json(HTTPStatus.OK, server.models())
            elif self.path == f"/v1/models/{server.model}":
                self._json(HTTPStatus.OK, server.model_card())
            elif self.path == "/health/ready":
                ok = server.ready()
                status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
                self._json(status, {"ready": ok})
            else:
                error = OpenAIError(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found")
                self._json(error.status, error.body())

        def do_POST(self) -> None:
            routes = {"/v1/completions": False, "/v1/chat/completions": True}
            if self.path not in routes:
                error = OpenAIError(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found")
                self._json(error.status, error.body())
                return
            chat = routes[self.path]
            try:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError as error:
                    raise OpenAIError(HTTPStatus.BAD_REQUEST, f"invalid JSON: {error}") from error
                if not isinstance(body, dict):
                    raise OpenAIError(HTTPStatus.BAD_REQUEST, "send a JSON object")
                request = server.chat_request(body) if chat else server.completion_request(body)
                if request.streaming:
                    self._stream(chat, request)
                else:
                    self._whole(chat, request)
            except OpenAIError as error:
                self._json(error.status, error.body())

        def _envelope(self, chat: bool, ident: str, streamed: bool) -> dict[str, Any]:
            kind = "chat.completion" if chat else "text_completion"
            return {
                "id": ident,
                "object": f"{kind}.chunk" if chat and streamed else kind,
                "created": int(time.time()),
                "model": server.model,
            }

        def _whole(self, chat: bool, request: _Request) -> None:
            chunks = list(server.run(request))
            text = "".join(c.text for c in chunks)
            last = chunks[-1] if chunks else Chunk("")
            ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
            body = self._envelope(chat, ident, streamed=False)
            body["choices"] = [_choice(chat, text, _finish(last.finish_reason), delta=False)]
            body["usage"] = _usage(last)
            self._json(HTTPStatus.OK, body)

        def _stream(self, chat: bool, request: _Request) -> None:
            responses = server.run(request)
            first = next(responses, None)  # errors before the first byte are JSON errors
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
            chunks = [] if first is None else [first]
            try:
                for chunk in [*chunks, *responses]:
                    finish = _finish(chunk.finish_reason)
                    if chunk.text or finish:
                        event = self._envelope(chat, ident, streamed=True)
                        event["choices"] = [_choice(chat, chunk.text, finish, delta=True)]
                        if finish:
                            event["usage"] = _usage(chunk)
                        self._event(json.dumps(event))
            except OpenAIError as error:
                self._event(json.dumps(error.body()))
            self._event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")

        def _event(self, data: str) -> None:
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kiln_jobs openai`: serve the endpoint in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m kiln_jobs openai", description=__doc__)
    parser.add_argument("--triton", required=True, help="host:port of Triton's HTTP endpoint")
    parser.add_argument("--model", required=True, help="the served model's name")
    parser.add_argument("--tokenizer", type=Path, help="directory with the chat template")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=OPENAI_PORT)
    args = parser.parse_args(argv)
    server = OpenAIServer(args.triton, args.model, args.tokenizer, host=args.host, port=args.port)
    log.info("OpenAI-compatible endpoint for %s on %s", args.model, server.url)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0
