"""A real HTTP server on 127.0.0.1 for the BFB download tests (aiohttp.web, in the test's event loop).

It serves one generated payload under any `*.bfb` path. `mode` switches what a GET gets: "ok" (the payload),
"404", "stall" (the first MiB, then silence), "truncated" (the first MiB, then the connection closes although
Content-Length promised more), "slow" (the payload in `slow_pieces` pieces, `slow_delay` seconds apart).
While `gate` is clear, "ok" responses wait after their headers: tests see the Downloading phase and the
concurrency bound without racing a fast transfer. It counts requests and the most that were in flight at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from types import TracebackType

from aiohttp import web

PART = 1 << 20  # what "stall" and "truncated" send before misbehaving


class BFBServer:
    def __init__(self, size: int = 3 << 20) -> None:
        self.payload = os.urandom(size)
        self.sha256 = hashlib.sha256(self.payload).hexdigest()
        self.mode = "ok"
        self.gate = asyncio.Event()
        self.gate.set()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.slow_pieces = 10
        self.slow_delay = 0.1
        self.partial_sent = asyncio.Event()  # "stall": set once the first part went out
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, name: str = "bf-bundle") -> str:
        return f"http://127.0.0.1:{self.port}/{name}.bfb"

    async def __aenter__(self) -> BFBServer:
        app = web.Application()
        app.router.add_get("/{name}.bfb", self._get)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._closing.set()
        self.gate.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._respond(request)
        finally:
            self.in_flight -= 1

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "404":
            raise web.HTTPNotFound()
        response = web.StreamResponse()
        response.content_length = len(self.payload)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        if self.mode == "ok":
            await self.gate.wait()
            await response.write(self.payload)
            await response.write_eof()
            return response
        if self.mode == "slow":
            step = -(-len(self.payload) // self.slow_pieces)
            for offset in range(0, len(self.payload), step):
                await response.write(self.payload[offset:offset + step])
                await asyncio.sleep(self.slow_delay)
            await response.write_eof()
            return response
        await response.write(self.payload[:PART])
        if self.mode == "truncated":
            assert request.transport is not None
            request.transport.close()
            return response
        self.partial_sent.set()
        await self._closing.wait()  # "stall": hold the connection open, silent, until the server closes
        return response
