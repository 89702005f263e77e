"""A fault-injecting proxy in front of the real API server.

The operator talks plain HTTP to the proxy; the proxy forwards to kube-apiserver over TLS as the
admin user, except where a rule says otherwise: answer with an error status (500, 409, 429),
hang past the client's timeout, or cut watch streams after a while. Everything else is the real
server's behaviour, so a test sees exactly what a flaky control plane would show an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

__all__ = ["FaultProxy", "Rule"]

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


class FaultProxy:
    """Runs in a thread of its own; `url` is what the operator's kubeconfig points at."""

    def __init__(self, admin_kubeconfig: Path, workdir: Path) -> None:
        config = yaml.safe_load(admin_kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.upstream = cluster["server"]
        self.ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        self.rules: list[Rule] = []
        self.workdir = workdir
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self) -> Path:
        """A kubeconfig for the operator: no credentials, the proxy adds the admin's."""
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
            connector=aiohttp.TCPConnector(ssl=self.ssl), timeout=aiohttp.ClientTimeout(None)
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
            body: dict[str, Any] = {
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": f"injected by the test: {rule.reason}", "reason": rule.reason,
                "code": rule.status,
            }  # fmt: skip
            return web.json_response(body, status=rule.status)
        return await self._forward(request, rule.drop_after if rule else None)

    async def _forward(self, request: web.Request, drop_after: float | None) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        data = await request.read()
        upstream = await self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=data or None
        )
        response = web.StreamResponse(status=upstream.status)
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP_HEADERS and key.lower() != "content-encoding":
                response.headers[key] = value
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
