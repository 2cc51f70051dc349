"""The handler for dpf.v1.DPUProvisioning: one worker per DPU resource ("<namespace>/<dpu>"), each a small
loop that drives the DPU towards what the controller asked and reports a `DPUProvisioningStatus` on change:

1. the DPU's rshim (found by PCI address), claimed exclusively from the first publish until the resource
   goes; while another process holds it, `rshim_holder` names that process and nothing else is done;
2. the BFB file ready (`bfb.py`): `bfb_ready`, or `bfb_error`;
3. `install{id}`: flashed at most once per id while the agent runs (`flasher.py`, on a thread); DONE ids are
   recorded with the host's boot id, so after an agent restart they report DONE (and `host_rebooted` once
   the boot id changed) and are never flashed again, while an id that never reached DONE is flashed anew;
4. `reboot{id}`: the power command once per id, recorded before it runs (the host may take the agent down);
5. `host_network`: the configurator's `ensure` on every pass (idempotent; a host reboot resets SR-IOV; once
   ready, the configurator answers most passes from a few sysfs reads and re-does the whole pass on a change
   or every `--host-network-recheck` seconds: `hostnet.py`), and `release` when it is no longer asked for or
   the resource goes.

Removing the resource stops the worker: a flash in progress is cut (the DPU sees a truncated stream and
refuses it), the rshim is released, the host network undone. Stopping the agent cuts a flash and releases
the rshim but leaves the host network as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from dpf.agent.host.bfb import BfbFiles, BfbState
from dpf.agent.host.flasher import Cancelled, Flasher, FlashProgress
from dpf.agent.host.power import power_action
from dpf.agent.host.records import Records
from dpf.agent.host.rshim import RshimClaim, RshimHeld, find_rshim
from dpf.agent.runtime.handlers import Desired, Handler, Reporter
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb

log = logging.getLogger(__name__)

CLAIM_NAME = "dpf-host-agent"
_T = TypeVar("_T")


class HostNetwork(Protocol):
    """`dpf.agent.host.hostnet.HostNetworkConfigurator`'s interface (synchronous; called on a thread)."""

    def ensure(self, pci_address: str, spec: ppb.HostNetwork) -> ppb.HostNetworkStatus: ...
    def release(self, pci_address: str, spec: ppb.HostNetwork) -> None: ...


@dataclass
class HostContext:
    """What every worker shares."""

    sysroot: Path
    bfb: BfbFiles
    records: Records
    boot_id: Callable[[], str]
    hostnet: HostNetwork | None = None
    power_command: str = "ipmitool"
    install_timeout: float = 1800.0
    """For an install whose timeout_seconds is 0."""
    poll_interval: float = 2.0
    """A worker looks again this often (a released rshim, the host's boot id, the host network)."""
    progress_interval: float = 0.5


@dataclass
class _FlashRun:
    install_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: FlashProgress = field(default_factory=lambda: FlashProgress(ppb.INSTALL_STATE_FLASHING))
    task: asyncio.Task[None] | None = None


