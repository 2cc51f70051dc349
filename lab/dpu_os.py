"""The software of an emulated DPU after it boots: what the BFB's Ubuntu and cloud-init do on a BlueField.

The emulator (`lab/emulator`) stops at the firmware's `DPU is ready` and hands over a `BootEvent` carrying
the bf.cfg the DPU received. From there a real DPU runs cloud-init: hostname, the flavor's files, the OVS
script, then `kubeadm join` and (with DPF) its DPU agent. `DpuOs` does the same in the DPU's network
namespace, with real processes:

1. the bf.cfg's files under the DPU's root directory (`workdir/root`), modes and `append` as cloud-init;
2. Open vSwitch (userspace datapath) and the flavor's `/opt/dpf/ovs.sh`, with `type=dpdk` ports created
   as `system` ones (the one difference: this OVS has no DPDK);
3. the join: `join(event, netns)` (the lab passes one that starts containerd + kubelet with the bf.cfg's
   join command), and then `agent(hostname, ovs, node)` (the DPU agent, beside what the join started);
4. every boot of the DPU (install, power cycle, reset) first stops what the previous boot started; a boot the
   DPU has already left (a newer boot event is queued: the host was reset while this one was still starting)
   stops before its next step instead of joining and starting an agent only to be torn down.

Boot events arrive on the emulator's thread, which must not block: they go to one worker thread per DPU.
A failure of a step is recorded in `failures` and logged with the step's name; the DPU then stays up without
what failed (as a real DPU would, with a failed unit), and the next boot tries again.
"""

from __future__ import annotations

import logging
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.tools import tool
from dpf.lab.emulator.dpu import BootEvent, EmulatedDpu

log = logging.getLogger(__name__)

OVS_SCRIPT_TIMEOUT = 60.0


class Stoppable(Protocol):
    def stop(self) -> None: ...


JoinFn = Callable[[BootEvent, str], Stoppable | None]
"""(boot event, DPU netns) → the started node software (kubelet …), or None when there is nothing to join."""
AgentFn = Callable[[str, OvsSwitch, Stoppable | None], Stoppable | None]
"""(hostname, the DPU's OVS, what the join started or None) → the started DPU agent."""


@dataclass
class Boot:
    """What one boot of the DPU started."""

    event: BootEvent
    ovs: OvsSwitch | None = None
    node: Stoppable | None = None
    agent: Stoppable | None = None
    done: threading.Event = field(default_factory=threading.Event)
    stopped: bool = False

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for part in (self.agent, self.node, self.ovs):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    log.exception("stopping %s of %s failed", type(part).__name__, self.event.dpu)


