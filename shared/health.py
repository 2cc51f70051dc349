"""/healthz, /readyz and /metrics over aiohttp: one small server, shared by the controller and the agents.

A listen address without a host binds `default_host` (the controller: all addresses, for kubelet probes;
an agent: loopback).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    def __init__(self, listen: str, registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]],
                 ready: Callable[[], tuple[bool, str]], default_host: str = "127.0.0.1") -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host or default_host, int(port)
        self._registry = registry
        self._healthy, self._ready = healthy, ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        # aiohttp does not expose the bound port (listen ":0" asks for any); the site's server has it.
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self.port

    async def _healthz(self, _request: web.Request) -> web.Response:
        return await self._probe(self._healthy)

    async def _readyz(self, _request: web.Request) -> web.Response:
        return await self._probe(self._ready)

    async def _probe(self, check: Callable[[], tuple[bool, str]]) -> web.Response:
        ok, detail = check()
        return web.Response(status=200 if ok else 503, text=(detail or ("ok" if ok else "not ok")) + "\n")

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