class DpuWorker:
    def __init__(self, name: str, ctx: HostContext, reporter: Reporter) -> None:
        self.name = name
        self.ctx = ctx
        self.reporter = reporter
        self.version = ""
        self.spec = ppb.DPUProvisioning()
        self.claim: RshimClaim | None = None
        self.holder = ""
        self.rshim_error = ""
        self.bfb = BfbState(False)
        self.flash: _FlashRun | None = None
        self.outcomes: dict[str, FlashProgress] = {}  # attempts that ended while this agent runs
        self.hostnet: ppb.HostNetworkStatus | None = None
        self.hostnet_spec: ppb.HostNetwork | None = None  # what was last ensured (to release)
        # ensure() may still run on its thread after the loop was cancelled: release() waits for it.
        self._hostnet_lock = threading.Lock()
        self.wake = asyncio.Event()
        self._sent: tuple[int, str, bytes] | None = None
        self._stopped = False
        self._task = asyncio.create_task(self._loop(), name=f"host-agent/{name}")

    def update(self, version: str, spec: ppb.DPUProvisioning, reporter: Reporter) -> None:
        self.reporter = reporter
        if version != self.version:
            self.version, self.spec = version, spec
            self._sent = None
            self.wake.set()

    async def stop(self, release_network: bool) -> None:
        self._stopped = True
        # The loop first: a pass running while the flash is cut would start the install again.
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._cut_flash()
        if release_network and self.hostnet_spec is not None and self.ctx.hostnet is not None:
            try:
                await asyncio.to_thread(self._locked, self.ctx.hostnet.release, self.spec.pci_address,
                                        self.hostnet_spec)
            except Exception:
                log.exception("%s: releasing the host network failed", self.name)
        if self.claim is not None:
            self.claim.release()
            self.claim = None
        log.info("%s: released", self.name)

    # ---- the loop ----------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            self.wake.clear()
            try:
                await self._pass()
            except Exception:
                log.exception("%s: pass failed", self.name)
            self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.ctx.poll_interval)

    async def _pass(self) -> None:
        spec = self.spec
        self._claim_rshim(spec)
        if spec.HasField("bfb") and spec.bfb.file_name:
            self.bfb = await self.ctx.bfb.ensure(spec.bfb)
        await self._drive_install(spec)
        await self._drive_reboot(spec)
        await self._drive_host_network(spec)

    def _claim_rshim(self, spec: ppb.DPUProvisioning) -> None:
        if self.claim is not None:
            return
        directory = find_rshim(self.ctx.sysroot, spec.pci_address)
        if directory is None:
            self.rshim_error = (f"no rshim device serves PCI {spec.pci_address} (looked at "
                                f"{self.ctx.sysroot / 'dev'}/rshim*/misc DEV_NAME)")
            return
        self.rshim_error = ""
        try:
            self.claim = RshimClaim(directory, CLAIM_NAME)
            self.holder = ""
            log.info("%s: claimed %s", self.name, directory)
        except RshimHeld as exc:
            self.holder = exc.holder

    async def _drive_install(self, spec: ppb.DPUProvisioning) -> None:
        wanted = spec.install.id if spec.HasField("install") else ""
        if self.flash is not None and self.flash.install_id != wanted:
            log.info("%s: install %s is no longer wanted; cutting its stream", self.name, self.flash.install_id)
            await self._cut_flash()
        if (not wanted or self.flash is not None or wanted in self.ctx.records.installs
                or wanted in self.outcomes or self.claim is None or not self.bfb.ready):
            return
        assert self.bfb.path is not None
        run = self.flash = _FlashRun(wanted)
        total = self.bfb.path.stat().st_size + len(spec.install.bf_cfg)
        run.progress = FlashProgress(ppb.INSTALL_STATE_FLASHING, 0, total)
        timeout = float(spec.install.timeout_seconds or self.ctx.install_timeout)
        loop = asyncio.get_running_loop()

        def on_progress(progress: FlashProgress) -> None:
            loop.call_soon_threadsafe(self._on_progress, run, progress)

        flasher = Flasher(self.claim.directory, self.bfb.path, spec.install.bf_cfg, timeout, run.cancel,
                          on_progress, self.ctx.progress_interval)
        log.info("%s: install %s: streaming %s (+ %d bytes of bf.cfg) into %s", self.name, wanted,
                 self.bfb.path, len(spec.install.bf_cfg), self.claim.directory)
        run.task = asyncio.create_task(self._flash(run, flasher), name=f"host-agent/{self.name}/flash")

    async def _flash(self, run: _FlashRun, flasher: Flasher) -> None:
        try:
            result = await asyncio.to_thread(flasher.run)
        except Cancelled:
            log.info("%s: install %s cancelled", self.name, run.install_id)
            return
        except Exception as exc:
            log.exception("%s: install %s failed", self.name, run.install_id)
            result = FlashProgress(ppb.INSTALL_STATE_FAILED, error=f"flash failed: {exc}")
        if result.state == ppb.INSTALL_STATE_DONE:
            await asyncio.to_thread(self.ctx.records.install_done, run.install_id, self.ctx.boot_id())
        self.outcomes[run.install_id] = result
        if self.flash is run:
            self.flash = None
        self.wake.set()

    def _on_progress(self, run: _FlashRun, progress: FlashProgress) -> None:
        run.progress = progress
        if self.flash is run and not self._stopped:
            self._report()

    async def _cut_flash(self) -> None:
        run, self.flash = self.flash, None
        if run is None:
            return
        run.cancel.set()
        if run.task is not None:
            await asyncio.gather(run.task, return_exceptions=True)  # the thread stops within ~0.1 s

    async def _drive_reboot(self, spec: ppb.DPUProvisioning) -> None:
        reboot_id = spec.reboot.id if spec.HasField("reboot") else ""
        if not reboot_id or reboot_id in self.ctx.records.reboots:
            return
        # Recorded first: a reboot of the host we run on ends this process, and the id must not run twice.
        await asyncio.to_thread(self.ctx.records.reboot_issued, reboot_id)
        log.info("%s: reboot %s: %s chassis power %s", self.name, reboot_id, self.ctx.power_command,
                 ppb.RebootMethod.Name(spec.reboot.method))
        error = await asyncio.to_thread(power_action, self.ctx.power_command, spec.reboot.method)
        if error:
            log.error("%s: reboot %s failed: %s", self.name, reboot_id, error)
            await asyncio.to_thread(self.ctx.records.reboot_issued, reboot_id, error)

    async def _drive_host_network(self, spec: ppb.DPUProvisioning) -> None:
        hostnet = self.ctx.hostnet
        if spec.HasField("host_network"):
            if hostnet is None:
                self.hostnet = ppb.HostNetworkStatus(message="this agent has no host network configurator")
                return
            self.hostnet_spec = ppb.HostNetwork()
            self.hostnet_spec.CopyFrom(spec.host_network)
            try:
                self.hostnet = await asyncio.to_thread(self._locked, hostnet.ensure, spec.pci_address,
                                                       spec.host_network)
            except Exception as exc:  # noqa: BLE001 - reported; the next pass tries again
                self.hostnet = ppb.HostNetworkStatus(message=f"configuring the host network failed: {exc}")
        elif self.hostnet_spec is not None and hostnet is not None:
            await asyncio.to_thread(self._locked, hostnet.release, spec.pci_address, self.hostnet_spec)
            self.hostnet_spec, self.hostnet = None, None

    def _locked(self, call: Callable[..., _T], *args: object) -> _T:
        with self._hostnet_lock:
            return call(*args)

    # ---- status ------------------------------------------------------------------------------------------
    def status(self) -> tuple[int, str, ppb.DPUProvisioningStatus]:
        spec = self.spec
        st = ppb.DPUProvisioningStatus(rshim_holder=self.holder, bfb_ready=self.bfb.ready, bfb_error=self.bfb.error)
        problems: list[str] = []
        waiting: list[str] = []
        if self.rshim_error:
            problems.append(self.rshim_error)
        elif self.holder:
            waiting.append(f"rshim held by {self.holder}")
        if self.bfb.error:
            problems.append(self.bfb.error)
        elif spec.bfb.file_name and not self.bfb.ready:
            waiting.append(f"getting BFB {spec.bfb.file_name}")
        if spec.HasField("install") and spec.install.id:
            st.install.CopyFrom(self._install_status(spec.install.id))
            state = st.install.state
            if state == ppb.INSTALL_STATE_FAILED:
                problems.append(f"install {spec.install.id} failed: {st.install.error}")
            elif state != ppb.INSTALL_STATE_DONE:
                waiting.append(_describe(st.install))
        if spec.HasField("reboot") and spec.reboot.id:
            issued = self.ctx.records.reboots.get(spec.reboot.id)
            if issued is None:
                waiting.append(f"reboot {spec.reboot.id} not issued yet")
            else:
                st.reboot.CopyFrom(ppb.RebootStatus(id=spec.reboot.id, error=issued.error))
                if issued.error:
                    problems.append(f"reboot {spec.reboot.id} failed: {issued.error}")
        if spec.HasField("host_network"):
            if self.hostnet is not None:
                st.host_network.CopyFrom(self.hostnet)
            if self.hostnet is None or not self.hostnet.ready:
                waiting.append(f"host network: {self.hostnet.message if self.hostnet else 'not configured yet'}")
        if problems:
            return pb.VERDICT_FAILED, "; ".join(problems + waiting), st
        if waiting:
            return pb.VERDICT_PENDING, "; ".join(waiting), st
        return pb.VERDICT_PROGRAMMED, "", st

    def _install_status(self, install_id: str) -> ppb.InstallStatus:
        done = self.ctx.records.installs.get(install_id)
        outcome = self.outcomes.get(install_id)
        if done is not None:
            status = outcome.to_proto(install_id) if outcome else ppb.InstallStatus(id=install_id)
            status.state = ppb.INSTALL_STATE_DONE
            status.host_rebooted = self.ctx.boot_id() != done.boot_id
            return status
        if self.flash is not None and self.flash.install_id == install_id:
            return self.flash.progress.to_proto(install_id)
        if outcome is not None:
            return outcome.to_proto(install_id)
        return ppb.InstallStatus(id=install_id, state=ppb.INSTALL_STATE_WAITING)

    def _report(self) -> None:
        if self._stopped:
            return
        verdict, message, detail = self.status()
        key = (verdict, message, detail.SerializeToString(deterministic=True))
        if key == self._sent:
            return
        self._sent = key
        self.reporter.report(self.name, self.version, verdict, message, detail=detail)  # type: ignore[arg-type]


