"""Figure for the later flasher-vs-cat bench: raw `cat` of a 1 GiB emulated BFB into `boot`, rate unlimited.

Prints `cat-into-boot: <MB/s>`; the assertion is only that the full GiB arrived and booted.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from dpf.lab.emulator import DpuSpec, EmulatedBfb, EmulatedHost
from tests.emulator.conftest import SAMPLE_BFCFG, host_name

GIB = 1 << 30


@pytest.mark.slow
def test_raw_cat_of_one_gib_into_boot(tmp_path: Path) -> None:
    image = EmulatedBfb("bench-1g", GIB, seed=11)
    bfb = image.write(tmp_path / "bench.bfb")
    cfg = tmp_path / "bf.cfg"
    cfg.write_text(SAMPLE_BFCFG)
    with EmulatedHost(host_name(), tmp_path / "host", [DpuSpec()]) as host:
        dpu = host.dpus[0]
        started = time.monotonic()
        subprocess.run(["sh", "-c", f"cat {bfb} {cfg} > {dpu.rshim.boot}"], check=True, timeout=300)
        seconds = time.monotonic() - started
        event = dpu.wait_ready(timeout=60)
        record = dpu.rshim.streams[-1]
    assert event.version == "bench-1g"
    assert record.bytes == image.total_size + len(SAMPLE_BFCFG)
    print(f"\ncat-into-boot: {record.bytes / seconds / 1e6:.0f} MB/s ({record.bytes} bytes in {seconds:.2f} s); "
          f"the device's sha256 alone: {sha256_rate() / 1e6:.0f} MB/s")


def sha256_rate() -> float:
    """The device's ceiling: it hashes every payload byte on one thread."""
    block = bytes(1 << 20)
    sha = hashlib.sha256()
    started = time.monotonic()
    for _ in range(256):
        sha.update(block)
    return (256 << 20) / (time.monotonic() - started)
