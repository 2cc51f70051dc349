"""`dpf agent host`: the host agent process (flash, reboot and host network of the host's BlueFields).

Kept light at import (argparse only): `dpf --help` must not pay for grpc.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from dpf.agent.runtime.cli import add_connection_flags, run_node_agent, settings_from

if TYPE_CHECKING:
    from dpf.agent.host.main import HostAgent, HostAgentSettings

DESCRIPTION = """\
Run the host agent for one host (upstream's DMS pod and host-network pod, in one process that takes its work
from the controller's NodeState stream, as the DPU agent does).

For each DPU the controller provisions on this host (a dpf.v1.DPUProvisioning resource) it:
  - claims the DPU's rshim (/dev/rshim<N>, found by the PCI address in its misc DEV_NAME) exclusively, and
    reports who else holds it when it cannot (the controller shows ExistingRshimInstallDetected);
  - keeps the BFB file ready: from --bfb-dir, else streamed from the controller (resumed after a cut,
    checked against the BFB's size and sha256);
  - on install: streams BFB + bf.cfg into the rshim's boot device as fast as the DPU takes it, watches misc
    for the boot log, and reports progress (bytes, rate, ETA, last log lines) and DONE once the DPU says
    "DPU is ready" (FAILED with the DPU's ERR line, or at the install's timeout). An install is flashed once;
    a completed one is remembered in --state-dir, so an agent restart never flashes it again;
  - on reboot: runs `<--power-command> chassis power cycle|reset` once per request;
  - on host network: sets sriov_numvfs and puts PF0's VF0 into the OOB bridge, and keeps it so (a reset VF
    count or a reboot at the next poll, other drift within --host-network-recheck); undone when the DPU goes.
It also reports the host's BlueFields, the OOB bridge's state and its boot id (HostInfo), from which the
controller sets the host Node's feature.node.kubernetes.io/dpu-* labels.

Removing a DPU cuts its flash (the DPU refuses the truncated stream), releases the rshim and undoes its host
network. Stopping the agent cuts flashes and releases rshims, and leaves the host network as it is.
"""


def register(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "host", help="the host agent: flash, reboot and host network of this host's BlueFields",
        description=DESCRIPTION, formatter_class=_Formatter)
    add_connection_flags(parser, required=True)
    parser.add_argument("--sysroot", type=Path, default=Path("/"),
                        help="prefix of /sys, /dev and /proc: / on a real host, an emulated host's root in the lab")
    parser.add_argument("--bfb-dir", type=Path, default=Path("/bfb"),
                        help="BFB files are looked for here (upstream's shared volume) and files streamed from "
                             "the controller are kept here")
    parser.add_argument("--no-bfb-download", action="store_true",
                        help="never stream a BFB from the controller: only files already in --bfb-dir are used")
    parser.add_argument("--oob-bridge", default="br-dpu",
                        help="the host bridge for the DPUs' OOB/comm-channel (reported, and VF0's bridge)")
    parser.add_argument("--power-command", default="ipmitool",
                        help="ipmitool-shaped power command, run as `<command> chassis power cycle|reset`; may "
                             "carry its own options, e.g. 'ipmitool -I lanplus -H bmc -U admin -P secret'")
    parser.add_argument("--install-timeout", type=float, default=1800.0,
                        help="seconds an install may take from the stream's start to 'DPU is ready' when the "
                             "controller gives none")
    parser.add_argument("--poll-interval", type=float, default=3.0,
                        help="seconds between re-checks: rshim, boot id, the host's devices (PCI functions, "
                             "rshims), each DPU's VF count and VF0; a host network not ready yet is retried "
                             "at this pace")
    parser.add_argument("--host-network-recheck", type=float, default=30.0,
                        help="once a DPU's host network is ready, seconds between full passes over it (VF0's "
                             "bridge, MTU and state over netlink): drift only netlink sees is repaired within "
                             "this; a new spec, a reboot or a reset VF count is acted on at the next poll")
    parser.add_argument("--host-info-recheck", type=float, default=30.0,
                        help="once the host's detection is stable, seconds between full detections (PF "
                             "netdev names, PSIDs, the OOB bridge's address); a reboot or a device or rshim "
                             "coming or going is reported at the next poll")
    parser.set_defaults(run=_run, role="host")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def settings(args: argparse.Namespace) -> HostAgentSettings:
    from dpf.agent.host.main import HostAgentSettings

    agent = dataclasses.replace(settings_from(args), state_dir=args.state_dir / "runtime")
    return HostAgentSettings(agent=agent, sysroot=args.sysroot, bfb_dir=args.bfb_dir,
                             records=args.state_dir / "provisioning.json", oob_bridge=args.oob_bridge,
                             power_command=args.power_command, fetch_from_controller=not args.no_bfb_download,
                             install_timeout=args.install_timeout, poll_interval=args.poll_interval,
                             host_network_recheck=args.host_network_recheck,
                             host_info_recheck=args.host_info_recheck)


def _run(args: argparse.Namespace) -> int:
    return run_node_agent(args, "dpf agent host", settings, _agent)


def _agent(config: HostAgentSettings) -> HostAgent:
    from dpf.agent.host.main import HostAgent

    return HostAgent(config)
