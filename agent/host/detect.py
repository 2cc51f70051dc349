"""Detection: the BlueField DPUs of this host, from PCI sysfs and the rshim devices, plus the host's boot id.

Every path is read under `sysroot` (`/` on a real host, an emulated host's root in the lab and the tests):

    <sysroot>/sys/bus/pci/devices/<addr>/{vendor,device}      vendor 0x15b3; 0xa2d6 BlueField-2, 0xa2dc BlueField-3
    <sysroot>/sys/bus/pci/devices/<addr>/net/<ifname>         PF0's netdev
    <sysroot>/sys/bus/pci/devices/<addr>/infiniband/*/board_id  the board's PSID, when the RDMA driver is loaded
    <sysroot>/dev/rshim<N>/misc                               `DEV_NAME pcie-<addr>`: which device rshim<N> serves
    <sysroot>/proc/sys/kernel/random/boot_id                  changes on every boot

A DPU is the function 0 of a BlueField physical function pair; function 1 (PF1) and the VFs are not DPUs.
The rshim of a DPU is matched on the PCI slot (domain:bus:device) of `DEV_NAME`: the real rshim names its own
function there (`pcie-0000:08:00.2`), the emulator PF0 (`pcie-0000:08:00.0`).

The OOB bridge check uses netlink in the calling thread's network namespace (`rtnl.py`: the host agent passes
the socket it keeps; without one a call opens and closes its own).

`probe` is the cheap part (no file contents but the boot id, no netlink): what changes when a device, VF or rshim
comes or goes or the host reboots. The host agent re-runs the full `detect` when the probe changes, and
otherwise on a slower cadence (`agent/host/main.py`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from dpf.agent.host.rtnl import Rtnl
from dpf.proto.v1 import provisioning_pb2 as pb

VENDOR_MELLANOX = 0x15B3
MODELS = {0xA2D6: "BlueField-2", 0xA2DC: "BlueField-3"}
PCI_DEVICES = Path("sys/bus/pci/devices")
BOOT_ID = Path("proc/sys/kernel/random/boot_id")


def detect(sysroot: Path, oob_bridge: str = "br-dpu", rtnl: Rtnl | None = None) -> pb.HostInfo:
    """What the host agent reports as `HostInfo`: boot id, BlueFields ordered by PCI address, OOB bridge state."""
    rshims = _rshims_by_slot(sysroot)
    devices = []
    for function in sorted((sysroot / PCI_DEVICES).glob("*")):
        model = bluefield_model(function)
        if model is None or not function.name.endswith(".0") or (function / "physfn").exists():
            continue
        devices.append(pb.HostDevice(
            pci_address=function.name, device_id=_read(function / "device").lower(), model=model,
            pf0_name=_first_netdev(function), rshim=rshims.get(pci_slot(function.name), ""),
            psid=_psid(function)))
    return pb.HostInfo(boot_id=read_boot_id(sysroot), devices=devices,
                       oob_bridge_configured=bridge_has_ipv4(oob_bridge, rtnl))


def probe(sysroot: Path) -> tuple[str, ...]:
    """The boot id, the PCI functions and the rshim devices by name: three cheap reads that differ whenever a
    BlueField, a VF or an rshim comes or goes, or the host reboots."""
    def names(directory: Path, prefix: str = "") -> str:
        try:
            return " ".join(sorted(n for n in os.listdir(directory) if n.startswith(prefix)))
        except FileNotFoundError:
            return ""

    return read_boot_id(sysroot), names(sysroot / PCI_DEVICES), names(sysroot / "dev", "rshim")


def read_boot_id(sysroot: Path) -> str:
    """The kernel's boot id (a uuid); empty when `sysroot` has no such file."""
    try:
        return _read(sysroot / BOOT_ID)
    except FileNotFoundError:
        return ""


def find_device(info: pb.HostInfo, pci_address: str) -> pb.HostDevice | None:
    """The device at `pci_address`, given as the labels carry it ("0000-08-00"), as a slot ("0000:08:00")
    or as PF0's function ("0000:08:00.0")."""
    wanted = normalize_pci_address(pci_address)
    return next((d for d in info.devices if d.pci_address == wanted), None)


def normalize_pci_address(pci_address: str) -> str:
    """"0000-08-00" / "0000:08:00" / "0000:08:00.0" → "0000:08:00.0" (PF0 of the slot); lowercase."""
    address = pci_address.strip().lower().replace("-", ":")
    return address if "." in address else f"{address}.0"


def pci_slot(pci_address: str) -> str:
    """"0000:08:00.2" → "0000:08:00"."""
    return pci_address.rpartition(".")[0] or pci_address


def bluefield_model(function: Path) -> str | None:
    """"BlueField-2"/"BlueField-3" when the PCI function at `function` is a BlueField PF, else None."""
    try:
        vendor = int(_read(function / "vendor"), 16)
        device = int(_read(function / "device"), 16)
    except (OSError, ValueError):
        return None  # a function being removed, or not a PCI function directory
    return MODELS.get(device) if vendor == VENDOR_MELLANOX else None


def bridge_has_ipv4(name: str, rtnl: Rtnl | None = None) -> bool:
    """`name` is a Linux bridge in this thread's network namespace and holds an IPv4 address."""
    with contextlib.ExitStack() as stack:
        if rtnl is None:
            rtnl = stack.enter_context(Rtnl())
        link = rtnl.link(name)
        if link is None or link_kind(link) != "bridge":
            return False
        return bool(rtnl.ipv4_addresses(link["index"]))


def link_kind(link: Any) -> str:
    """The rtnetlink kind of a link ("bridge", "veth", ...); empty for a physical netdev."""
    info = link.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") or "") if info else ""


def _first_netdev(function: Path) -> str:
    try:
        return min(p.name for p in (function / "net").iterdir())
    except (FileNotFoundError, ValueError):
        return ""  # no driver bound (no net/), or no netdev yet


def _rshims_by_slot(sysroot: Path) -> dict[str, str]:
    """PCI slot → "/dev/rshim<N>", from each rshim's `misc` header."""
    found: dict[str, str] = {}
    for misc in sorted((sysroot / "dev").glob("rshim*/misc")):
        try:
            text = misc.read_text(errors="replace")
        except OSError:
            continue  # an rshim going away; the next scan sees the rest
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "DEV_NAME":
                name = value.strip()
                if name.startswith("pcie-"):
                    found.setdefault(pci_slot(name.removeprefix("pcie-").lower()), f"/dev/{misc.parent.name}")
                break
    return found


def _psid(function: Path) -> str:
    """The PSID as the RDMA driver exposes it (`board_id`, e.g. "MT_0000000884"): a file read, unlike flint."""
    for board_id in sorted(function.glob("infiniband/*/board_id")):
        try:
            return _read(board_id)
        except OSError:
            continue
    return ""


def _read(path: Path) -> str:
    return path.read_text().strip()
