"""`dpf lab --use-case hbn_ovn`, as a user runs it: upstream's 05.2 DPUDeployment on DPUs the lab provisions. A lab of
its own (not test_lab_command's shared one), run to the end with `--for 0`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"), pytest.mark.timeout(1200)]
DPF = [sys.executable, "-m", "dpf.cli"]


def test_lab_runs_upstreams_hbn_ovn_dpudeployment_on_dpus_it_provisions() -> None:
    """`dpf lab --use-case hbn_ovn`: 05.2's DPUDeployment applied unchanged provisions its DPU and runs a pod of each
    of its four DPUServices there; the lab then stops by itself, deleting the DPUDeployment first."""
    workdir = Path(tempfile.mkdtemp(prefix="dpf-lab-ovn-"))
    try:
        run = subprocess.run([*DPF, "lab", "--use-case", "hbn_ovn", "--hosts", "1", "--workdir", str(workdir),
                              "--for", "0"], capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    text = run.stdout
    assert re.search(r"DPU worker1-0000-08-00: +[\d.]+s +Ready", text), text
    assert re.search(r"DPUDeployment ovn-hbn Ready [\d.]+s after it was applied: every condition True", text), text
    for service in ("ovn", "hbn", "dts", "blueman"):
        assert re.search(rf"DPUService ovn-hbn-{service}: worker1-0000-08-00: \S+ Running", text), (service, text)
    assert "deleting DPUDeployment ovn-hbn" in text
    assert "stopped cleanly" in text
