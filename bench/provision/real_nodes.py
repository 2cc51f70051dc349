#!/usr/bin/env python3
"""Provisioning with a real kubelet per DPU: upstream's hbn_only DPUSet applied, until every DPU is Ready.

    sudo .venv/bin/python bench/provision/real_nodes.py [--hosts 10] [--per-host 1] [--bfb-mib 4] [--keep DIR]

The lab's own provisioning path (`lab/provision.py` `Provisioning`, the code `./dev lab` runs), without the lab's
service-chaining demo and rolling update: a host cluster (etcd + kube-apiserver + kube-controller-manager, our
CRDs), a DPU cluster that is a control plane of its own (kube-apiserver with bootstrap tokens and the Node
authorizer, controller-manager signing and approving kubelet client CSRs, scheduler) on a node-network bridge, the
dpf controller process (mTLS, its default reconcile workers), the BFB served over HTTP, and `--hosts` emulated
servers (`python -m dpf.lab.machine`: PCI sysfs with SR-IOV, rshim, power) of `--per-host` BlueField-3 each, with
a real `dpf agent host` per server. Upstream's hbn_only BFB, DPUFlavor and DPUSet (`lab/manifests/
provisioning.yaml`, as the lab applies them). Each booted DPU runs what its bf.cfg says (`lab/dpu_os.py`): its
files, Open vSwitch and the flavor's OVS script, then `kubeadm join` as kubeadm does it (`lab/bed/kubelet.py`:
cluster-info discovery checked against the token and CA hash, a bootstrap kubeconfig, a real containerd + kubelet
in the DPU's network namespace; the kubelet's serving CSR approved by the dpf controller), then its DPU agent.

Before the clock starts, as in `bench/provision/run.py`: the BFB and DPUFlavor are applied and the BFB is Ready
(downloaded by the controller), and every server's BlueFields are detected. The clock starts when the DPUSet is
applied and stops when every DPU's phase is Ready (the DPU's Ready condition True, which needs its Node Ready in
the DPU cluster; checked on every DPU afterwards). Per DPU: first seen (polled every 0.5 s, phases from the
controller's PhaseChanged Events) to Ready. The goal: total / slowest single DPU <= 1.1 (no DPU waits for
another's turn). Controller CPU (user + system over the timed span) and RSS (at Ready, peak) from /proc; the
memory of each DPU's processes (kubelet, containerd, OVS, DPU agent: the sum of their RSS, and of their PSS, which
counts a page shared by several processes once) once every DPU agent serves; the load average at start and end.

Prints every phase change of every DPU as the lab does, then a Markdown row. Needs root (network namespaces,
kubelets). Everything it starts is stopped, and its namespaces and bridge removed, on exit, SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dpf.lab import chains  # noqa: E402
from dpf.lab.bed.kube import ControlPlane  # noqa: E402
from dpf.lab.bed.process import Child, descendants, wait_until  # noqa: E402
from dpf.lab.controller import ControllerProcess  # noqa: E402
from dpf.lab.provision import (  # noqa: E402
    BFB_FILE,
    GROUP,
    NAMESPACE,
    NFD,
    PROVISIONING,
    Provisioning,
    provisioning_manifests,
)

TICKS = os.sysconf("SC_CLK_TCK")
SETUP_TIMEOUT = 300.0
DPU_PARTS = ("kubelet", "containerd", "OVS", "DPU agent")
"""What each booted DPU runs, as the memory columns name it."""


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_kib(pid: int, name: str, key: str) -> int:
    """`key` (kB) from /proc/<pid>/<name>; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_used_mib() -> float:
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def part_of(pid: int, comm: str) -> str | None:
    """Which of a DPU's parts a process of an emulated server is (None: the server itself, wrappers)."""
    if comm == "kubelet":
        return "kubelet"
    if comm.startswith("containerd"):  # containerd and any shim
        return "containerd"
    if comm in ("ovsdb-server", "ovs-vswitchd"):
        return "OVS"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    agent = b"dpf.cli" in argv and any(pair == (b"agent", b"dpu") for pair in itertools.pairwise(argv))
    return "DPU agent" if agent else None


