"""One emulated BlueField: its two PFs, its rshim, its boot sequences and what it booted.

Boot sequences (the lines land in rshim `misc`, each stage after its dialed time):
- a boot stream arrives: the log is cleared (the device resets), BL2 (boot mode rshim), BL31, UEFI; at the end
  of the stream either ` ERR[MISC]: <why>` (no boot; the DPU waits) or `Found bf.cfg`, `Ubuntu installation
  started`, `Installation finished`, `Rebooting...`, the firmware stages again (boot mode emmc), `Linux up`,
  `DPU is ready`;
- power on, power cycle, host reset or `SW_RESET 1`: the log is cleared, firmware stages (emmc), `Linux up`,
  `DPU is ready`, booting what was installed last.
At `DPU is ready` a `BootEvent` goes to every `on_ready` callback (from the emulator's thread: do not block).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpf.lab.emulator.bfb import StreamOutcome
from dpf.lab.emulator.bfcfg import BfCfg, parse_bfcfg
from dpf.lab.emulator.pci import DEVICE_IDS, PhysicalFunction
from dpf.lab.emulator.rshim import Faults, Rshim, StageTimings

log = logging.getLogger(__name__)

OPN = {"BlueField-2": "MBF2M516A-CEEO", "BlueField-3": "900-9D3B6-00CV-AA0"}
FACTORY_VERSION = "factory"


@dataclass(frozen=True)
class BootEvent:
    """The DPU reached `DPU is ready`, running `version` configured by `bfcfg` (None: never given one)."""

    dpu: str
    pci_address: str
    reason: str  # install | power-on | power-cycle | reset
    version: str
    bfcfg: BfCfg | None
    at: float

    @property
    def hostname(self) -> str | None:
        return self.bfcfg.hostname if self.bfcfg else None


class _Cancelled(Exception):
    pass


class _Run:
    """A boot sequence on its own thread; `cancel()` stops it between lines."""

    def __init__(self, name: str, body: Callable[[_Run], None]) -> None:
        self.cancelled = threading.Event()
        self.outcome: StreamOutcome | None = None
        self.outcome_ready = threading.Event()
        self._body = body
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        with contextlib.suppress(_Cancelled):
            self._body(self)

    def sleep(self, seconds: float) -> None:
        if self.cancelled.wait(max(0.0, seconds)):
            raise _Cancelled

    def wait_outcome(self) -> StreamOutcome:
        while not self.outcome_ready.wait(0.05):
            if self.cancelled.is_set():
                raise _Cancelled
        assert self.outcome is not None
        return self.outcome

    def cancel(self) -> None:
        self.cancelled.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)


@dataclass
class EmulatedDpu:
    name: str  # e.g. "host1-dpu0": the emulator's name, not the hostname bf.cfg gives it
    index: int
    model: str
    pci_address: str  # PF0, e.g. 0000:08:00.0
    netns: str  # the DPU's side: representors pf0hpf, pf0vf<i>, ...
    pfs: list[PhysicalFunction]
    rshim_dir: Path
    faults: Faults = field(default_factory=Faults)
    installed_version: str = FACTORY_VERSION
    installed_bfcfg: BfCfg | None = None
    state: str = "ready"  # off | flashing | installing | booting | ready | error | hung
    last_error: str | None = None
    boots: list[BootEvent] = field(default_factory=list)
    on_ready: list[Callable[[BootEvent], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.model not in DEVICE_IDS:
            raise ValueError(f"unknown model {self.model!r}; one of {sorted(DEVICE_IDS)}")
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._closed = False
        self._ready = threading.Condition()
        self.rshim = Rshim(self.rshim_dir, dev_name=f"pcie-{self.pci_address}", dev_info=f"{self.model}(Rev 1)",
                           opn=OPN[self.model], faults=self.faults, on_stream_start=self._stream_started,
                           on_stream_end=self._stream_ended, on_reset=lambda: self.boot("reset"))

    # --- dials -------------------------------------------------------------------------------------------

    def set_faults(self, **changes: object) -> None:
        """E.g. `set_faults(stall=True)`, `set_faults(rate=8e6)`, `set_faults(timings=StageTimings(install=5))`."""
        for key, value in changes.items():
            if not hasattr(self.faults, key):
                raise ValueError(f"unknown fault {key!r}")
            if key == "timings" and isinstance(value, dict):
                value = replace(self.faults.timings, **value)
            setattr(self.faults, key, value)
        self.rshim.changed()

    # --- power ---------------------------------------------------------------------------------------------

    def power_off(self) -> None:
        self._start(None)
        self.state = "off"
        self.rshim.powered = False
        self.rshim.clear_log()
        self.rshim.changed()

    def boot(self, reason: str) -> None:
        """Boot from what is installed (power on, cycle, reset)."""
        self.rshim.powered = True
        self.rshim.changed()
        self._start(lambda run: self._boot_installed(run, reason))

    # --- sequences -----------------------------------------------------------------------------------------

    def _start(self, body: Callable[[_Run], None] | None) -> _Run | None:
        with self._lock:
            if self._run:
                self._run.cancel()
            # Closed: nothing starts any more (a stream the device drops while it closes must not boot).
            self._run = _Run(f"emulator-{self.name}-boot", body) if body and not self._closed else None
            return self._run

    def _firmware(self, run: _Run, mode: str) -> None:
        t = self.faults.timings
        stages = [
            (t.bl2, [" INFO[BL2]: start", f" INFO[BL2]: boot mode ({mode})", " INFO[BL2]: VDD: 850 mV",
                     " INFO[BL2]: DDR POST passed", " INFO[BL2]: UEFI loaded"]),
            (t.bl31, [" INFO[BL31]: start", " INFO[BL31]: lifecycle Secured (development)",
                      " INFO[BL31]: runtime"]),
            (t.uefi, [" INFO[UEFI]: eMMC init", " INFO[UEFI]: eMMC probed", " INFO[UEFI]: PCIe enum start",
                      " INFO[UEFI]: PCIe enum end", " INFO[UEFI]: exit Boot Service"]),
        ]
        for delay, lines in stages:
            run.sleep(delay)
            for line in lines:
                self.rshim.log(line)

    def _linux(self, run: _Run, reason: str) -> None:
        if self.faults.never_boots:
            self.state = "hung"
            return  # stays in the firmware: no "Linux up", ever
        run.sleep(self.faults.timings.linux)
        self.rshim.log(" INFO[MISC]: Linux up")
        hostname = self.installed_bfcfg.hostname if self.installed_bfcfg else None
        self.rshim.append_console(f"\nUbuntu 22.04 LTS {hostname or 'localhost'} hvc0\n\n"
                                  f"{hostname or 'localhost'} login: ")
        run.sleep(self.faults.timings.ready)
        self.rshim.log(" INFO[MISC]: DPU is ready")
        event = BootEvent(dpu=self.name, pci_address=self.pci_address, reason=reason,
                          version=self.installed_version, bfcfg=self.installed_bfcfg, at=time.time())
        with self._ready:
            self.state = "ready"
            self.boots.append(event)
            self._ready.notify_all()
        for callback in list(self.on_ready):
            try:
                callback(event)
            except Exception:  # a consumer's bug must not stop the device
                log.exception("emulator: on_ready callback failed for %s", self.name)

    def _boot_installed(self, run: _Run, reason: str) -> None:
        self.state = "booting"
        self.rshim.clear_log()
        self._firmware(run, "emmc")
        self._linux(run, reason)

    def _stream_started(self) -> None:
        self.last_error = None
        self.rshim.powered = True
        self.rshim.clear_log()
        self.state = "flashing"
        self._start(self._flash)

    def _stream_ended(self, outcome: StreamOutcome) -> None:
        run = self._run
        if run is None:
            return
        run.outcome = outcome
        run.outcome_ready.set()

    def _flash(self, run: _Run) -> None:
        self._firmware(run, "rshim")
        outcome = run.wait_outcome()
        if not outcome.ok:
            self.state = "error"
            self.last_error = outcome.error
            self.rshim.log(f" ERR[MISC]: {outcome.error}")
            self.rshim.log(" ERR[MISC]: boot failed, waiting for a new boot stream")
            return
        bfcfg = parse_bfcfg(outcome.bfcfg) if outcome.bfcfg else None
        self.state = "installing"
        if bfcfg:
            self.rshim.log(" INFO[MISC]: Found bf.cfg")
        self.rshim.log(" INFO[MISC]: Ubuntu installation started")
        self.rshim.log(f" INFO[MISC]: Installing OS image {outcome.version}")
        run.sleep(self.faults.timings.install)
        self.installed_version = outcome.version or FACTORY_VERSION
        self.installed_bfcfg = bfcfg
        self.rshim.log(" INFO[MISC]: Installation finished")
        self.rshim.log(" INFO[MISC]: Rebooting...")
        self.state = "booting"
        self._firmware(run, "emmc")
        self._linux(run, "install")

    # --- for tests and the lab -----------------------------------------------------------------------------

    def wait_ready(self, after: int = 0, timeout: float = 10.0) -> BootEvent:
        """The first boot event numbered > `after` (len(boots) before the action), within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while len(self.boots) <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name} not ready within {timeout}s (state {self.state}, "
                                       f"last lines {self.rshim.log_lines()[-3:]})")
                self._ready.wait(left)
            return self.boots[after]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._start(None)
        self.rshim.close()


__all__ = ["BootEvent", "EmulatedDpu", "Faults", "StageTimings"]
