"""The bed leaves nothing behind when a test run is interrupted (Ctrl-C) or killed outright.

Each case runs a nested pytest whose test holds every fixture (kube, ovs, netns pods), interrupts
it mid-test, and then looks for anything of it still on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dpf.lab.bed.netns import bed_namespaces, reap_stale
from dpf.lab.bed.process import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and OVS")
REPO = Path(__file__).resolve().parents[2]

HOLDING_TEST = textwrap.dedent("""
    import time
    from pathlib import Path

    def test_hold(kube, ovs, netns, tmp_path_factory):
        ovs.add_bridge("br0")
        pod = netns.pod("held", "10.99.0.1/24", peer_ns=ovs.netns)
        ovs.add_port("br0", pod.peer)
        Path({marker!r}).write_text("holding")
        time.sleep(120)
""")


def start_holding_run(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    marker = tmp_path / "holding"
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(HOLDING_TEST.format(marker=str(marker)))
    log = (tmp_path / "inner.log").open("wb")
    # A run started in the background by a non-interactive shell inherits SIGINT ignored, and Python then never
    # turns Ctrl-C into KeyboardInterrupt: the nested run gets the default disposition back before it starts.
    default_sigint = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    inner = subprocess.Popen(
        [sys.executable, "-c", default_sigint, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
         "-s", "--log-cli-level=INFO", "--basetemp", str(tmp_path / "inner"), "--rootdir", str(tmp_path),
         "-c", os.devnull, str(test_file)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_until(lambda: marker.exists() or inner.poll() is not None, 120, "the nested run to hold its fixtures")
    assert inner.poll() is None, "the nested run ended before holding its fixtures"
    return inner, tmp_path / "inner"


def leftovers(basetemp: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-fa", str(basetemp)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_ctrl_c_tears_down_every_fixture(tmp_path: Path) -> None:
    inner, basetemp = start_holding_run(tmp_path)
    assert leftovers(basetemp), "the nested run's daemons should be visible while it holds"
    inner.send_signal(signal.SIGINT)
    try:
        inner.wait(60)
    except subprocess.TimeoutExpired:
        inner.kill()
        inner.wait()
        pytest.fail("the interrupted run did not end within 60 s:\n" + (tmp_path / "inner.log").read_text()[-6000:])
    assert leftovers(basetemp) == []
    assert bed_namespaces("t", inner.pid) == []


def test_sigkill_takes_daemons_down_and_namespaces_are_reaped(tmp_path: Path) -> None:
    inner, basetemp = start_holding_run(tmp_path)
    inner.kill()
    inner.wait(10)
    wait_until(lambda: leftovers(basetemp) == [], 10, "daemons to die with their parent")
    stale = bed_namespaces("t", inner.pid)
    assert stale, "a SIGKILLed run cannot remove its namespaces itself"
    assert set(reap_stale("t")) >= set(stale)
    assert bed_namespaces("t", inner.pid) == []
