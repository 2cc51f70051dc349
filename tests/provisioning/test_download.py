"""The download module on its own, against a real HTTP server on 127.0.0.1: progress of a long transfer is
logged, causes are named (refused connection, missing BFB directory), and the file is 0644 whatever the umask."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import pytest

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
