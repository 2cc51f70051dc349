"""Detection against the emulated host (BlueField-3 + BlueField-2; no DPUs) and a hand-made sysfs tree for what
the emulator cannot make (other NICs, a PSID, the real rshim's `DEV_NAME` of function .2)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.agent.cni.links import in_netns
from dpf.agent.host.detect import detect, find_device, read_boot_id
from dpf.lab.bed.netns import NetnsBed, ns_ipr
from dpf.lab.bed.process import wait_until
from dpf.lab.emulator import DpuSpec, EmulatedHost
from dpf.proto.v1 import provisioning_pb2 as pb

_names = itertools.count()


def ensure_boot_id(root: Path) -> str:
    """The emulator writes boot_id itself once it has it; a root without one gets one here."""
    path = root / "proc/sys/kernel/random/boot_id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{uuid.uuid4()}\n")
    return path.read_text().strip()


def detect_in(netns: str, root: Path, bridge: str = "br-dpu") -> pb.HostInfo:
    """detect() as the host agent runs it: in the host's network namespace."""
    with in_netns(f"/run/netns/{netns}"):
        return detect(root, bridge)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[EmulatedHost]:
    with EmulatedHost(f"hd{next(_names)}", tmp_path / "host",
                      [DpuSpec("BlueField-3"), DpuSpec("BlueField-2")]) as h:
        yield h


def test_two_bluefields_are_reported_in_pci_order_with_netdev_and_rshim(host: EmulatedHost) -> None:
    boot_id = ensure_boot_id(host.root)
    info = detect_in(host.netns, host.root)
    assert info.boot_id == boot_id
    assert list(info.devices) == [
        pb.HostDevice(pci_address="0000:08:00.0", device_id="0xa2dc", model="BlueField-3", pf0_name="ens1f0np0",
                      rshim="/dev/rshim0"),
        pb.HostDevice(pci_address="0000:09:00.0", device_id="0xa2d6", model="BlueField-2", pf0_name="ens2f0np0",
                      rshim="/dev/rshim1"),
    ]
    assert not info.oob_bridge_configured

    # VFs (and PF1) are functions of the DPU, not DPUs of their own.
    pf0 = host.root / "sys/bus/pci/devices/0000:08:00.0"
    (pf0 / "sriov_numvfs").write_text("2\n")
    wait_until(lambda: (pf0 / "virtfn1/net").exists() and any((pf0 / "virtfn1/net").iterdir()), 10,
               "2 VF netdevs of 0000:08:00.0")
    assert [d.pci_address for d in detect_in(host.netns, host.root).devices] == ["0000:08:00.0", "0000:09:00.0"]


def test_oob_bridge_configured_only_for_a_bridge_with_an_ipv4_address(host: EmulatedHost) -> None:
    with ns_ipr(host.netns) as ipr:
        # The right name on the wrong kind of link.
        ipr.link("add", ifname="br-dpu", kind="veth", peer={"ifname": "br-dpu-peer"})
        ipr.addr("add", index=ipr.link_lookup(ifname="br-dpu")[0], address="192.0.2.1", prefixlen=24)
    assert not detect_in(host.netns, host.root).oob_bridge_configured
    with ns_ipr(host.netns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="br-dpu")[0])
        ipr.link("add", ifname="br-dpu", kind="bridge")
        bridge = ipr.link_lookup(ifname="br-dpu")[0]
        ipr.addr("add", index=bridge, address="fd00::1", prefixlen=64)
    assert not detect_in(host.netns, host.root).oob_bridge_configured  # IPv6 only: upstream wants IPv4
    with ns_ipr(host.netns) as ipr:
        ipr.addr("add", index=bridge, address="192.0.2.1", prefixlen=24)
    assert detect_in(host.netns, host.root).oob_bridge_configured
    assert not detect_in(host.netns, host.root, bridge="br-oob").oob_bridge_configured  # the configured name


