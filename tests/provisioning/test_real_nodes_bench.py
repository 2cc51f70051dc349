"""`bench/provision/real_nodes.py` at its smallest: one emulated server, one DPU provisioned by the lab's own path
(`lab/provision.py`) until it is Ready with a real containerd + kubelet joined to the DPU cluster; the bench prints
its row, its per-DPU memory and leaves none of its network namespaces behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "provision" / "real_nodes.py"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns, kubelet and OVS"),
              pytest.mark.timeout(900)]


def _netns() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split())


@pytest.mark.slow
def test_the_real_kubelet_bench_brings_one_dpu_ready_and_prints_its_row() -> None:
    # Its own temporary directory: under pytest's tmp_path the emulator's unix socket paths get too long.
    done = subprocess.run([sys.executable, str(BENCH), "--hosts", "1", "--timeout", "480"],
                          capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| 1 | 1 x 1 | kubelet |")]
    assert len(rows) == 1, done.stdout[-3000:]
    total, slowest = float(rows[0][4]), float(rows[0][5])
    assert 0 < slowest <= total, rows
    assert "every DPU's Ready condition True and its Node Ready" in done.stdout
    assert re.search(r"kubelet x1: [1-9]\d* MiB RSS", done.stdout), done.stdout[-3000:]
    assert re.search(r"containerd x[1-9]\d*: [1-9]\d* MiB RSS", done.stdout), done.stdout[-3000:]
    servers = re.findall(r"emulated in its own process \(pid (\d+), netns", done.stdout)
    assert len(servers) == 1, done.stdout[-3000:]
    ours = {ns for ns in _netns() if ns.startswith(f"dpf-lab{servers[0]}-")}
    assert not ours, f"network namespaces left behind: {sorted(ours)}"