@dataclass
class Memory:
    """RSS and PSS (MiB) and process count of each DPU part, over every server."""

    rss: dict[str, float] = field(default_factory=dict)
    pss: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, server_pids: list[int]) -> Memory:
        memory = cls({p: 0.0 for p in DPU_PARTS}, {p: 0.0 for p in DPU_PARTS}, {p: 0 for p in DPU_PARTS})
        for server in server_pids:
            for pid, comm in descendants(server).items():
                part = part_of(pid, comm)
                if part is None:
                    continue
                memory.rss[part] += proc_kib(pid, "status", "VmRSS") / 1024
                memory.pss[part] += proc_kib(pid, "smaps_rollup", "Pss") / 1024
                memory.count[part] += 1
        return memory

    def describe(self, part: str) -> str:
        return f"{part} x{self.count[part]}: {self.rss[part]:.0f} MiB RSS ({self.pss[part]:.0f} MiB PSS)"


@dataclass
class Result:
    hosts: int
    per_host: int
    total: float = 0.0
    singles: list[float] = field(default_factory=list)
    in_phase: dict[str, tuple[float, float]] = field(default_factory=dict)
    controller_cpu: float = 0.0
    controller_rss: float = 0.0
    controller_hwm: float = 0.0
    memory: Memory = field(default_factory=Memory)
    machine_before: float = 0.0
    machine_after: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0

    @property
    def n(self) -> int:
        return self.hosts * self.per_host

    @property
    def slowest(self) -> float:
        return max(self.singles)

    def row(self) -> str:
        kubelets = self.memory.rss["kubelet"] + self.memory.rss["containerd"]
        kubelets_pss = self.memory.pss["kubelet"] + self.memory.pss["containerd"]
        return (f"| {self.n} | {self.hosts} x {self.per_host} | kubelet | {self.total:.1f} | {self.slowest:.1f} | "
                f"{statistics.median(self.singles):.1f} | {self.total / self.slowest:.2f} | "
                f"{self.controller_cpu:.1f} ({100 * self.controller_cpu / self.total:.0f} %) | "
                f"{self.controller_rss:.0f} ({self.controller_hwm:.0f}) | {kubelets:.0f} ({kubelets_pss:.0f}) | "
                f"{self.load_before:.1f} → {self.load_after:.1f} |")


HEADER = ("| N | servers x DPUs | DPU nodes | total s | slowest single s | median single s | total / slowest | "
          "controller CPU s (% of a core) | controller RSS MB (peak) | kubelets + containerds RSS MiB (PSS) | "
          "load average (1 min) |\n|---|---|---|---|---|---|---|---|---|---|---|")


def phase_line(result: Result) -> str:
    return ", ".join(f"{phase} {med:.1f}/{worst:.1f}" for phase, (med, worst) in result.in_phase.items())


def report(result: Result) -> str:
    memory = result.memory
    return "\n".join([
        HEADER, result.row(), "",
        f"- seconds in each phase (median / max over DPUs, polled): {phase_line(result)}",
        f"- per-DPU processes once every DPU agent serves: {'; '.join(memory.describe(p) for p in DPU_PARTS)}; "
        f"all {sum(memory.rss.values()):.0f} MiB RSS ({sum(memory.pss.values()):.0f} MiB PSS), "
        f"{sum(memory.pss.values()) / result.n:.0f} MiB PSS per DPU",
        f"- machine memory in use (MemTotal - MemAvailable, shared with other work): "
        f"{result.machine_before / 1024:.1f} GiB before the clusters started, {result.machine_after / 1024:.1f} "
        "GiB at the end"])


