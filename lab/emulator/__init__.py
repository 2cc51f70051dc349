"""Emulated BlueField hardware for the lab and the tests, behind the real interfaces (docs/emulator.md).

`EmulatedHost` builds one host: a network namespace, a PCI sysfs tree with BlueField PFs whose
`sriov_numvfs` creates real VF netdevs, one rshim directory per DPU (`boot`, `misc`, `console`) that
verifies emulated BFB streams and boots from them, and an `ipmitool`-shaped power command.

Names are imported on first use, so the `ipmitool` command (a module of this package) starts without
loading netlink.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmulatedBfb": "bfb", "StreamOutcome": "bfb",
    "BfCfg": "bfcfg", "ConfigFile": "bfcfg", "parse_bfcfg": "bfcfg",
    "BootEvent": "dpu", "EmulatedDpu": "dpu",
    "DpuSpec": "host", "EmulatedHost": "host", "PowerEvent": "host",
    "Claim": "rshim", "Faults": "rshim", "Holder": "rshim", "RshimBusy": "rshim", "StageTimings": "rshim",
    "claim": "rshim", "holder": "rshim",
    "BfbHttpServer": "serve",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