def test_host_without_dpus_reports_none(tmp_path: Path) -> None:
    with EmulatedHost(f"hd{next(_names)}", tmp_path / "host", []) as host:
        boot_id = ensure_boot_id(host.root)
        info = detect_in(host.netns, host.root)
    assert info == pb.HostInfo(boot_id=boot_id)


def _function(root: Path, address: str, vendor: int, device: int, netdevs: tuple[str, ...] = ()) -> Path:
    path = root / "sys/devices/pci0000:00" / address
    path.mkdir(parents=True)
    (path / "vendor").write_text(f"0x{vendor:04x}\n")
    (path / "device").write_text(f"0x{device:04x}\n")
    for name in netdevs:
        (path / "net" / name).mkdir(parents=True)
    bus = root / "sys/bus/pci/devices"
    bus.mkdir(parents=True, exist_ok=True)
    (bus / address).symlink_to(f"../../../devices/pci0000:00/{address}")
    return path


def _rshim(root: Path, index: int, dev_name: str) -> None:
    path = root / "dev" / f"rshim{index}"
    path.mkdir(parents=True)
    (path / "misc").write_text(f"DISPLAY_LEVEL   0 (0:basic, 1:advanced, 2:log)\nBOOT_MODE       1 (0:rshim, "
                               f"1:emmc, 2:emmc-boot-swap)\nDEV_NAME        {dev_name}\nDEV_INFO        BlueField\n")


def test_other_nics_are_ignored_and_rshims_match_by_slot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _function(root, "0000:03:00.0", 0x15B3, 0x101D, ("ens3f0np0",))  # ConnectX-6 Dx: Mellanox, not a BlueField
    _function(root, "0000:04:00.0", 0x8086, 0xA2DC, ("eno1",))  # a BlueField's device id under another vendor
    bf3 = _function(root, "0000:e1:00.0", 0x15B3, 0xA2DC, ("ens7f0np0",))
    _function(root, "0000:e1:00.1", 0x15B3, 0xA2DC, ("ens7f1np1",))
    (bf3 / "infiniband/mlx5_0").mkdir(parents=True)
    (bf3 / "infiniband/mlx5_0/board_id").write_text("MT_0000000884\n")
    _function(root, "0000:0f:00.0", 0x15B3, 0xA2D6)  # no driver bound: no netdev, no rshim
    vf = _function(root, "0000:e1:01.0", 0x15B3, 0xA2DC)  # a function 0 with a BlueField id, but a VF (ARI)
    (vf / "physfn").symlink_to("../0000:e1:00.0")
    # The real rshim names its own function (.2); rshim0 serves a device absent here.
    _rshim(root, 0, "pcie-0000:5a:00.2")
    _rshim(root, 1, "pcie-0000:e1:00.2")
    bed = NetnsBed(owner="t")
    try:
        info = detect_in(bed.namespace(f"hd{next(_names)}"), root)
    finally:
        bed.cleanup()
    assert info == pb.HostInfo(devices=[
        pb.HostDevice(pci_address="0000:0f:00.0", device_id="0xa2d6", model="BlueField-2"),
        pb.HostDevice(pci_address="0000:e1:00.0", device_id="0xa2dc", model="BlueField-3", pf0_name="ens7f0np0",
                      rshim="/dev/rshim1", psid="MT_0000000884"),
    ])


def test_find_device_accepts_the_label_and_sysfs_spellings() -> None:
    info = pb.HostInfo(devices=[pb.HostDevice(pci_address="0000:08:00.0"), pb.HostDevice(pci_address="0000:e1:00.0")])
    for spelling in ("0000-e1-00", "0000:e1:00", "0000:e1:00.0", "0000-E1-00"):
        assert find_device(info, spelling) == info.devices[1], spelling
    assert find_device(info, "0000-09-00") is None
    assert find_device(info, "0000:e1:00.1") is None  # PF1 is not a DPU's address


def test_read_boot_id(tmp_path: Path) -> None:
    assert read_boot_id(tmp_path) == ""
    boot_id = ensure_boot_id(tmp_path)
    assert read_boot_id(tmp_path) == boot_id
    assert len(boot_id) == 36
