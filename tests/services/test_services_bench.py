"""`bench/services/run.py` at its smallest: 2 DPUServices into 1 DPU cluster with 1 kwok Node, through apply, a
changed value and delete, with every real part the bench runs at scale (apiservers, kube-controller-manager, the
scheduler, kwok, the HTTPS chart repository, Helm, the controller as its own process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "services" / "run.py"


@pytest.mark.slow
def test_the_services_bench_brings_two_dpuservices_ready_rolls_one_and_uninstalls_them(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--services", "2", "--clusters", "1", "--nodes", "1",
                           "--idle", "0", "--timeout", "300", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 2 x 1 (1) |")]
    assert [row.split("|")[4].strip() for row in rows] == ["apply", "change (one)", "delete"], done.stdout
    apply, change, delete = (row.split("|")[10] for row in rows)
    assert "2 upgrade" in apply, rows
    assert "1 upgrade" in change, rows
    assert "2 uninstall" in delete, rows
    assert "all Ready, rolled and uninstalled" in done.stdout
