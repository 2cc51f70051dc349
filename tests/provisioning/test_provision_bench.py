"""`bench/provision/run.py` at its smallest with its host agents multiplexed: 4 DPUs on 2 emulated servers whose two
host agents share one process (`bench/provision/agents.py`), each with its own certificate, stream, rshims and
network namespace. Every DPU reaching Ready means each agent flashed its own server's DPUs and put VF0 into its
own server's `br-dpu` (Host Network Configuration), from a process that is in neither server's namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "provision" / "run.py"


@pytest.mark.slow
def test_two_servers_host_agents_in_one_process_provision_four_dpus_to_ready() -> None:
    # A short work dir: each emulated server's control socket lives under it (a unix socket path's ~104 bytes).
    with tempfile.TemporaryDirectory(prefix="dpf-pbt-", dir="/tmp") as tmp:
        work = Path(tmp)
        done = subprocess.run([sys.executable, str(BENCH), "--dpus", "4", "--per-host", "2", "--agent-processes", "1",
                               "--timeout", "240", "--keep", str(work)], capture_output=True, text=True, timeout=600)
        spec = json.loads((work / "4-w4" / "host-agents-0.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 4 | 2 x 2 |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[2] == "1 (multiplexed)", row
    assert not cells[6].startswith("timeout"), row
    assert "Host Network Configuration" in done.stdout, done.stdout[-3000:]
    assert [entry["node"] for entry in spec] == ["worker-0", "worker-1"]
