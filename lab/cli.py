"""`dpf lab`: run the local lab in the foreground until Ctrl-C (or `--for SECONDS`)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from dpf.lab.bed.supervise import RestartPolicy

DEFAULT_WORKDIR = Path("/tmp/dpf-lab")
_POLICY = RestartPolicy()

DESCRIPTION = (
    "Start a local lab on this machine: etcd + kube-apiserver + kube-controller-manager on loopback "
    "with the dpf CRDs installed, the dpf controller (mTLS), and two emulated DPUs (a network namespace "
    "each, with its own Open vSwitch and DPU agent). Applies upstream's hbn_only service interfaces "
    "and chain, shows traffic passing through the chain and stopping when it is deleted, applies it "
    "again, prints how to point kubectl at it, then runs until Ctrl-C (or SIGTERM) and stops "
    "everything it started. Needs root (network namespaces, OVS)."
)
FAULTS = (
    "Faults: once up, the lab supervises its processes (etcd, kube-apiserver, kube-controller-manager, the "
    "controller, and each DPU's ovsdb-server, ovs-vswitchd and agent) as systemd's Restart=on-failure would: "
    f"one that crashes or is killed is restarted after {_POLICY.first_delay:g}s, doubling to "
    f"{_POLICY.max_delay:g}s while it keeps failing, with a line saying so. Only a process that restarts more "
    f"than {_POLICY.burst} times within {_POLICY.interval:g}s stops the lab, which then names it and its log. "
    "A plain `kill` (SIGTERM) is a clean stop: that process stays down, as under systemd. Try a fault (the lab "
    "prints each process's pid and log once it is up):"
)
EXAMPLES = """\
  kill -9 $(pgrep -f 'agent dpu --node worker1')   # [lab] dpu agent worker1-... exited (signal 9); restarting
  kill -9 $(pgrep -f 'ovs-vswitchd.*dpu1')         # it reopens its bridges; the agent puts the flows back"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "lab",
        help="run the local lab: control plane, controller, emulated DPUs, chains and service pods",
        description=textwrap.fill(DESCRIPTION, 100),
        epilog="Example: dpf lab    # then, in another shell: export KUBECONFIG=/tmp/dpf-lab/host/admin.kubeconfig"
               f"\n\n{textwrap.fill(FAULTS, 100)}\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the example commands on their own lines
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"state directory, wiped at start (default: {DEFAULT_WORKDIR})")
    parser.add_argument("--for", dest="duration", type=float, metavar="SECONDS", default=None,
                        help="stop by itself after SECONDS once ready (default: run until Ctrl-C)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from dpf.lab.lab import Lab, LabError

    try:
        with Lab(args.workdir) as lab:
            lab.start()
            lab.wait(args.duration)
    except LabError as exc:
        print(f"lab: error: {exc}", flush=True)
        return 1
    except KeyboardInterrupt:
        return 130  # interrupted during start-up; everything started was already stopped
    return 0
