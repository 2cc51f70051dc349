#!/usr/bin/env python3
"""Many servers' host agents in one process: `bench/provision/run.py --agent-processes K` starts K of these.

    python bench/provision/agents.py --controller unix:PATH --bfb-dir DIR --spec agents.json

Each entry of the JSON spec is one emulated server (`python -m dpf.lab.machine`) and becomes one `HostAgent`
(`agent/host/main.py`), built from the same flags `dpf agent host` takes (`agent/host/cli.py`), so each keeps its
own node name, mTLS certificate and NodeState stream, its own state dir, sysroot (the server's PCI sysfs and
rshims: the flashes are real bytes into each server's emulated rshim `boot`) and power command. What changes
against one `ip netns exec <server> dpf agent host` per server: the agents share one event loop, and the two
netlink calls that need the server's network namespace (the OOB bridge check in `agent/host/detect.py`, VF0 into
the bridge in `agent/host/hostnet.py`) enter it for the call's duration on their worker thread
(`bench/provision/netns_call.py`); each server's agent keeps one netlink socket (`agent/host/rtnl.py`), opened
inside the server's namespace. This is what `bench/fanout/clients.py` does for DPU agents.

The shared worker-thread pool gets as many threads as the agents would have had in processes of their own
(`asyncio.to_thread`'s default, min(32, cores + 4), per agent): a flash holds a thread for its whole stream.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netns_call import in_netns  # noqa: E402 - beside this script (sys.path[0])

from dpf.agent.host import cli as host_cli  # noqa: E402
from dpf.agent.host.detect import detect  # noqa: E402
from dpf.agent.host.hostnet import HostNetworkConfigurator  # noqa: E402
from dpf.agent.host.main import HostAgent  # noqa: E402
from dpf.agent.host.rtnl import Rtnl  # noqa: E402
from dpf.proto.v1 import provisioning_pb2 as ppb  # noqa: E402
from dpf.shared.logs import setup_logging  # noqa: E402

THREADS_PER_AGENT = min(32, (os.cpu_count() or 1) + 4)


class NetnsHostNetwork:
    """`HostNetworkConfigurator` of one server, its netlink calls made inside the server's namespace."""

    def __init__(self, sysroot: Path, netns: str, recheck_seconds: float, rtnl: Rtnl) -> None:
        self._inner = HostNetworkConfigurator(sysroot, recheck_seconds=recheck_seconds, rtnl=rtnl)
        self._netns = netns

    def ensure(self, pci_address: str, spec: ppb.HostNetwork) -> ppb.HostNetworkStatus:
        return in_netns(self._netns, self._inner.ensure, pci_address, spec)

    def release(self, pci_address: str, spec: ppb.HostNetwork) -> None:
        in_netns(self._netns, self._inner.release, pci_address, spec)


def agent_argv(entry: dict[str, str], controller: str, bfb_dir: str, log_level: str) -> list[str]:
    """`dpf agent host` flags for one server, as `run.py` passes them in the one-process-per-server mode."""
    return ["host", "--node", entry["node"], "--controller", controller, "--ca", entry["ca"], "--cert", entry["cert"],
            "--key", entry["key"], "--server-name", "localhost", "--state-dir", entry["state_dir"],
            "--sysroot", entry["sysroot"], "--bfb-dir", bfb_dir, "--power-command", entry["power_command"],
            "--log-level", log_level]


def build(entry: dict[str, str], controller: str, bfb_dir: str, log_level: str) -> HostAgent:
    parser = argparse.ArgumentParser()
    host_cli.register(parser.add_subparsers())
    config = host_cli.settings(parser.parse_args(agent_argv(entry, controller, bfb_dir, log_level)))
    netns = entry["netns"]
    rtnl = Rtnl()  # the server's netlink socket, opened in its namespace on first use; closed when the agent stops
    return HostAgent(config, detect=lambda sysroot, bridge: in_netns(netns, detect, sysroot, bridge, rtnl),
                     hostnet=NetnsHostNetwork(config.sysroot, netns, config.host_network_recheck, rtnl), rtnl=rtnl)


async def serve(entries: list[dict[str, str]], controller: str, bfb_dir: str, log_level: str) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(THREADS_PER_AGENT * len(entries)))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agents = [build(entry, controller, bfb_dir, log_level) for entry in entries]

    async def run(agent: HostAgent) -> int:
        code = await agent.run(stop)
        stop.set()  # one agent's task ended (1): stop them all, as that agent's own process would have exited
        return code

    return max(await asyncio.gather(*(run(agent) for agent in agents)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller", required=True)
    parser.add_argument("--bfb-dir", required=True)
    parser.add_argument("--spec", type=Path, required=True, help="JSON list: node, netns, sysroot, state_dir, "
                        "ca, cert, key, power_command per server")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    setup_logging(args.log_level, "text")
    return asyncio.run(serve(json.loads(args.spec.read_text()), args.controller, args.bfb_dir, args.log_level))


if __name__ == "__main__":
    sys.exit(main())