class DpuOs:
    def __init__(self, dpu: EmulatedDpu, workdir: Path, join: JoinFn | None = None, agent: AgentFn | None = None,
                 say: Callable[[str], None] = log.info) -> None:
        self.dpu = dpu
        self.workdir = workdir
        self._join = join
        self._agent = agent
        self._say = say
        self.boots: list[Boot] = []
        self.failures: list[str] = []
        self._events: queue.Queue[BootEvent | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"dpu-os-{dpu.name}", daemon=True)
        self._closed = False

    @property
    def root(self) -> Path:
        """The DPU's filesystem (where cloud-init's write_files land)."""
        return self.workdir / "root"

    @property
    def current(self) -> Boot | None:
        return self.boots[-1] if self.boots else None

    def start(self) -> DpuOs:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dpu.on_ready.append(self._events.put)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._events.put in self.dpu.on_ready:
            self.dpu.on_ready.remove(self._events.put)
        self._events.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        if self.current is not None:
            self.current.stop()

    def wait_booted(self, count: int = 1, timeout: float = 120.0) -> Boot:
        """Wait until `count` boots have finished starting their software; the last one."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                if len(self.boots) >= count and self.boots[count - 1].done.wait(0.05):
                    return self.boots[count - 1]
                deadline.wait(0.05)
        finally:
            timer.cancel()
        raise TimeoutError(f"{self.dpu.name}: boot {count} not finished within {timeout:.0f}s "
                           f"(boots: {len(self.boots)}, failures: {self.failures})")

    # ---- the worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                # Stopped on this thread: the kubelet's children die with the thread that started them, and its
                # stop() needs them alive (it reads the pods' netns mounts from its mount namespace holder).
                if self.current is not None:
                    self.current.stop()
                return
            previous = self.current
            if previous is not None:
                previous.stop()
            boot = Boot(event)
            self.boots.append(boot)
            try:
                self._boot(boot)
            finally:
                boot.done.set()

    def _step(self, what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
            return True
        except Exception as exc:
            message = f"{self.dpu.name}: {what} failed: {exc}"
            self.failures.append(message)
            log.exception("%s", message)
            self._say(message)
            return False

    def _boot(self, boot: Boot) -> None:
        event = boot.event
        hostname = event.hostname or self.dpu.name
        if event.bfcfg is None:
            self._say(f"{self.dpu.name}: booted {event.version} without a bf.cfg; nothing to configure")
            return
        bfcfg = event.bfcfg
        self._step("writing the bf.cfg's files", lambda: bfcfg.write_files(self.root))
        if self._superseded(boot) or not self._step("starting Open vSwitch", lambda: self._start_ovs(boot)):
            return
        script = bfcfg.ovs_script
        if script:
            self._step("running /opt/dpf/ovs.sh", lambda: self._run_ovs_script(boot, script))
        if self._superseded(boot):
            return
        if self._join is not None and bfcfg.join_command:
            join = self._join
            self._step("joining the DPU cluster", lambda: setattr(boot, "node", join(event, self.dpu.netns)))
        if self._superseded(boot):
            return
        if self._agent is not None and boot.ovs is not None:
            agent, ovs = self._agent, boot.ovs
            self._step("starting the DPU agent", lambda: setattr(boot, "agent", agent(hostname, ovs, boot.node)))
        self._say(f"{hostname}: up ({event.reason}, {event.version})")

    def _superseded(self, boot: Boot) -> bool:
        if self._events.empty():
            return False
        self._say(f"{self.dpu.name}: rebooted while this boot ({boot.event.reason}) was starting; the next boot "
                  "takes over")
        return True

    def _start_ovs(self, boot: Boot) -> None:
        rundir = self.workdir / "ovs"
        # A reboot starts from the persisted database, as a real DPU's OVS does; stale sockets and pids go.
        for leftover in rundir.glob("*.ctl"):
            leftover.unlink(missing_ok=True)
        boot.ovs = OvsSwitch(netns=self.dpu.netns, rundir=rundir).start()

    def _run_ovs_script(self, boot: Boot, script: str) -> None:
        assert boot.ovs is not None
        shim = self._vsctl_shim(boot.ovs)
        env = {**boot.ovs.env, "PATH": f"{shim.parent}:{boot.ovs.env.get('PATH', '/usr/bin:/bin')}"}
        result = subprocess.run([tool("ip"), "netns", "exec", self.dpu.netns, "bash", "-c", script], env=env,
                                capture_output=True, text=True, timeout=OVS_SCRIPT_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"exit {result.returncode}: {(result.stderr or result.stdout).strip()[-2000:]}")

    def _vsctl_shim(self, ovs: OvsSwitch) -> Path:
        """`ovs-vsctl` for the script: the DPU's database, and `type=dpdk` → `type=system` (no DPDK here)."""
        shim = self.workdir / "bin" / "ovs-vsctl"
        shim.parent.mkdir(parents=True, exist_ok=True)
        real = shutil.which("ovs-vsctl") or tool("ovs-vsctl")
        shim.write_text("#!/bin/bash\nargs=()\nfor a in \"$@\"; do\n"
                        "  if [ \"$a\" = type=dpdk ]; then a=type=system; fi\n  args+=(\"$a\")\ndone\n"
                        f"exec {real} --db=unix:{ovs.db_sock} \"${{args[@]}}\"\n")
        shim.chmod(0o755)
        return shim
