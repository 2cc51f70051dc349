"""Emulated BlueField hardware for the lab and the tests, behind the real interfaces (docs/emulator.md).

`EmulatedHost` builds one host: a network namespace, a PCI sysfs tree with BlueField PFs whose
`sriov_numvfs` creates real VF netdevs, one rshim directory per DPU (`boot`, `misc`, `console`) that
verifies emulated BFB streams and boots from them, and an `ipmitool`-shaped power command.
"""

from dpf.lab.emulator.bfb import EmulatedBfb, StreamOutcome
from dpf.lab.emulator.bfcfg import BfCfg, ConfigFile, parse_bfcfg
from dpf.lab.emulator.dpu import BootEvent, EmulatedDpu
from dpf.lab.emulator.host import DpuSpec, EmulatedHost, PowerEvent
from dpf.lab.emulator.rshim import Claim, Faults, Holder, RshimBusy, StageTimings, claim, holder

__all__ = [
    "BfCfg",
    "BootEvent",
    "Claim",
    "ConfigFile",
    "DpuSpec",
    "EmulatedBfb",
    "EmulatedDpu",
    "EmulatedHost",
    "Faults",
    "Holder",
    "PowerEvent",
    "RshimBusy",
    "StageTimings",
    "StreamOutcome",
    "claim",
    "holder",
    "parse_bfcfg",
]
