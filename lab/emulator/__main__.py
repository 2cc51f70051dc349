"""`python -m dpf.lab.emulator ROOT --name h1 --dpus 2`: run one emulated host until SIGINT/SIGTERM.

For exploring by hand and for a lab that runs its hosts in their own processes: dial faults and power
through `<ROOT>/run/emulator/control.sock` and `<ROOT>/usr/bin/ipmitool`. Everything is removed on exit.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from dpf.lab.emulator.dpu import BootEvent
from dpf.lab.emulator.host import DpuSpec, EmulatedHost
from dpf.lab.emulator.pci import DEVICE_IDS
from dpf.lab.emulator.rshim import StageTimings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpf.lab.emulator", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the host's root directory (created; removed on exit)")
    parser.add_argument("--name", default="h1", help="short name; names the network namespaces")
    parser.add_argument("--dpus", type=int, default=1)
    parser.add_argument("--model", choices=sorted(DEVICE_IDS), default="BlueField-3")
    parser.add_argument("--owner", default="lab", help="namespace owner tag (dpf-<owner><pid>-<name>)")
    parser.add_argument("--install-seconds", type=float, default=StageTimings.install)
    args = parser.parse_args(argv)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    timings = StageTimings(install=args.install_seconds)
    with EmulatedHost(args.name, args.root, [DpuSpec(args.model)] * args.dpus, owner=args.owner,
                      timings=timings) as host:
        for dpu in host.dpus:
            dpu.on_ready.append(_announce)
            print(f"{dpu.name}: {dpu.pci_address} rshim {dpu.rshim.directory} netns {dpu.netns}", flush=True)
        print(f"host {host.name}: netns {host.netns}, ipmitool {host.ipmitool}, "
              f"control {host.run_dir / 'control.sock'}", flush=True)
        done.wait()
    return 0


def _announce(event: BootEvent) -> None:
    print(f"{event.dpu}: DPU is ready ({event.reason}, {event.version}, hostname {event.hostname})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
