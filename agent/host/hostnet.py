"""Host network for one DPU (upstream's hostnetwork pod): SR-IOV VFs on its PFs, PF0's VF0 in the OOB bridge.

`ensure` does one bounded pass of what upstream's `hostnetwork.sh` loops over every 5 s, and says what is
still missing; the host agent calls it again until it reports ready:

1. PF0's `sriov_numvfs` is set to `num_vfs` when it is 0, PF1's too when `<slot>.1` is a BlueField function.
   A different non-zero count is left as found, as upstream does: changing it needs a write of 0 first, which
   would remove VFs something may be using. The write is read back: a kernel refuses a bad value in `write()`,
   the emulator a moment after `close()` (it rewrites the file with the old count).
2. The VF netdevs of PF0 appear (the driver probes them after the write).
3. The bridge (`br-dpu`, made by the host's admin with the host's address) exists and holds an IPv4 address.
4. PF0's VF0 gets the MTU, joins the bridge and goes up. Only what differs is changed, so a second call on a
   configured host changes nothing.

Once a DPU's host network is ready, a call does the whole pass again only every `recheck_seconds` (default
30 s), or at once when a cheap look says something changed: a new spec, the host's boot id (a reboot resets
SR-IOV), a PF's `sriov_numvfs`, VF0's netdev name, the caller's network namespace. Otherwise it returns the last
status after those few sysfs reads, without netlink. So a VF count reset is restored on the next call, and drift
only netlink sees (VF0 taken out of the bridge, its MTU, down, the bridge's address gone) within
`recheck_seconds`. Upstream's hostnetwork.sh re-applies everything every 5 s; at 50 DPUs per host that pass
was most of the host agent's CPU.

`release` takes VF0 out of the bridge and sets `sriov_numvfs` back to 0. Sysfs is read and written as plain
files under `sysroot`; netlink (`rtnl.py`, one socket kept per namespace) works in the calling thread's network
namespace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from dpf.agent.host.detect import (
    PCI_DEVICES,
    bluefield_model,
    link_kind,
    normalize_pci_address,
    pci_slot,
    read_boot_id,
)
from dpf.agent.host.rtnl import IFF_UP, THREAD_NETNS, Rtnl
from dpf.proto.v1 import provisioning_pb2 as pb

DEFAULT_BRIDGE = "br-dpu"
BUDGET_SECONDS = 0.5
"""Longest wait of one call (for a write's outcome, for VF netdevs); the caller calls again for the rest. The
other half of the second a call may take is for the netlink work on a loaded host."""
RELEASE_SECONDS = 5.0
"""Longest wait of `release` for the VFs to go: it is called once, when the DPU is let go."""
RECHECK_SECONDS = 30.0
"""Once ready, the longest time between two full passes (the bound on repairing drift that only netlink sees)."""
_POLL = 0.01


@dataclass(frozen=True)
class _Pf:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def numvfs(self) -> int:
        return int((self.path / "sriov_numvfs").read_text().strip() or "0")

    def totalvfs(self) -> str:
        try:
            return (self.path / "sriov_totalvfs").read_text().strip()
        except OSError:
            return "unknown"

    def vf_netdev(self, i: int) -> str:
        """The netdev name of VF `i`, empty while it has none (not created, or not probed yet)."""
        try:
            return min(p.name for p in (self.path / f"virtfn{i}" / "net").iterdir())
        except (FileNotFoundError, ValueError):
            return ""

    def has_vf(self, i: int) -> bool:
        return (self.path / f"virtfn{i}").exists()


@dataclass
class _Write:
    pf: _Pf
    value: int
    error: str = ""  # the write's own error (a kernel refuses in write())
    outcome: str = "pending"  # pending | accepted | refused
    reads: int = 0  # what the file showed when it was refused


class NotReady(Exception):
    """One thing the host network still lacks; the message is the status message."""


@dataclass(frozen=True)
class _Ready:
    """The last full pass that found a DPU's host network ready, and what a cheap look compares against."""

    spec: bytes
    look: tuple[object, ...]
    at: float
    status: pb.HostNetworkStatus


class HostNetworkConfigurator:
    def __init__(self, sysroot: Path, budget_seconds: float = BUDGET_SECONDS,
                 recheck_seconds: float = RECHECK_SECONDS, rtnl: Rtnl | None = None) -> None:
        """`rtnl`: a shared netlink door (the host agent's); by default one of its own, closed by `close()`."""
        self._sysroot = sysroot
        self._budget = budget_seconds
        self._recheck = recheck_seconds
        self._own_rtnl = rtnl is None
        self._rtnl = rtnl or Rtnl()
        self._ready: dict[str, _Ready] = {}  # by PF0's PCI address
        self.full_passes = 0
        """Full passes made so far (a call answered from the cheap look is not one)."""

    def close(self) -> None:
        if self._own_rtnl:
            self._rtnl.close()

    def ensure(self, pci_address: str, spec: pb.HostNetwork) -> pb.HostNetworkStatus:
        """One bounded pass (or, once ready, the cheap look); idempotent. Never raises for what the host lacks:
        the status says it."""
        address = normalize_pci_address(pci_address)
        wanted = spec.SerializeToString(deterministic=True)
        last = self._ready.pop(address, None)
        if last is not None and last.spec == wanted and time.monotonic() - last.at < self._recheck:
            try:
                look = self._look(address)
            except OSError:
                look = ()
            if look == last.look:
                self._ready[address] = last
                return _copy(last.status)
        started = time.monotonic()
        status = self._pass(address, spec)
        if status.ready:
            with contextlib.suppress(OSError):  # a device going away: the next call makes a full pass
                self._ready[address] = _Ready(wanted, self._look(address), started, _copy(status))
        return status

    def _pass(self, address: str, spec: pb.HostNetwork) -> pb.HostNetworkStatus:
        self.full_passes += 1
        deadline = time.monotonic() + self._budget
        status = pb.HostNetworkStatus()
        notes: list[str] = []
        try:
            pf0, pfs = self._pfs(address)
            if spec.num_vfs == 0:
                raise NotReady("num_vfs is 0: PF0's VF0 is what joins the bridge, so at least 1 VF is needed")
            self._ensure_numvfs(pfs, spec.num_vfs, deadline, notes)
            vfs = self._wait_vf_netdevs(pf0, deadline)
            status.num_vfs = len([vf for vf in vfs if vf])
            status.vf0 = vfs[0] if vfs else ""
            missing = [i for i, vf in enumerate(vfs) if not vf]
            if missing:
                raise NotReady(f"waiting for the VF netdevs of {pf0.name}: {len(vfs) - len(missing)} of "
                               f"{len(vfs)} present (VF{missing[0]} has none yet)")
            self._attach(status.vf0, spec.bridge or DEFAULT_BRIDGE, spec.vf_mtu)
        except NotReady as e:
            status.message = "; ".join([str(e), *notes])
            return status
        except OSError as e:  # sysfs under our feet (a device going away), or the netlink socket failing
            status.message = "; ".join([f"{e.filename or 'sysfs or netlink'}: {e.strerror or e}", *notes])
            return status
        except NetlinkError as e:
            status.message = "; ".join([f"netlink: {os.strerror(e.code)}", *notes])
            return status
        status.ready = True
        status.message = "; ".join(notes)
        return status

    def _look(self, address: str) -> tuple[object, ...]:
        """What a host reboot, a reset VF count or a VF0 re-made changes, in a few sysfs reads (no netlink)."""
        pf0 = _Pf(self._sysroot / PCI_DEVICES / address)
        pf1 = _Pf(self._sysroot / PCI_DEVICES / f"{pci_slot(address)}.1")
        pf1_vfs = pf1.numvfs() if (pf1.path / "sriov_numvfs").exists() else -1
        return (read_boot_id(self._sysroot), os.stat(THREAD_NETNS).st_ino, pf0.numvfs(), pf1_vfs,
                pf0.vf_netdev(0))

    def release(self, pci_address: str, spec: pb.HostNetwork) -> None:
        """VF0 out of the bridge, `sriov_numvfs` 0 on the PFs; waits (at most RELEASE_SECONDS) for the VFs to go."""
        address = normalize_pci_address(pci_address)
        self._ready.pop(address, None)
        try:
            pf0, pfs = self._pfs(address)
        except NotReady:
            return  # no such device: nothing of ours is left on it
        vf0 = pf0.vf_netdev(0)
        if vf0:
            self._detach(vf0, spec.bridge or DEFAULT_BRIDGE)
        deadline = time.monotonic() + RELEASE_SECONDS
        while time.monotonic() < deadline:
            # Read back and write again: a write of 0 racing the emulator's rewrite after an earlier write
            # (VFs still being made) is lost there; a kernel serialises them.
            for pf in pfs:
                if pf.numvfs() != 0:
                    _write_numvfs(pf, 0)
            if not any(pf.has_vf(0) for pf in pfs):
                return
            time.sleep(_POLL)

    # --- steps ---------------------------------------------------------------------------------------------

    def _pfs(self, address: str) -> tuple[_Pf, list[_Pf]]:
        """PF0 (at `address`, normalised), and the PFs whose VFs this DPU gets (PF0, PF1 when it is a BlueField
        function)."""
        devices = self._sysroot / PCI_DEVICES
        pf0 = _Pf(devices / address)
        if bluefield_model(pf0.path) is None:
            raise NotReady(f"no BlueField PCI function {address} under /{PCI_DEVICES}")
        pf1 = _Pf(devices / f"{pci_slot(address)}.1")
        return pf0, [pf0] + ([pf1] if bluefield_model(pf1.path) is not None else [])

    def _ensure_numvfs(self, pfs: list[_Pf], wanted: int, deadline: float, notes: list[str]) -> None:
        writes = []
        for pf in pfs:
            current = pf.numvfs()
            if current == 0:
                writes.append(_write_numvfs(pf, wanted))
            elif current != wanted:
                notes.append(f"{pf.name} has sriov_numvfs={current}, not {wanted}: left as found (changing it "
                             "needs 0 first, which removes VFs that may be in use)")
        while any(w.outcome == "pending" for w in writes) and time.monotonic() < deadline:
            time.sleep(_POLL)
            for w in writes:
                if w.outcome == "pending":
                    _settle(w)
        refused = [w for w in writes if w.outcome == "refused"]
        if refused:
            raise NotReady("; ".join(
                f"{w.pf.name} refused sriov_numvfs={w.value} ({w.error or f'it reads {w.reads} again'}; "
                f"sriov_totalvfs is {w.pf.totalvfs()})" for w in refused))

    def _wait_vf_netdevs(self, pf: _Pf, deadline: float) -> list[str]:
        """The netdev of each VF `sriov_numvfs` asks for ("" for one not there yet), waiting until the budget."""
        while True:
            count = pf.numvfs()
            vfs = [pf.vf_netdev(i) for i in range(count)]
            if all(vfs) or time.monotonic() >= deadline:
                return vfs
            time.sleep(_POLL)

    def _attach(self, vf0: str, bridge: str, mtu: int) -> None:
        rtnl = self._rtnl
        found = rtnl.link(bridge)
        if found is None:
            raise NotReady(f"waiting for bridge {bridge} to exist (the host's OOB bridge, with its address)")
        bridge_index = found["index"]
        kind = link_kind(found)
        if kind != "bridge":
            raise NotReady(f"{bridge} is a {kind or 'physical'} link, not a Linux bridge")
        if not rtnl.ipv4_addresses(bridge_index):
            raise NotReady(f"waiting for {bridge} to have an IPv4 address")
        link = rtnl.link(vf0)
        if link is None:
            raise NotReady(f"VF0 {vf0} is not in this network namespace")
        index = link["index"]
        try:
            if mtu and link.get_attr("IFLA_MTU") != mtu:
                rtnl.set_link(index, mtu=mtu)
            if link.get_attr("IFLA_MASTER") != bridge_index:
                rtnl.set_link(index, master=bridge_index)
            if not link["flags"] & IFF_UP:
                rtnl.set_link(index, up=True)
        except NetlinkError as e:
            raise NotReady(f"attaching VF0 {vf0} to {bridge} (mtu {mtu}): {os.strerror(e.code)}") from e

    def _detach(self, vf0: str, bridge: str) -> None:
        link, found = self._rtnl.link(vf0), self._rtnl.link(bridge)
        if link is None or found is None or link.get_attr("IFLA_MASTER") != found["index"]:
            return
        try:
            self._rtnl.set_link(link["index"], master=0)
        except NetlinkError as e:
            if e.code != errno.ENODEV:  # gone meanwhile: out of the bridge anyway
                raise


def _write_numvfs(pf: _Pf, value: int) -> _Write:
    write = _Write(pf, value)
    try:
        with open(pf.path / "sriov_numvfs", "w") as f:
            f.write(f"{value}\n")
    except OSError as e:  # the kernel's refusal (ERANGE above sriov_totalvfs, EBUSY, ...)
        write.error = e.strerror or str(e)
        write.outcome = "refused"
        write.reads = pf.numvfs()
    else:
        _settle(write)
    return write


def _settle(write: _Write) -> None:
    """Accepted once the first VF exists (or, for 0, once the VFs are gone); refused when the file shows
    another count again (the emulator's way of failing the write after close)."""
    if (write.value == 0) != write.pf.has_vf(0):
        write.outcome = "accepted"
        return
    reads = write.pf.numvfs()
    if reads != write.value:
        write.outcome, write.reads = "refused", reads


def _copy(status: pb.HostNetworkStatus) -> pb.HostNetworkStatus:
    copy = pb.HostNetworkStatus()
    copy.CopyFrom(status)
    return copy