class Bench:
    def __init__(self, work: Path, hosts: int, per_host: int, bfb_mib: int, flash_mib_s: float,
                 timeout: float, stack: contextlib.ExitStack) -> None:
        self.work = work
        self.stack = stack
        self.timeout = timeout
        self.result = Result(hosts, per_host)
        self.host = ControlPlane(work / "host", name="dpf-bench-rn")
        self._provisioning = (hosts, per_host, bfb_mib << 20, flash_mib_s * (1 << 20) or None)
        self.provisioning: Provisioning
        self.controller: ControllerProcess | None = None
        self._started = 0.0
        self._cpu0 = 0.0

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """As the lab applies (`lab/lab.py` `Lab._apply`): server-side, printed."""
        done = self.host.kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects), check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl apply failed: {done.stderr.strip()}")
        for line in done.stdout.splitlines():
            say(f"  kubectl: {line}")

    def run(self) -> Result:
        result = self.result
        result.machine_before, result.load_before = machine_used_mib(), os.getloadavg()[0]
        say(f"starting the host cluster (load average {result.load_before:.1f})")
        self.stack.callback(self.host.stop)
        self.host.start()
        hosts, per_host, bfb_size, flash_rate = self._provisioning
        provisioning = self.provisioning = Provisioning(self.host, self.work, self.stack, say, hosts, per_host,
                                                        bfb_size, flash_rate)
        self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        provisioning.start_dpu_cluster()
        self.controller = ControllerProcess(self.host.kubeconfig, NAMESPACE, self.work / "controller",
                                            provisioning.bfb_dir)
        provisioning.bfb_dir.mkdir(parents=True, exist_ok=True)
        self.stack.callback(self.controller.stop)
        self.controller.start(startup_timeout=SETUP_TIMEOUT)  # its imports alone take 30 s on a loaded machine
        say(f"controller serving at {self.controller.endpoint}; log: {self.controller.workdir}/controller.log")
        provisioning.register_dpu_cluster(self.apply)
        provisioning.start_servers(self.controller)
        self._prepare()
        provisioning.provision(self._timed_apply, on_ready=self._on_ready, timeout=self.timeout)
        self._check_ready()
        result.memory = Memory.of([server.machine.pid for server in provisioning.servers])
        result.machine_after, result.load_after = machine_used_mib(), os.getloadavg()[0]
        self._timings()
        return result

    def _prepare(self) -> None:
        """BFB and flavor applied, the BFB Ready and every server's BlueFields detected, before the clock."""
        provisioning = self.provisioning
        files = provisioning.serve_bfbs()
        docs = provisioning_manifests(NAMESPACE, files.url(BFB_FILE), GROUP, sorted(provisioning.servers[0].dpus))
        say("before the clock: upstream's BFB and DPUFlavor applied; waiting for the BFB Ready and every server's "
            "BlueFields detected")
        self.apply([d for d in docs if d["kind"] != "DPUSet"])
        bfb = next(d["metadata"]["name"] for d in docs if d["kind"] == "BFB")
        custom = k8s.CustomObjectsApi(self.host.client)
        core = k8s.CoreV1Api(self.host.client)
        alive = self._alive()

        def bfb_ready() -> bool:
            obj = cast(dict, custom.get_namespaced_custom_object(*PROVISIONING, NAMESPACE, "bfbs", bfb))
            return (obj.get("status") or {}).get("phase") == "Ready"

        def detected() -> bool:
            return len(core.list_node(label_selector=f"{NFD}dpu-enabled=true").items) == provisioning.hosts

        wait_until(bfb_ready, SETUP_TIMEOUT, f"BFB {bfb} Ready", interval=0.2, while_alive=alive)
        wait_until(detected, SETUP_TIMEOUT, "every server's BlueFields detected", interval=0.2, while_alive=alive)
        say(f"BFB {bfb} Ready and {provisioning.hosts} servers' BlueFields detected; the clock starts with the "
            "DPUSet")

    def _controller(self) -> Child:
        assert self.controller is not None
        assert self.controller.child is not None
        return self.controller.child

    def _alive(self) -> list[Any]:
        return [self._controller(), *self.host.children,
                *[s.machine for s in self.provisioning.servers], *[s.agent for s in self.provisioning.servers]]

    def _timed_apply(self, objects: list[dict[str, Any]]) -> None:
        """`Provisioning.provision` applies the DPUSet (its clock starts) through this."""
        self._cpu0 = cpu_seconds(self._controller().pid)
        self._started = time.monotonic()
        self.apply(objects)

    def _on_ready(self) -> None:
        pid, result = self._controller().pid, self.result
        result.controller_cpu = cpu_seconds(pid) - self._cpu0
        result.controller_rss = proc_kib(pid, "status", "VmRSS") / 1024
        result.controller_hwm = proc_kib(pid, "status", "VmHWM") / 1024
        say(f"all Ready; controller CPU {result.controller_cpu:.1f}s since the DPUSet; now waiting for each DPU's "
            "agent to serve (not timed)")

    def _check_ready(self) -> None:
        """Every DPU's Ready condition True, and its Node Ready in the DPU cluster (what the phase stands for)."""
        assert self.provisioning.cluster is not None
        custom = k8s.CustomObjectsApi(self.host.client)
        ready_nodes = {n.metadata.name for n in k8s.CoreV1Api(self.provisioning.cluster.client).list_node().items
                       if n.metadata and n.status and any(c.type == "Ready" and c.status == "True"
                                                          for c in n.status.conditions or ())}
        listing = cast(dict, custom.list_namespaced_custom_object(*PROVISIONING, NAMESPACE, "dpus"))
        for dpu in listing["items"]:
            name = dpu["metadata"]["name"]
            conditions = {c["type"]: c["status"] for c in (dpu.get("status") or {}).get("conditions") or ()}
            node_ready = name in ready_nodes
            if conditions.get("Ready") != "True" or not node_ready:
                raise RuntimeError(f"DPU {name}: Ready condition {conditions.get('Ready')}, Node in the DPU cluster "
                                   f"{'Ready' if node_ready else 'missing or not Ready'}")
        say(f"checked: {len(listing['items'])} DPUs, {len(ready_nodes)} Nodes Ready in the DPU cluster; every DPU's "
            "Ready condition True and its Node Ready")

    def _timings(self) -> None:
        result, views = self.result, list(self.provisioning.dpus.values())
        assert self.provisioning.ready_seconds is not None
        result.total = self.provisioning.ready_seconds
        result.singles = [v.phases[-1][1] - v.phases[0][1] for v in views]
        spent: dict[str, list[float]] = {}
        for view in views:
            for (phase, at), (_, until) in itertools.pairwise(view.phases):
                spent.setdefault(phase, []).append(until - at)
        result.in_phase = {phase: (statistics.median(v), max(v)) for phase, v in spent.items()}


