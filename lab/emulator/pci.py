"""The PCI sysfs tree of an emulated host: BlueField PFs with SR-IOV, whose VF netdevs are real veth pairs.

Layout under the host's root, as on a real host:

    sys/devices/pci0000:00/0000:08:00.0/{vendor,device,class,sriov_totalvfs,sriov_numvfs}
    sys/devices/pci0000:00/0000:08:00.0/net/ens1f0np0/{address,device -> ../..}
    sys/devices/pci0000:00/0000:08:00.0/virtfn0 -> ../0000:08:00.2        (while VFs exist)
    sys/devices/pci0000:00/0000:08:00.2/physfn -> ../0000:08:00.0
    sys/bus/pci/devices/0000:08:00.0 -> ../../../devices/pci0000:00/0000:08:00.0
    sys/class/net/ens1f0np0 -> ../../devices/pci0000:00/0000:08:00.0/net/ens1f0np0

Each netdev is one end of a veth pair: the host end (PF `ens<slot>f<p>np<p>`, VF `ens<slot>f<p>v<i>`) in the
host's namespace, the other end in the DPU's namespace named as the DPU's representor (`pf<p>hpf`,
`pf<p>vf<i>`), so what the host sends on a VF arrives on the DPU's representor, as on a BlueField.

A write to `sriov_numvfs` is applied when the writer closes the file (inotify on the PF's directory), with the
kernel's rules (`sriov_numvfs_store`): the same value again is a no-op; 0 removes the VFs; a non-zero value
while VFs exist fails with EBUSY; above `sriov_totalvfs` fails with ERANGE; anything else not a number fails
with EINVAL.
VF netdevs appear one by one, `vf_probe_seconds` apart (0 by default): on a real host the write returns before
mlx5 has probed every VF, so a host agent must wait for the netdevs, and a test can make that wait certain.
A failed write is undone (the file shows the current count again) and recorded in `rejected` and in
`<root>/run/emulator/sysfs-errors.log`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

from dpf.lab.bed.netns import ns_ipr

VENDOR_MELLANOX = 0x15B3
DEVICE_IDS = {"BlueField-2": 0xA2D6, "BlueField-3": 0xA2DC}
VF_DEVICE_ID = 0x101E  # ConnectX family virtual function
ETHERNET_CLASS = 0x020000
DEVICES = "sys/devices/pci0000:00"


@dataclass(frozen=True)
class RejectedWrite:
    path: str
    value: str
    errno_name: str


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _replace(path: Path, text: str) -> None:
    """Rewrite atomically: a reader sees the old or the new content, never an empty file."""
    tmp = path.with_name(f".{path.name}.new")
    _write(tmp, text)
    os.replace(tmp, path)


class _Links:
    """Netlink handles into the host's and the DPU's namespaces, opened once per batch of links (opening
    one into a namespace costs far more than a link does)."""

    def __init__(self, host_ns: str, dpu_ns: str) -> None:
        self._stack = contextlib.ExitStack()
        self.host = self._stack.enter_context(ns_ipr(host_ns))
        self.dpu = self._stack.enter_context(ns_ipr(dpu_ns))
        self._dpu_ns = dpu_ns

    def add_veth(self, host_if: str, dpu_if: str) -> str:
        """A veth pair, both ends up; returns the host end's MAC."""
        self.host.link("add", ifname=host_if, kind="veth", peer={"ifname": dpu_if, "net_ns_fd": self._dpu_ns})
        index = self.host.link_lookup(ifname=host_if)[0]
        self.host.link("set", index=index, state="up")
        self.dpu.link("set", index=self.dpu.link_lookup(ifname=dpu_if)[0], state="up")
        return self.host.get_links(index)[0].get_attr("IFLA_ADDRESS")

    @staticmethod
    def delete(ipr: IPRoute, ifname: str) -> bool:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        with contextlib.suppress(NetlinkError):
            ipr.link("del", index=found[0])
        return True

    def __enter__(self) -> _Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@dataclass
