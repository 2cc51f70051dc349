"""`dpf lab`: run the local lab in the foreground until Ctrl-C (or `--for SECONDS`)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_WORKDIR = Path("/tmp/dpf-lab")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "lab",
        help="run the local lab: control plane, controller, emulated DPUs, chains and service pods",
        description=(
            "Start a local lab on this machine: etcd + kube-apiserver + kube-controller-manager on loopback "
            "with the dpf CRDs installed, the dpf controller (mTLS), and two emulated DPUs (a network namespace "
            "each, with its own Open vSwitch and DPU agent). Applies upstream's hbn_only service interfaces "
            "and chain, shows traffic passing through the chain and stopping when it is deleted, applies it "
            "again, prints how to point kubectl at it, then runs until Ctrl-C (or SIGTERM) and stops "
            "everything it started. Needs root (network namespaces, OVS)."
        ),
        epilog="Example: dpf lab    # then, in another shell: export KUBECONFIG=/tmp/dpf-lab/host/admin.kubeconfig",
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
