"""The download module on its own, against a real HTTP server on 127.0.0.1: progress of a long transfer is
logged, causes are named (refused connection, missing BFB directory), and the file is 0644 whatever the umask."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from dpf.controller.provisioning import download as dl
from dpf.lab.bed.process import free_port

from ..controlplane.harness import run
from .bfb_server import BFBServer

LOGGER = "dpf.controller.provisioning.download"


def test_a_long_download_logs_its_progress(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> dl.Downloaded:
        async with BFBServer() as server:
            server.mode, server.slow_pieces, server.slow_delay = "slow", 8, 0.25
            result = await dl.download(server.url(), tmp_path / "x.bfb", dl.partial_path(tmp_path, "x.bfb", "u", "a"),
                                       stall_timeout=10.0, label="ns/x", progress_every=0.3)
            assert (tmp_path / "x.bfb").read_bytes() == server.payload
            assert result.sha256 == server.sha256
            return result

    caplog.set_level(logging.INFO, logger=LOGGER)
    result = run(scenario())
    percents = [int(m.group(1)) for r in caplog.records if r.name == LOGGER
                if (m := re.search(r"BFB ns/x: downloaded (\d+)% \(", r.getMessage()))]
    assert len(percents) >= 2, caplog.text
    assert percents == sorted(percents), percents
    assert percents[-1] < 100
    assert result.seconds >= 1.0  # 8 pieces 0.25 s apart


def test_a_refused_connection_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/x.bfb"

    async def scenario() -> None:
        await dl.download(url, tmp_path / "x.bfb", dl.partial_path(tmp_path, "x.bfb", "u", "a"), stall_timeout=5.0)

    with pytest.raises(dl.DownloadError, match=rf"^GET {re.escape(url)}: Cannot connect to host 127\.0\.0\.1"):
        run(scenario())
    assert os.listdir(tmp_path) == []


def test_a_missing_bfb_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"

    async def scenario() -> None:
        await dl.download("http://127.0.0.1:1/x.bfb", missing / "x.bfb", dl.partial_path(missing, "x.bfb", "u", "a"),
                          stall_timeout=5.0)

    with pytest.raises(dl.DownloadError, match=rf"BFB directory {re.escape(str(missing))} does not exist .*--bfb-dir"):
        run(scenario())


def test_the_file_is_world_readable_whatever_the_umask(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with BFBServer(size=1 << 16) as server:
            await dl.download(server.url(), tmp_path / "x.bfb", dl.partial_path(tmp_path, "x.bfb", "u", "a"),
                              stall_timeout=10.0)

    old = os.umask(0o077)
    try:
        run(scenario())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.bfb").stat().st_mode) == 0o644


def test_a_redirect_is_followed_and_every_byte_is_counted_on_the_event_loop(tmp_path: Path) -> None:
    """Mirrors answer a BFB URL with a redirect; the bytes counter (the metric) sees the whole file, called on the
    event loop's thread, and the file spans several of the downloader's buffers."""
    payload = os.urandom(2 * dl.READ_BUFFER + 12345)
    counted: list[int] = []
    threads: set[int] = set()

    def on_bytes(count: int) -> None:
        counted.append(count)
        threads.add(threading.get_ident())

    async def moved(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/new/x.bfb")

    async def serve(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=payload)

    async def scenario() -> dl.Downloaded:
        app = web.Application()
        app.router.add_get("/old/x.bfb", moved)
        app.router.add_get("/new/x.bfb", serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/old/x.bfb"
            return await dl.download(url, tmp_path / "x.bfb", dl.partial_path(tmp_path, "x.bfb", "u", "a"),
                                     stall_timeout=10.0, on_bytes=on_bytes)
        finally:
            await runner.cleanup()

    result = run(scenario())
    assert (tmp_path / "x.bfb").read_bytes() == payload
    assert result.size == len(payload)
    assert result.sha256 == hashlib.sha256(payload).hexdigest()
    assert sum(counted) == len(payload)
    assert threads == {threading.get_ident()}


def test_cancelling_a_download_stuck_in_a_socket_read_is_prompt_and_leaves_nothing(tmp_path: Path) -> None:
    async def scenario() -> float:
        async with BFBServer() as server:
            server.mode = "stall"
            task = asyncio.create_task(dl.download(server.url(), tmp_path / "x.bfb",
                                                   dl.partial_path(tmp_path, "x.bfb", "u", "a"), stall_timeout=300.0))
            await asyncio.wait_for(server.partial_sent.wait(), 30)
            await asyncio.sleep(0.2)  # the transfer thread is now blocked reading the silent socket
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - started

    assert run(scenario()) < 10.0  # not the 300 s stall timeout
    assert os.listdir(tmp_path) == []
