"""A fault-injecting HTTP proxy in front of a real server (kube-apiserver, MinIO).

The client talks plain HTTP to the proxy; the proxy forwards to the real server, except where a
rule says otherwise: answer with an error status (500, 503, 409, 429), hang past the client's
timeout, or cut streams after a while. Everything else is the real server's behaviour, so a test
sees exactly what a flaky control plane or object store would show the product.

- `FaultProxy.for_kubeconfig(admin kubeconfig)`: the API server over TLS as the admin user;
  `kubeconfig()` writes one for the client. Errors carry a Kubernetes `Status` body.
- `FaultProxy(upstream, error_body=s3_error)`: an S3 server. The client's `Host` header is kept,
  because S3 request signatures cover it. Errors carry an S3 XML error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

__all__ = ["FaultProxy", "Rule", "kube_status", "s3_error"]

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Rule:
    """A fault for requests matching `method` and the `path` regex, `times` times (0: always).

    `status` answers with that HTTP status and a Kubernetes Status body; `delay` waits that many
    seconds first (a delay longer than the client's timeout is a timeout); `drop_after` lets a
    watch stream flow for that many seconds, then cuts it.
    """

    method: str
    path: str
    status: int | None = None
    reason: str = "InternalError"
    delay: float = 0.0
    drop_after: float | None = None
    times: int = 1
    hits: int = field(default=0, init=False)

    def matches(self, request: web.Request) -> bool:
        if self.times and self.hits >= self.times:
            return False
        if request.method != self.method.upper() and self.method != "*":
            return False
        return re.search(self.path, request.path_qs) is not None


def kube_status(rule: Rule) -> web.Response:
    """A Kubernetes `Status` failure, as the API server writes one."""
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": f"injected by the test: {rule.reason}", "reason": rule.reason,
        "code": rule.status,
    }  # fmt: skip
    return web.json_response(body, status=rule.status)


def s3_error(rule: Rule) -> web.Response:
    """An S3 error document, as S3 and MinIO write one."""
    code = "SlowDown" if rule.status == 503 else rule.reason
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
    )
    return web.Response(text=body, status=rule.status, content_type="application/xml")


class FaultProxy:
    """Runs in a thread of its own; `url` is what the client points at."""

    def __init__(
        self,
        upstream: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        error_body: Callable[[Rule], web.Response] = kube_status,
        workdir: Path | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ssl = ssl_context
        self.error_body = error_body
        self.keep_host = error_body is s3_error
        self.rules: list[Rule] = []
        self.workdir = workdir
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    @classmethod
    def for_kubeconfig(cls, admin_kubeconfig: Path, workdir: Path) -> FaultProxy:
        """A proxy to the API server of `admin_kubeconfig`, as its (certificate) user."""
        config = yaml.safe_load(admin_kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        context.load_cert_chain(user["client-certificate"], user["client-key"])
        return cls(cluster["server"], ssl_context=context, workdir=workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self) -> Path:
        """A kubeconfig for the operator: no credentials, the proxy adds the admin's."""
        assert self.workdir is not None, "for_kubeconfig() sets the workdir"
        path = self.workdir / "faulty.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "faulty",
            "clusters": [{"name": "faulty", "cluster": {"server": self.url}}],
            "users": [{"name": "faulty", "user": {}}],
            "contexts": [{"name": "faulty", "context": {"cluster": "faulty", "user": "faulty"}}],
        }))  # fmt: skip
        return path

    def add(self, *rules: Rule) -> None:
        self.rules.extend(rules)

    def hits(self, rule: Rule) -> int:
        return rule.hits

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            await self._session.close()

        with contextlib.suppress(TimeoutError):  # open watch streams are cancelled below
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._ready.set()
        self._loop.run_forever()
        # Finish every request handler here, on its own loop. Left pending, they would be
        # closed by the garbage collector later, in whatever thread, on a dead loop.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Open watch streams must not hold up stopping the proxy.
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl if self.ssl is not None else False),
            timeout=aiohttp.ClientTimeout(None),
        )

    def _rule_for(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            if rule.matches(request):
                rule.hits += 1
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._rule_for(request)
        if rule and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule and rule.status:
            await request.read()  # the client may wait to finish sending before it reads
            return self.error_body(rule)
        return await self._forward(request, rule.drop_after if rule else None)

    async def _forward(self, request: web.Request, drop_after: float | None) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        if self.keep_host:
            headers["Host"] = request.headers["Host"]
        data = await request.read()
        upstream = await self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=data or None,
            skip_auto_headers=("Content-Type",),
        )
        response = web.StreamResponse(status=upstream.status)
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP_HEADERS and key.lower() != "content-encoding":
                response.headers[key] = value
        length = upstream.headers.get("Content-Length")
        if length is not None and "Content-Encoding" not in upstream.headers and drop_after is None:
            # S3 clients need it (on HEAD too); a body decompressed on the way has another.
            response.content_length = int(length)
        await response.prepare(request)
        deadline = None if drop_after is None else self._loop.time() + drop_after
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - self._loop.time())
                try:
                    chunk = await asyncio.wait_for(upstream.content.readany(), remaining)
                except TimeoutError:
                    break  # a dropped watch: the stream just ends, as a flaky LB would do
                if not chunk:
                    break
                await response.write(chunk)
        except (ConnectionResetError, aiohttp.ClientError):
            pass
        finally:
            upstream.release()
        return response
