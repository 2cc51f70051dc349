"""`EmulatedHost`: one host with N BlueFields: its network namespace, PCI sysfs tree, rshims and power.

Everything lives under `root`, laid out as on a real host, so a host agent pointed at `root` as its
filesystem prefix runs unchanged:

    <root>/sys/bus/pci/devices/...     PCI functions (see pci.py)
    <root>/dev/rshim<N>/{boot,misc,console}
    <root>/usr/bin/ipmitool            `ipmitool chassis power ...` for this host
    <root>/run/emulator/control.sock   power and faults from another process (see control.py)
    <root>/run/emulator/power.log      one line per power action
    <root>/proc/sys/kernel/random/boot_id   a fresh uuid at creation and on every power on, cycle and reset

Netdevs live in the host's namespace (`netns`); each DPU's representors in the DPU's (`dpu.netns`).
`close()` removes the namespaces, stops every thread and deletes `root`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpf.lab.bed.netns import NetnsBed
from dpf.lab.emulator.control import ControlServer
from dpf.lab.emulator.dpu import EmulatedDpu
from dpf.lab.emulator.pci import DEVICE_IDS, PhysicalFunction
from dpf.lab.emulator.rshim import Faults, StageTimings
from dpf.lab.emulator.watch import FileWatcher

FIRST_BUS = 0x08


@dataclass(frozen=True)
class DpuSpec:
    model: str = "BlueField-3"
    totalvfs: int = 16


@dataclass(frozen=True)
class PowerEvent:
    action: str  # on | off | cycle | reset
    at: float


@dataclass
class EmulatedHost:
    name: str  # short: it names the namespaces (dpf-<owner><pid>-<name>, -<name>d<i>)
    root: Path
    dpus_spec: list[DpuSpec] = field(default_factory=lambda: [DpuSpec()])
    owner: str = "t"
    timings: StageTimings = field(default_factory=StageTimings)
    power_off_seconds: float = 0.1  # how long a cycle keeps the power off
    vf_probe_seconds: float = 0.0  # delay before each VF netdev appears after an sriov_numvfs write (pci.py)

    def __post_init__(self) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} is not empty: an emulated host owns its whole root")
        self.root.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self.power = "on"
        self.power_events: list[PowerEvent] = []
        self.dpus: list[EmulatedDpu] = []
        self._power_lock = threading.Lock()
        self._bed = NetnsBed(owner=self.owner)
        self._watcher: FileWatcher | None = None
        self._watches: list[int] = []
        self._control: ControlServer | None = None
        try:
            self.netns = self._bed.namespace(self.name)
            self._watcher = FileWatcher.acquire()
            for index, spec in enumerate(self.dpus_spec):
                self.dpus.append(self._add_dpu(index, spec))
            self._install_ipmitool()
            self._new_boot_id()
            self._control = ControlServer(self.run_dir / "control.sock", self._handle)
        except BaseException:
            self.close()
            raise

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / "emulator"

    @property
    def boot_id_file(self) -> Path:
        return self.root / "proc" / "sys" / "kernel" / "random" / "boot_id"

    @property
    def boot_id(self) -> str:
        return self.boot_id_file.read_text().strip()

    def _new_boot_id(self) -> None:
        """The host booted: a new /proc/sys/kernel/random/boot_id, replaced atomically (readers never see it empty)."""
        self.boot_id_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.boot_id_file.with_name(".boot_id.new")
        tmp.write_text(f"{uuid.uuid4()}\n")
        os.replace(tmp, self.boot_id_file)

    @property
    def ipmitool(self) -> Path:
        return self.root / "usr" / "bin" / "ipmitool"

    def _add_dpu(self, index: int, spec: DpuSpec) -> EmulatedDpu:
        assert self._watcher is not None
        bus = f"0000:{FIRST_BUS + index:02x}:00"
        dpu_ns = self._bed.namespace(f"{self.name}d{index}")
        pfs = [PhysicalFunction(root=self.root, address=f"{bus}.{p}", index=p, ifname=f"ens{index + 1}f{p}np{p}",
                                device_id=DEVICE_IDS[spec.model], totalvfs=spec.totalvfs, host_ns=self.netns,
                                dpu_ns=dpu_ns, vf_probe_seconds=self.vf_probe_seconds) for p in (0, 1)]
        for pf in pfs:
            pf.create()
            # The directory, not the file: the emulator's own rewrites replace the file (rename).
            def on_pf_write(name: str, pf: PhysicalFunction = pf) -> None:
                if name == "sriov_numvfs":
                    pf.on_numvfs_write()

            self._watches.append(self._watcher.watch(pf.path, on_pf_write))
        faults = Faults(timings=StageTimings(**asdict(self.timings)))
        dpu = EmulatedDpu(name=f"{self.name}-dpu{index}", index=index, model=spec.model, pci_address=pfs[0].address,
                          netns=dpu_ns, pfs=pfs, rshim_dir=self.root / "dev" / f"rshim{index}", faults=faults)
        # ".misc.new": a file replaced while a writer held it open may report under the name it had before.
        def on_rshim_write(name: str) -> None:
            if name in ("misc", ".misc.new"):
                dpu.rshim.on_misc_write()

        self._watches.append(self._watcher.watch(dpu.rshim_dir, on_rshim_write))
        return dpu

    def _install_ipmitool(self) -> None:
        self.ipmitool.parent.mkdir(parents=True, exist_ok=True)
        self.ipmitool.write_text(f"#!/bin/sh\nexec {sys.executable} -m dpf.lab.emulator.ipmitool "
                                 f"--socket {self.run_dir / 'control.sock'} \"$@\"\n")
        self.ipmitool.chmod(0o755)

    # --- power ---------------------------------------------------------------------------------------------

    def power_action(self, action: str) -> str:
        """What `ipmitool chassis power <action>` does; returns the power state. ValueError when refused."""
        with self._power_lock:
            if action == "status":
                return self.power
            if action in ("cycle", "reset") and self.power == "off":
                raise ValueError("Command not supported in present state")
            if action not in ("on", "off", "cycle", "reset"):
                raise ValueError(f"unknown action {action!r}")
            self._record(action)
            if action in ("off", "cycle") and self.power == "on":
                self._off()
            if action == "cycle":
                time.sleep(self.power_off_seconds)
            if action in ("on", "cycle") and self.power == "off":
                self.power = "on"
                self._new_boot_id()
                for dpu in self.dpus:
                    dpu.boot("power-cycle" if action == "cycle" else "power-on")
            if action == "reset":
                self._new_boot_id()
                self._reset_vfs()
                for dpu in self.dpus:
                    dpu.boot("reset")
            return self.power

    def _off(self) -> None:
        self.power = "off"
        self._reset_vfs()
        for dpu in self.dpus:
            dpu.power_off()

    def _reset_vfs(self) -> None:
        # The host's kernel restarts: SR-IOV is back to 0 VFs until something writes sriov_numvfs again.
        for dpu in self.dpus:
            for pf in dpu.pfs:
                pf.reset_vfs()

    def _record(self, action: str) -> None:
        event = PowerEvent(action=action, at=time.time())
        self.power_events.append(event)
        with open(self.run_dir / "power.log", "a") as f:
            f.write(f"{event.at:.3f} {action}\n")

    # --- control socket ------------------------------------------------------------------------------------

    def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op == "power":
            try:
                return {"ok": True, "power": self.power_action(str(message.get("action")))}
            except ValueError as e:
                return {"ok": False, "error": str(e)}
        if op == "faults":
            self.dpus[int(message["dpu"])].set_faults(**message.get("set", {}))
            return {"ok": True}
        if op == "status":
            return {"ok": True, "power": self.power, "dpus": [
                {"name": d.name, "pci": d.pci_address, "state": d.state, "version": d.installed_version,
                 "bytes": d.rshim.bytes_accepted, "error": d.last_error, "boots": len(d.boots),
                 "streams": len(d.rshim.streams)}
                for d in self.dpus]}
        return {"ok": False, "error": f"unknown op {op!r}"}

    # --- teardown ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._control:
            self._control.close()
            self._control = None
        for dpu in self.dpus:
            dpu.close()
        if self._watcher:
            for wd in self._watches:
                self._watcher.unwatch(wd)
            self._watches.clear()
            FileWatcher.release()
            self._watcher = None
        self._bed.cleanup()  # removing the namespaces removes every veth with them
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root)

    def __enter__(self) -> EmulatedHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
