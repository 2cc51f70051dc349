#!/usr/bin/env python3
"""Flasher throughput against raw `cat`, into the same emulated rshim device, rate unlimited, one run.

    .venv/bin/python bench/provision/flasher.py [--size-mib 1024] [--rounds 1]

The host agent's flasher (`dpf.agent.host.flasher.Flasher`: sendfile of the BFB into `boot`, then the
bf.cfg, then waiting for the DPU's boot log) against `cat image.bfb bf.cfg > boot`, the way bfb-install
streams. Both are timed by the device itself (its first to last byte of the stream), so the figure is the
rate the device took the bytes at; the emulated device hashes every payload byte on one thread, which is the
ceiling (printed too). Each round runs cat, then the flasher, then cat again; the ratio is the flasher against
the mean of the two cats around it. Goal: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from dpf.agent.host.flasher import Flasher
from dpf.lab.emulator import DpuSpec, EmulatedBfb, EmulatedHost
from dpf.proto.v1 import provisioning_pb2 as ppb

REPO = Path(__file__).resolve().parents[2]
BFCFG = (REPO / "tests/emulator/sample_bf.cfg").read_bytes()
_boots = itertools.count(1)


def device_rate(host: EmulatedHost) -> float:
    record = host.dpus[0].rshim.streams[-1]
    if record.ended is None or record.outcome is None or not record.outcome.ok:
        raise RuntimeError(f"the stream did not complete as a good image: {record}")
    return record.bytes / (record.ended - record.started)


def with_cat(host: EmulatedHost, bfb: Path, cfg: Path) -> float:
    dpu = host.dpus[0]
    boots = len(dpu.boots)
    subprocess.run(["sh", "-c", f"cat {bfb} {cfg} > {dpu.rshim.boot}"], check=True, timeout=600)
    dpu.wait_ready(after=boots, timeout=120)
    return device_rate(host)


def with_flasher(host: EmulatedHost, bfb: Path) -> float:
    dpu = host.dpus[0]
    result = Flasher(dpu.rshim_dir, bfb, BFCFG, timeout=600, cancel=threading.Event()).run()
    assert result.state == ppb.INSTALL_STATE_DONE, result
    return device_rate(host)


def sha256_rate() -> float:
    block, sha = bytes(1 << 20), hashlib.sha256()
    started = time.monotonic()
    for _ in range(256):
        sha.update(block)
    return (256 << 20) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpf-bench-flasher-") as tmp:
        work = Path(tmp)
        bfb = EmulatedBfb("bench", args.size_mib << 20, seed=7).write(work / "bench.bfb")
        cfg = work / "bf.cfg"
        cfg.write_bytes(BFCFG)
        with EmulatedHost(f"fb{os.getpid() % 1000}", work / "host", [DpuSpec()], owner="bench") as host:
            ratios = []
            for round_ in range(1, args.rounds + 1):
                before = with_cat(host, bfb, cfg)
                ours = with_flasher(host, bfb)
                after = with_cat(host, bfb, cfg)
                ratio = ours / statistics.mean((before, after))
                ratios.append(ratio)
                print(f"round {round_}: cat {before / 1e6:.0f} MB/s, flasher {ours / 1e6:.0f} MB/s, "
                      f"cat {after / 1e6:.0f} MB/s -> flasher/cat {ratio:.3f}", flush=True)
        load = os.getloadavg()[0]
        print(f"size {bfb.stat().st_size} bytes + bf.cfg; median flasher/cat {statistics.median(ratios):.3f} over "
              f"{len(ratios)} round(s); device ceiling (sha256, one core) {sha256_rate() / 1e6:.0f} MB/s; "
              f"load average {load:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
