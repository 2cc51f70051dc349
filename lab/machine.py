"""`python -m dpf.lab.machine ROOT --name h1 --dpus 1 ...`: one emulated server with its BlueFields, hardware and
software, in a process of its own, until SIGTERM/SIGINT.

Hardware: `lab/emulator` (PCI sysfs with SR-IOV, rshim, power) under ROOT. Software: per DPU a `DpuOs`
(`lab/dpu_os.py`) that, on every boot with a bf.cfg, writes its files, runs its OVS script and joins the DPU cluster
as kubeadm would, with a real containerd + kubelet (`lab/bed/kubelet.py`) in the DPU's network namespace, wired
into the DPU cluster's node network (`--node-bridge`, one `--node-address` per DPU).

Its own process because a power action rebuilds netdevs through pyroute2, which forks, and a fork is unsafe in a
process running gRPC threads (the tests' and the lab's controller clients); and because the kubelets it starts
must die with it. It prints one line per event (`<dpu>: joined as <node>`), which the lab shows.

With `--controller`, each DPU's OS also starts its DPU agent (`dpf agent dpu`: SFC programmer and CNI server) in
the DPU's network namespace once it has joined, as the DPF-provisioned DPU does, with the node certificate found
in `--agent-certs/<hostname>/` (waited for: whoever provisions the DPU issues it). The server restarts an agent
that dies, as systemd's `Restart=on-failure` would (`bed/supervise.py`), and says so.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import config as pyroute2_config

from dpf.cni.wire import SOCKET_ENV
from dpf.lab.bed.kubelet import Kubelet
from dpf.lab.bed.kwok import KwokDpuOs
from dpf.lab.bed.netns import ns_ipr
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, ProcessFailed, wait_until
from dpf.lab.bed.supervise import Supervisor
from dpf.lab.dpu_os import DpuOs
from dpf.lab.emulator.dpu import BootEvent
from dpf.lab.emulator.host import DpuSpec, EmulatedHost
from dpf.lab.emulator.pci import DEVICE_IDS
from dpf.lab.emulator.rshim import StageTimings

NODE_IFNAME = "k8s0"
SHORT_ROOT = Path("/run/dpf-machines")
"""Short links to each DPU's kubelet dir: containerd's sockets live there, and a unix socket path must fit in
about 104 bytes, which a deep workdir (a test's tmp path) does not."""
CERT_TIMEOUT = 300.0
"""How long a booted DPU's agent waits for its node certificate to appear under --agent-certs."""


def say(message: str) -> None:
    print(message, flush=True)


def attach(netns: str, bridge: str, address: str, host_end: str) -> None:
    """A veth from the DPU's namespace (`k8s0`, `address`) into the DPU cluster's node bridge; once per DPU
    (the namespace outlives the DPU's reboots, and so does its link)."""
    with ns_ipr(netns) as ipr:
        if ipr.link_lookup(ifname=NODE_IFNAME):
            return
    interface = ipaddress.ip_interface(address)
    with IPRoute() as ipr:
        ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": NODE_IFNAME, "net_ns_fd": netns})
        index = ipr.link_lookup(ifname=host_end)[0]
        ipr.link("set", index=index, master=ipr.link_lookup(ifname=bridge)[0], state="up")
    with ns_ipr(netns) as ipr:
        index = ipr.link_lookup(ifname=NODE_IFNAME)[0]
        ipr.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
        ipr.link("set", index=index, state="up")


def short_link(target: Path, tag: str) -> Path:
    """`SHORT_ROOT/<pid>-<tag>` → `target` (created); links of servers that are gone are removed first."""
    SHORT_ROOT.mkdir(parents=True, exist_ok=True)
    for stale in SHORT_ROOT.iterdir():
        pid = stale.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    link = SHORT_ROOT / f"{os.getpid()}-{tag}"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    return link


def agent_certs(directory: Path, node: str, timeout: float = CERT_TIMEOUT) -> list[str]:
    """The TLS flags of `dpf agent dpu` for `node`, once `dpf controller issue-node-cert` wrote them."""
    certs = directory / node
    wait_until(lambda: (certs / "tls.key").exists(), timeout, f"the node certificate of {node} in {certs}",
               interval=0.2)
    return ["--ca", str(certs / "ca.crt"), "--cert", str(certs / "tls.crt"), "--key", str(certs / "tls.key"),
            "--server-name", "localhost"]


def start_dpu_agent(netns: str, node: str, ovs: OvsSwitch, workdir: Path, controller: str, certs: Path,
                    log_level: str, kubelet: Kubelet | None = None) -> Child:
    """The DPU agent of a booted DPU, in its network namespace next to its OVS; with the DPU's kubelet, in its
    mount namespace too, as on a DPU (the CNI server opens pods' netns paths, mounts made in that namespace)."""
    tls = agent_certs(certs, node)
    socket = workdir / "run" / "cni.sock"
    socket.unlink(missing_ok=True)  # a restart waits for the new agent's socket
    enter = kubelet.enter_argv() if kubelet is not None else ["ip", "netns", "exec", netns]
    argv = [*enter, sys.executable, "-m", "dpf.cli", "agent", "dpu", "--node", node,
            "--controller", controller, "--state-dir", str(workdir / "agent-state"), "--ovs-rundir", str(ovs.rundir),
            "--port-type", "system", "--cni-socket", str(socket), "--log-level", log_level, *tls]
    agent = Child(f"dpu-agent-{node}", argv, workdir / "agent.log")
    wait_until(socket.exists, 60, f"the DPU agent of {node} to serve CNI", while_alive=[agent])
    return agent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpf.lab.machine", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the host's root directory (created; removed on exit)")
    parser.add_argument("--name", default="h1", help="short name; names the network namespaces")
    parser.add_argument("--dpus", type=int, default=1)
    parser.add_argument("--model", choices=sorted(DEVICE_IDS), default="BlueField-3")
    parser.add_argument("--owner", default="lab", help="namespace owner tag (dpf-<owner><pid>-<name>)")
    parser.add_argument("--totalvfs", type=int, default=16, help="sriov_totalvfs of each PF")
    parser.add_argument("--install-seconds", type=float, default=StageTimings.install)
    parser.add_argument("--workdir", type=Path, required=True, help="the DPUs' software state (OVS, kubelet)")
    parser.add_argument("--node-bridge", help="the DPU cluster's node network bridge (required without --kwok)")
    parser.add_argument("--node-address", action="append", default=[],
                        help="CIDR of DPU i on the node network (once per DPU, in order)")
    parser.add_argument("--image-tar", type=Path, help="OCI image tar imported into each DPU's containerd")
    parser.add_argument("--multus-kubeconfig", type=Path,
                        help="make Multus each DPU kubelet's CNI, reading pods and NADs with this kubeconfig")
    parser.add_argument("--cni-plugin", action="append", default=[], metavar="TYPE=PATH",
                        help="a CNI plugin binary beside the standard ones in each DPU's CNI bin dir (repeatable)")
    parser.add_argument("--kwok", type=Path, metavar="KUBECONFIG",
                        help="scale benches: a booted DPU only registers its Node in the DPU cluster (this admin "
                             "kubeconfig) for kwok to simulate; no OVS, kubelet or DPU agent (lab/bed/kwok.py)")
    parser.add_argument("--flash-rate", type=float, default=None,
                        help="bytes/s each DPU's rshim boot device accepts (default: as fast as it can)")
    parser.add_argument("--controller", help="NodeState endpoint: start each booted DPU's DPU agent against it")
    parser.add_argument("--agent-certs", type=Path, help="with --controller: <dir>/<hostname>/ holds each "
                        "DPU agent's node certificate (ca.crt, tls.crt, tls.key)")
    parser.add_argument("--agent-log-level", default="info")
    args = parser.parse_args(argv)
    if args.kwok is None and not args.node_bridge:
        parser.error("--node-bridge is required (or --kwok)")
    if args.kwok is None and len(args.node_address) != args.dpus:
        parser.error(f"--node-address must be given once per DPU ({args.dpus}), got {len(args.node_address)}")
    if args.controller and not args.agent_certs:
        parser.error("--controller needs --agent-certs")
    if any("=" not in p for p in args.cni_plugin):
        parser.error("--cni-plugin takes TYPE=PATH, e.g. dpf-sfc-cni=/opt/cni/bin/dpf-sfc-cni")
    cni_plugins = {k: Path(v) for k, v in (p.split("=", 1) for p in args.cni_plugin)}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)

    done = threading.Event()
    # pyroute2 forks a helper per netns socket (from the watcher thread) and stops it with SIGTERM once it sent the
    # socket; a helper still running our handler below deadlocks on `done`'s lock, inherited held from the main
    # thread, and its parent waits forever: this server's sysfs writes went unanswered (bench/provision, N=1000).
    # The helper then takes SIGTERM's default (dies) instead.
    pyroute2_config.disable_mp_signal = True
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    systems: list[DpuOs | KwokDpuOs] = []
    links: list[Path] = []
    supervisor = Supervisor(say)
    specs = [DpuSpec(args.model, totalvfs=args.totalvfs)] * args.dpus
    with EmulatedHost(args.name, args.root, specs, owner=args.owner,
                      timings=StageTimings(install=args.install_seconds)) as host:
        try:
            if args.kwok is not None:
                systems.append(KwokDpuOs(host.dpus, args.kwok, say=say).start())
            for index, dpu in enumerate(host.dpus if args.kwok is None else []):
                workdir = args.workdir / dpu.name
                address = args.node_address[index]
                host_end = f"kn{os.getpid() % 100000}x{index}"
                kubelet_dir = short_link(workdir / "kubelet", f"k{index}")
                links.append(kubelet_dir)

                def join(event: BootEvent, netns: str, kubelet_dir: Path = kubelet_dir, address: str = address,
                         host_end: str = host_end, workdir: Path = workdir) -> Kubelet:
                    assert event.bfcfg is not None
                    assert event.bfcfg.join_command is not None
                    attach(netns, args.node_bridge, address, host_end)
                    node = event.hostname or event.dpu
                    kubelet = Kubelet(netns, node, event.bfcfg.join_command, kubelet_dir, image_tar=args.image_tar,
                                      multus_kubeconfig=args.multus_kubeconfig, cni_plugins=cni_plugins,
                                      # the DPU agent's socket (start_dpu_agent) for NADs naming none, as on a DPU
                                      cni_env={SOCKET_ENV: str(workdir / "run" / "cni.sock")}).start()
                    say(f"{event.dpu}: joined the DPU cluster as node {node} ({address})")
                    return kubelet

                def agent(hostname: str, ovs: OvsSwitch, node: object, workdir: Path = workdir,
                          netns: str = dpu.netns) -> Child:
                    child = start_dpu_agent(netns, hostname, ovs, workdir, args.controller, args.agent_certs,
                                            args.agent_log_level, node if isinstance(node, Kubelet) else None)
                    supervisor.watch(child, f"dpu agent {hostname}")
                    say(f"dpu agent {hostname} started as pid {child.pid}; log: {child.log}")
                    return child

                if args.flash_rate:
                    dpu.set_faults(rate=args.flash_rate)
                systems.append(DpuOs(dpu, workdir, join=join, agent=agent if args.controller else None,
                                     say=say).start())
                say(f"{dpu.name}: {dpu.pci_address} rshim {dpu.rshim.directory} netns {dpu.netns}")
            say(f"host {host.name}: netns {host.netns}, ipmitool {host.ipmitool}, "
                f"control {host.run_dir / 'control.sock'}")
            while not done.wait(0.1):
                try:
                    supervisor.poll()
                except ProcessFailed as exc:  # one DPU's agent keeps failing: said; the server stays up
                    say(str(exc).splitlines()[0])
        finally:
            for system in systems:
                system.close()
            for link in links:
                link.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
