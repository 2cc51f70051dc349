"""Fixtures for the emulated hardware: a host with DPUs under a temporary root, torn down after each test."""

from __future__ import annotations

import itertools
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.lab.bed.process import wait_until
from dpf.lab.emulator import DpuSpec, EmulatedHost

SAMPLE_BFCFG = (Path(__file__).parent / "sample_bf.cfg").read_text()
_names = itertools.count()


def host_name() -> str:
    return f"e{next(_names)}"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[EmulatedHost]:
    with EmulatedHost(host_name(), tmp_path / "host", [DpuSpec("BlueField-3"), DpuSpec("BlueField-2")]) as h:
        yield h


def misc_log(misc: Path) -> list[str]:
    """The log lines `misc` shows (DISPLAY_LEVEL 2), one snapshot."""
    text = misc.read_text()
    marker = "Log Messages\n"
    if marker not in text:
        return []
    return text.split(marker, 1)[1].split("\n", 1)[1].splitlines()


def show_log(misc: Path) -> None:
    """`echo "DISPLAY_LEVEL 2" > misc`, as bfb-install does, and wait until misc shows the log."""
    subprocess.run(["sh", "-c", f'echo "DISPLAY_LEVEL 2" > {misc}'], check=True)
    wait_until(lambda: "Log Messages" in misc.read_text(), 5, "misc shows the log")


class Writer(threading.Thread):
    """Streams chunks into the boot FIFO from Python, counting what the device has taken."""

    def __init__(self, boot: Path, chunks: Iterator[bytes]) -> None:
        super().__init__(daemon=True)
        self.boot = boot
        self.chunks = chunks
        self.written = 0
        self.error: OSError | None = None
        self.start()

    def run(self) -> None:
        try:
            with open(self.boot, "wb", buffering=0) as f:
                for chunk in self.chunks:
                    view = memoryview(chunk)
                    while view:
                        n = f.write(view[:65536])
                        self.written += n
                        view = view[n:]
        except OSError as e:  # EPIPE when the device goes away: surfaced by the test
            self.error = e
