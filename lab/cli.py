"""`dpf lab`: run the local lab in the foreground until Ctrl-C (or `--for SECONDS`)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from dpf.lab.bed.supervise import RestartPolicy

DEFAULT_WORKDIR = Path("/tmp/dpf-lab")
_POLICY = RestartPolicy()

DESCRIPTION = (
    "Start a local lab on this machine and provision DPUs for real: the host cluster (etcd + kube-apiserver + "
    "kube-controller-manager on loopback, dpf CRDs installed), a DPU cluster that is a control plane of its own "
    "(bootstrap tokens, CSR signing, scheduler), the dpf controller (mTLS), and emulated servers (default 2, one "
    "BlueField each: PCI sysfs, rshim, power) with their host agents. Applies upstream's hbn_only BFB, DPUFlavor "
    "and DPUSet and prints every DPU's phase changes with flash progress until all are Ready (each DPU boots its "
    "bf.cfg, joins the DPU cluster with a real containerd + kubelet, and starts its Open vSwitch and DPU agent), "
    "and the time that took. Then, on those DPUs, upstream's hbn_only service interfaces and chain: traffic "
    "passing through the chain and stopping when it is deleted, and service pods attached through Multus; then a "
    "rolling update of the DPUSet to a new BFB, maxUnavailable respected and shown. Prints how to point kubectl "
    "at it, then runs until Ctrl-C (or SIGTERM) and stops everything it started. Needs root (network namespaces, "
    "OVS, kubelet)."
)
FAULTS = (
    "Faults: once up, the lab supervises its processes (both clusters' etcd, kube-apiserver and "
    "kube-controller-manager, the DPU cluster's scheduler, the controller, the host agents; each emulated server "
    "does the same for its DPUs' agents) as systemd's Restart=on-failure would: "
    f"one that crashes or is killed is restarted after {_POLICY.first_delay:g}s, doubling to "
    f"{_POLICY.max_delay:g}s while it keeps failing, with a line saying so. Only a process that restarts more "
    f"than {_POLICY.burst} times within {_POLICY.interval:g}s stops the lab, which then names it and its log. "
    "A plain `kill` (SIGTERM) is a clean stop: that process stays down, as under systemd. Try a fault (the lab "
    "prints each process's pid and log once it is up):"
)
EXAMPLES = """\
  kill -9 $(pgrep -f 'agent dpu --node worker1')   # [lab] worker1: dpu agent worker1-... exited (signal 9); restarting
  kill -9 $(pgrep -f 'agent host --node worker2')  # [lab] host agent worker2 exited (signal 9); restarting"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "lab",
        help="run the local lab: clusters, controller, emulated servers whose DPUs DPF provisions, chains, service "
             "pods, a rolling BFB update",
        description=textwrap.fill(DESCRIPTION, 100),
        epilog="Example: dpf lab    # then, in another shell: export KUBECONFIG=/tmp/dpf-lab/host/admin.kubeconfig"
               f"\n\n{textwrap.fill(FAULTS, 100)}\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the example commands on their own lines
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"state directory, wiped at start (default: {DEFAULT_WORKDIR})")
    parser.add_argument("--for", dest="duration", type=float, metavar="SECONDS", default=None,
                        help="stop by itself after SECONDS once ready (default: run until Ctrl-C)")
    parser.add_argument("--hosts", type=_positive, default=2, metavar="N",
                        help="emulated servers, each a host Node with its host agent (default: 2)")
    parser.add_argument("--dpus-per-host", type=_positive, default=1, metavar="M",
                        help="BlueFields per server, each provisioned as a DPU (default: 1)")
    parser.add_argument("--no-update", dest="update", action="store_false",
                        help="skip the rolling BFB update at the end of start-up (hbn_only)")
    parser.add_argument("--use-case", choices=("hbn_only", "hbn_ovn"), default="hbn_only",
                        help="upstream's use case to run: hbn_only (default: its BFB, flavor and DPUSet, then the "
                             "service chaining and service pods on those DPUs, then a rolling BFB update) or hbn_ovn "
                             "(05.2's DPUDeployment ovn-hbn applied unchanged: its DPUSet provisions the DPUs and "
                             "its four DPUServices ovn, hbn, dts and blueman run a pod on each, charts through the "
                             "lab's mirrors)")
    parser.set_defaults(run=_run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _run(args: argparse.Namespace) -> int:
    from dpf.lab.lab import Lab, LabError

    try:
        with Lab(args.workdir, hosts=args.hosts, dpus_per_host=args.dpus_per_host, update=args.update,
                 use_case=args.use_case) as lab:
            lab.start()
            lab.wait(args.duration)
    except LabError as exc:
        print(f"lab: error: {exc}", flush=True)
        return 1
    except KeyboardInterrupt:
        return 130  # interrupted during start-up; everything started was already stopped
    return 0