def stop_on_signals(stack: contextlib.ExitStack) -> None:
    """SIGTERM unwinds like Ctrl-C, so the stack removes namespaces and bridges (the lab does the same)."""
    me = os.getpid()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != me:  # a pyroute2 fork: die as without this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous: Callable[..., Any] | int | None = signal.signal(sig, handler)
        stack.callback(signal.signal, sig, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10, help="emulated servers (default 10)")
    parser.add_argument("--per-host", type=int, default=1, help="BlueFields per server, each a DPU (default 1)")
    parser.add_argument("--bfb-mib", type=int, default=4,
                        help="size of the emulated BFB (default 4, as bench/provision/run.py; the lab's is 256)")
    parser.add_argument("--flash-mib-s", type=float, default=0,
                        help="MiB/s each emulated rshim accepts (default 0: as fast as it can; the lab's is 64)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds from the DPUSet to all Ready")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (new or empty) and keep it (logs); default: a temp dir")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: not empty (a cluster's state from an earlier run would be reused)")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, kubelets, Open vSwitch)")
    n = args.hosts * args.per_host
    say(f"N={n}: {args.hosts} servers x {args.per_host} DPUs, each DPU joining with a real containerd + kubelet, "
        f"on {platform.node()} ({os.cpu_count()} cores)")
    with contextlib.ExitStack() as outer:
        work = args.keep or Path(outer.enter_context(tempfile.TemporaryDirectory(prefix="dpf-bench-realnodes-")))
        work.mkdir(parents=True, exist_ok=True)
        stop_on_signals(outer)
        with contextlib.ExitStack() as stack:
            result = Bench(work, args.hosts, args.per_host, args.bfb_mib, args.flash_mib_s, args.timeout,
                           stack).run()
            say(f"N={n}: all Ready in {result.total:.1f}s (slowest single {result.slowest:.1f}s); stopping")
            stopping = time.monotonic()
        say(f"stopped everything in {time.monotonic() - stopping:.1f}s")
    print(report(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