class PhysicalFunction:
    """One PF of a BlueField: its sysfs directory, its netdev and its VFs."""

    root: Path
    address: str  # 0000:08:00.0
    index: int  # 0 or 1
    ifname: str
    device_id: int
    totalvfs: int
    host_ns: str
    dpu_ns: str
    vf_probe_seconds: float = 0.0
    """Delay before each VF's netdev appears (see the module docstring)."""
    numvfs: int = 0
    rejected: list[RejectedWrite] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> Path:
        return self.root / DEVICES / self.address

    @property
    def numvfs_file(self) -> Path:
        return self.path / "sriov_numvfs"

    @property
    def representor(self) -> str:
        return f"pf{self.index}hpf"

    def vf_ifname(self, i: int) -> str:
        return f"{self.ifname.rsplit('np', 1)[0]}v{i}"

    def vf_representor(self, i: int) -> str:
        return f"pf{self.index}vf{i}"

    def vf_address(self, i: int) -> str:
        # The PF's bus: VFs follow both PFs' function numbers (ARI), PF1's after PF0's.
        domain_bus, _, _ = self.address.rpartition(":")
        devfn = 2 + self.index * self.totalvfs + i
        return f"{domain_bus}:{devfn // 8:02x}.{devfn % 8}"

    def create(self) -> None:
        _function_dir(self.root, self.address, self.device_id)
        _write(self.path / "sriov_totalvfs", f"{self.totalvfs}\n")
        _write(self.numvfs_file, "0\n")
        with _Links(self.host_ns, self.dpu_ns) as links:
            mac = links.add_veth(self.ifname, self.representor)
        _netdev_dir(self.root, self.address, self.ifname, mac)

    def on_numvfs_write(self) -> None:
        """Apply what a writer left in `sriov_numvfs` (called by the host's watcher after close)."""
        with self._lock:
            text = self.numvfs_file.read_text()
            if text == f"{self.numvfs}\n":
                return  # our own rewrite, or the same value again (a no-op for the kernel too)
            try:
                wanted = int(text.strip(), 0)
            except ValueError:
                return self._reject(text, "EINVAL")
            if wanted < 0:
                return self._reject(text, "EINVAL")
            if wanted > self.totalvfs:
                return self._reject(text, "ERANGE")
            if wanted and self.numvfs and wanted != self.numvfs:
                return self._reject(text, "EBUSY")
            if wanted != self.numvfs:
                self._set_vfs(wanted)
            # Shown as the kernel would ("0x8" as "8"). An accepted value already written so is left alone: a
            # rewrite would race the writer's next write (0, then a new count), which the rename would undo.
            if text.strip() != str(self.numvfs):
                _replace(self.numvfs_file, f"{self.numvfs}\n")

    def reset_vfs(self) -> None:
        """A host reboot: the kernel starts with no VFs."""
        with self._lock:
            self._set_vfs(0)
            _replace(self.numvfs_file, "0\n")

    def _reject(self, text: str, errno_name: str) -> None:
        _replace(self.numvfs_file, f"{self.numvfs}\n")
        log = self.root / "run" / "emulator" / "sysfs-errors.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"{time.time():.3f} {self.numvfs_file.relative_to(self.root)} {text.strip()!r} {errno_name}\n")
        self.rejected.append(RejectedWrite(str(self.numvfs_file), text.strip(), errno_name))

    def _set_vfs(self, wanted: int) -> None:
        with _Links(self.host_ns, self.dpu_ns) as links:
            if wanted == 0:
                for i in range(self.numvfs):
                    self._remove_vf(links, i)
            else:
                for i in range(wanted):
                    if self.vf_probe_seconds:
                        time.sleep(self.vf_probe_seconds)  # on the watcher's thread: a test-only dial
                    self._add_vf(links, i)
        self.numvfs = wanted

    def _add_vf(self, links: _Links, i: int) -> None:
        vf = self.vf_address(i)
        mac = links.add_veth(self.vf_ifname(i), self.vf_representor(i))
        _function_dir(self.root, vf, VF_DEVICE_ID)
        _netdev_dir(self.root, vf, self.vf_ifname(i), mac)
        os.symlink(f"../{self.address}", self.root / DEVICES / vf / "physfn")
        os.symlink(f"../{vf}", self.path / f"virtfn{i}")

    def _remove_vf(self, links: _Links, i: int) -> None:
        # The DPU end stays in the DPU's namespace; the host end may have been moved (e.g. into a pod).
        if not links.delete(links.dpu, self.vf_representor(i)):
            links.delete(links.host, self.vf_ifname(i))
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"virtfn{i}").unlink()
        _remove_function(self.root, self.vf_address(i))


def _function_dir(root: Path, address: str, device_id: int) -> None:
    path = root / DEVICES / address
    path.mkdir(parents=True)
    _write(path / "vendor", f"0x{VENDOR_MELLANOX:04x}\n")
    _write(path / "device", f"0x{device_id:04x}\n")
    _write(path / "class", f"0x{ETHERNET_CLASS:06x}\n")
    (path / "net").mkdir()
    bus = root / "sys/bus/pci/devices"
    bus.mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../../devices/pci0000:00/{address}", bus / address)


def _netdev_dir(root: Path, address: str, ifname: str, mac: str) -> None:
    net = root / DEVICES / address / "net" / ifname
    net.mkdir()
    _write(net / "address", f"{mac}\n")
    os.symlink("../..", net / "device")
    classes = root / "sys/class/net"
    classes.mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../devices/pci0000:00/{address}/net/{ifname}", classes / ifname)


def _remove_function(root: Path, address: str) -> None:
    path = root / DEVICES / address
    for net in (path / "net").iterdir() if (path / "net").exists() else []:
        with contextlib.suppress(FileNotFoundError):
            (root / "sys/class/net" / net.name).unlink()
    with contextlib.suppress(FileNotFoundError):
        (root / "sys/bus/pci/devices" / address).unlink()
    for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_symlink() or sub.is_file():
            sub.unlink()
        else:
            sub.rmdir()
    path.rmdir()
