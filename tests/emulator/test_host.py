"""The emulated host: PCI sysfs with SR-IOV that makes real netdevs, power through `ipmitool`, teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dpf.lab.bed.netns import bed_namespaces, ns_ipr
from dpf.lab.bed.process import wait_until
from dpf.lab.emulator import DpuSpec, EmulatedBfb, EmulatedHost
from dpf.lab.emulator.control import request
from tests.emulator.conftest import host_name, misc_log, show_log

BF_IDS = {"0xa2d6", "0xa2dc"}


def links(netns: str) -> set[str]:
    with ns_ipr(netns) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)


def test_pci_tree_shows_bluefields_as_a_real_host_does(host: EmulatedHost) -> None:
    devices = host.root / "sys/bus/pci/devices"
    found = {}
    for entry in sorted(devices.iterdir()):
        if (entry / "vendor").read_text().strip() == "0x15b3" and (entry / "device").read_text().strip() in BF_IDS:
            netdevs = sorted(p.name for p in (entry / "net").iterdir())
            found[entry.name] = ((entry / "device").read_text().strip(), netdevs)
    assert found == {
        "0000:08:00.0": ("0xa2dc", ["ens1f0np0"]), "0000:08:00.1": ("0xa2dc", ["ens1f1np1"]),
        "0000:09:00.0": ("0xa2d6", ["ens2f0np0"]), "0000:09:00.1": ("0xa2d6", ["ens2f1np1"]),
    }
    pf = devices / "0000:08:00.0"
    assert (pf / "class").read_text() == "0x020000\n"
    assert (pf / "sriov_totalvfs").read_text() == "16\n"
    assert (pf / "sriov_numvfs").read_text() == "0\n"
    assert {"ens1f0np0", "ens1f1np1", "ens2f0np0", "ens2f1np1"} <= links(host.netns)
    assert {"pf0hpf", "pf1hpf"} <= links(host.dpus[0].netns)
    mac = (host.root / "sys/class/net/ens1f0np0/address").read_text().strip()
    with ns_ipr(host.netns) as ipr:
        assert ipr.get_links(ipr.link_lookup(ifname="ens1f0np0")[0])[0].get_attr("IFLA_ADDRESS") == mac


def test_sriov_numvfs_creates_and_removes_vf_netdevs_with_kernel_semantics(host: EmulatedHost) -> None:
    pf = host.root / "sys/bus/pci/devices/0000:08:00.0"
    dpu = host.dpus[0]
    assert sh(f"echo 4 > {pf}/sriov_numvfs").returncode == 0
    vfs = {f"ens1f0v{i}" for i in range(4)}
    wait_until(lambda: vfs <= links(host.netns), 10, "4 VF netdevs in the host's namespace")
    assert {f"pf0vf{i}" for i in range(4)} <= links(dpu.netns)  # their representors on the DPU side
    assert (pf / "sriov_numvfs").read_text() == "4\n"
    vf0 = (pf / "virtfn0").resolve()
    assert (vf0 / "physfn").resolve() == pf.resolve()
    assert (vf0 / "device").read_text() == "0x101e\n"
    assert [p.name for p in (vf0 / "net").iterdir()] == ["ens1f0v0"]

    # A different non-zero count while VFs exist: EBUSY in the kernel; here the write is undone and recorded.
    sh(f"echo 8 > {pf}/sriov_numvfs")
    wait_until(lambda: [r.errno_name for r in dpu.pfs[0].rejected] == ["EBUSY"], 5, "the EBUSY rejection")
    assert (pf / "sriov_numvfs").read_text() == "4\n"
    assert "ens1f0v4" not in links(host.netns)
    assert "EBUSY" in (host.root / "run/emulator/sysfs-errors.log").read_text()
    sh(f"echo 99 > {pf}/sriov_numvfs")
    wait_until(lambda: len(dpu.pfs[0].rejected) == 2, 5, "the ERANGE rejection")
    assert dpu.pfs[0].rejected[1].errno_name == "ERANGE"

    sh(f"echo 0 > {pf}/sriov_numvfs")
    wait_until(lambda: not links(host.netns) & vfs, 10, "the VF netdevs to go")
    assert not {f"pf0vf{i}" for i in range(4)} & links(dpu.netns)
    assert not (pf / "virtfn0").exists()
    assert sorted(p.name for p in (host.root / "sys/bus/pci/devices").iterdir())[:2] == ["0000:08:00.0",
                                                                                      "0000:08:00.1"]
    sh(f"echo 8 > {pf}/sriov_numvfs")  # 0 first, then a new count: accepted
    wait_until(lambda: "ens1f0v7" in links(host.netns), 10, "8 VFs")
    assert len(dpu.pfs[0].rejected) == 2
    # Again, the new count written as soon as the VFs are gone (as a host agent does) and in the kernel's other
    # notation: the emulator must not undo it by rewriting the file after the 0 (a rename racing the write).
    sh(f"echo 0 > {pf}/sriov_numvfs")
    wait_until(lambda: "ens1f0v0" not in links(host.netns), 10, "the 8 VFs to go")
    sh(f"echo 0x2 > {pf}/sriov_numvfs")
    wait_until(lambda: links(host.netns) & {f"ens1f0v{i}" for i in range(8)} == {"ens1f0v0", "ens1f0v1"}, 10,
               "2 VFs after 0 and then 0x2")
    wait_until(lambda: (pf / "sriov_numvfs").read_text() == "2\n", 5, "0x2 shown as the kernel shows it: 2")
    assert len(dpu.pfs[0].rejected) == 2


def test_ipmitool_power_cycle_reboots_the_dpus_and_is_recorded(host: EmulatedHost) -> None:
    for dpu in host.dpus:
        show_log(dpu.rshim.misc)
    pf = host.root / "sys/bus/pci/devices/0000:08:00.0"
    sh(f"echo 2 > {pf}/sriov_numvfs")
    wait_until(lambda: "ens1f0v1" in links(host.netns), 10, "2 VFs")
    ipmitool = str(host.ipmitool)
    boot_ids = [host.boot_id]
    status = sh(f"{ipmitool} -I lanplus -H 10.0.0.9 -U admin -P admin chassis power status")
    assert (status.returncode, status.stdout) == (0, "Chassis Power is on\n")
    cycle = sh(f"{ipmitool} chassis power cycle")
    assert (cycle.returncode, cycle.stdout) == (0, "Chassis Power Control: Cycle\n")
    for dpu in host.dpus:
        event = dpu.wait_ready()
        assert event.reason == "power-cycle"
        assert misc_log(dpu.rshim.misc)[0] == " INFO[BL2]: start"
        assert misc_log(dpu.rshim.misc)[-1] == " INFO[MISC]: DPU is ready"
    assert [e.action for e in host.power_events] == ["cycle"]
    assert "cycle" in (host.root / "run/emulator/power.log").read_text()
    assert (pf / "sriov_numvfs").read_text() == "0\n"  # the host rebooted: no VFs until written again
    assert "ens1f0v0" not in links(host.netns)
    boot_ids.append(host.boot_id)

    assert sh(f"{ipmitool} chassis power off").stdout == "Chassis Power Control: Down/Off\n"
    assert host.boot_id == boot_ids[-1]  # off is no boot
    assert sh(f"{ipmitool} chassis power status").stdout == "Chassis Power is off\n"
    refused = sh(f"{ipmitool} chassis power cycle")
    assert refused.returncode == 1
    assert "not supported in present state" in refused.stderr
    assert host.dpus[0].state == "off"
    assert sh(f"{ipmitool} chassis power on").returncode == 0
    assert host.dpus[0].wait_ready(after=1).reason == "power-on"
    boot_ids.append(host.boot_id)
    assert sh(f"{ipmitool} chassis power reset").returncode == 0
    boot_ids.append(host.boot_id)
    # The host's boot identity as /proc/sys/kernel/random/boot_id shows it: new on every boot, one uuid per line.
    assert len(set(boot_ids)) == 4, boot_ids
    assert all(len(b) == 36 for b in boot_ids)
    assert host.boot_id_file.read_text().endswith("\n")


def test_faults_and_status_over_the_control_socket(host: EmulatedHost) -> None:
    sock = host.run_dir / "control.sock"
    assert request(sock, {"op": "faults", "dpu": 1, "set": {"stall": True, "timings": {"install": 3}}}) == {"ok": True}
    assert host.dpus[1].faults.stall
    assert host.dpus[1].faults.timings.install == 3
    assert host.dpus[1].faults.timings.bl2 == host.timings.bl2
    status = request(sock, {"op": "status"})
    assert [d["pci"] for d in status["dpus"]] == ["0000:08:00.0", "0000:09:00.0"]
    assert request(sock, {"op": "faults", "dpu": 0, "set": {"bogus": 1}})["ok"] is False


def test_teardown_leaves_no_namespace_thread_or_file(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    root = tmp_path / "host"
    image = EmulatedBfb("v", 4 << 20).write(tmp_path / "image.bfb")
    host = EmulatedHost(host_name(), root, [DpuSpec(), DpuSpec(), DpuSpec()])
    try:
        namespaces = [host.netns, *(d.netns for d in host.dpus)]
        assert set(namespaces) <= set(bed_namespaces("t", os.getpid()))
        sh(f"echo 3 > {root}/sys/bus/pci/devices/0000:0a:00.1/sriov_numvfs")
        wait_until(lambda: "ens3f1v2" in links(host.netns), 10, "3 VFs")
        host.dpus[2].set_faults(rate=1e6)
        writer = subprocess.Popen(["sh", "-c", f"cat {image} > {host.dpus[2].rshim.boot}"], stderr=subprocess.PIPE)
        wait_until(lambda: host.dpus[2].rshim.bytes_accepted, 5, "the stream to start")
    finally:
        host.close()
    assert writer.wait(10) != 0  # the writer of a device that went away fails (EPIPE), it does not hang
    writer.stderr.close()
    assert not set(namespaces) & set(bed_namespaces("t", os.getpid()))
    assert {t.name for t in threading.enumerate()} - before == set()
    assert not root.exists()


def test_a_host_in_its_own_process_is_driven_through_its_files_and_removed_on_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "h"
    proc = subprocess.Popen([sys.executable, "-m", "dpf.lab.emulator", str(root), "--name", host_name(),
                             "--dpus", "2", "--owner", "t"], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (root / "run/emulator/control.sock").exists(), 30, "the host to come up")
        assert len(bed_namespaces("t", proc.pid)) == 3
        rshim = root / "dev/rshim1"
        subprocess.run(["sh", "-c", f'echo "DISPLAY_LEVEL 2" > {rshim}/misc'], check=True)
        assert sh(f"{root}/usr/bin/ipmitool chassis power reset").returncode == 0
        wait_until(lambda: " INFO[MISC]: DPU is ready" in misc_log(rshim / "misc"), 10, "the DPU to reboot")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "dpu1: DPU is ready (reset, factory, hostname None)" in out
    assert bed_namespaces("t", proc.pid) == []
    assert not root.exists()


def test_hosts_in_one_process_share_one_watcher_and_each_keeps_working(tmp_path: Path) -> None:
    first = EmulatedHost(host_name(), tmp_path / "a")
    second = EmulatedHost(host_name(), tmp_path / "b")
    try:
        assert [t.name for t in threading.enumerate()].count("emulator-watch-shared") == 1
        first.close()
        sh(f"echo 2 > {second.root}/sys/bus/pci/devices/0000:08:00.0/sriov_numvfs")
        wait_until(lambda: "ens1f0v1" in links(second.netns), 10, "the second host's VFs")
    finally:
        first.close()
        second.close()
    assert "emulator-watch-shared" not in [t.name for t in threading.enumerate()]