def _describe(install: ppb.InstallStatus) -> str:
    name = ppb.InstallState.Name(install.state).removeprefix("INSTALL_STATE_").lower()
    if install.state == ppb.INSTALL_STATE_FLASHING and install.bytes_total:
        return (f"install {install.id}: flashing {install.bytes_sent * 100 // install.bytes_total}% "
                f"({install.rate / 1e6:.0f} MB/s, {install.eta_seconds:.0f}s left)")
    last = f" ({install.log[-1].strip()})" if install.log else ""
    return f"install {install.id}: {name}{last}"


class ProvisioningHandler(Handler):
    message_class = ppb.DPUProvisioning

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.workers: dict[str, DpuWorker] = {}

    async def apply(self, desired: Desired, changed: set[str], removed: set[str], reporter: Reporter) -> None:
        for name in sorted(removed | (set(self.workers) - set(desired))):
            worker = self.workers.pop(name, None)
            if worker is not None:
                await worker.stop(release_network=True)
        for name, (version, spec) in desired.items():
            if not spec.pci_address:
                if name in changed:
                    reporter.report(name, version, pb.VERDICT_REJECTED, "pci_address: empty; the agent finds the "
                                    "DPU and its rshim by it")
                continue
            worker = self.workers.get(name)
            if worker is None:
                worker = self.workers[name] = DpuWorker(name, self.ctx, reporter)
            worker.update(version, spec, reporter)

    async def close(self) -> None:
        """Agent stop: cut flashes and release the rshims; the host network stays."""
        workers, self.workers = list(self.workers.values()), {}
        for worker in workers:
            await worker.stop(release_network=False)
