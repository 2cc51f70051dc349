"""`dpf agent dpu`: the DPU agent process (SFC ports and flows on br-sfc, optionally the CNI server).

Kept light at import (argparse only): `dpf --help` must not pay for grpc, OVS or pyroute2.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from dpf.agent.runtime.cli import add_connection_flags, run_node_agent, settings_from

if TYPE_CHECKING:
    from dpf.agent.dpu.main import DpuAgent, DpuAgentSettings


def register(kinds: argparse._SubParsersAction) -> None:
    from dpf.agent.sfc.settings import SfcSettings

    defaults = SfcSettings()
    parser = kinds.add_parser(
        "dpu", help="the DPU agent: service interfaces and chains on OVS, and the CNI server",
        description="Run the DPU agent for one DPU node: receive the node's ServiceInterfaces and ServiceChains "
                    "from the controller, keep the SFC bridge's ports and OpenFlow rules equal to them (one "
                    "OVSDB transaction and one OpenFlow bundle per change; re-synced after an OVS restart), "
                    "report each object READY only once it is programmed, and NACK what can never be "
                    "programmed. With --cni-socket it also serves the SFC CNI plugin and node IPAM. Stopping "
                    "the agent leaves the data plane as it is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_connection_flags(parser, required=True)
    parser.add_argument("--ovs-rundir", type=Path, default=defaults.ovs_rundir,
                        help="directory of ovsdb-server's db.sock and the bridges' <bridge>.mgmt sockets")
    parser.add_argument("--bridge", default=defaults.bridge, help="the SFC bridge (created if absent)")
    parser.add_argument("--port-type", default=defaults.port_type,
                        help="OVS Interface type of physical/pf/vf ports: dpdk on a BlueField, system for veths")
    parser.add_argument("--datapath-type", default=defaults.datapath_type,
                        help="datapath of the SFC bridge when the agent creates it")
    parser.add_argument("--ovn-bridge", default=defaults.ovn_bridge,
                        help="OVN-Kubernetes' gateway bridge (the far end of an `ovn` interface)")
    parser.add_argument("--cni-socket", type=Path, default=None,
                        help="also serve the SFC CNI plugin on this unix socket (its pools come from the stream)")
    parser.add_argument("--cni-state-dir", type=Path, default=None,
                        help="where the CNI server keeps its IP leases (default: STATE_DIR/cni)")
    parser.set_defaults(run=_run, role="dpu")


def settings(args: argparse.Namespace) -> DpuAgentSettings:
    from dpf.agent.cni.settings import CniSettings
    from dpf.agent.dpu.main import DpuAgentSettings
    from dpf.agent.sfc.settings import SfcSettings

    sfc = SfcSettings(ovs_rundir=args.ovs_rundir, bridge=args.bridge, port_type=args.port_type,
                      datapath_type=args.datapath_type, ovn_bridge=args.ovn_bridge)
    cni = None
    if args.cni_socket is not None:
        cni = CniSettings(socket=args.cni_socket, ovsdb=sfc.remote,
                          state_dir=args.cni_state_dir or args.state_dir / "cni")
    agent = dataclasses.replace(settings_from(args), state_dir=args.state_dir / "runtime")
    return DpuAgentSettings(agent=agent, sfc=sfc, cni=cni)


def _run(args: argparse.Namespace) -> int:
    return run_node_agent(args, "dpf agent dpu", settings, _agent)


def _agent(config: DpuAgentSettings) -> DpuAgent:
    from dpf.agent.dpu.main import DpuAgent

    return DpuAgent(config)
