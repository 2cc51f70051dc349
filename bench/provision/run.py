#!/usr/bin/env python3
"""Provisioning at scale: N emulated DPUs, upstream's hbn_only DPUSet applied, until every DPU is Ready.

    .venv/bin/python bench/provision/run.py --dpus 1 10 100 [--per-host M] [--agent-processes K] [--record]

Per N, from scratch: a host cluster (etcd + kube-apiserver, our CRDs), a DPU cluster (its own etcd +
kube-apiserver), the dpf controller process (mTLS, `--bfb-dir`), the BFB served over HTTP, and N emulated DPUs on
ceil(N / M) emulated servers. Each server is the lab's (`python -m dpf.lab.machine`: PCI sysfs, SR-IOV, rshim,
power, in network namespaces of its own) with its real host agent (`dpf agent host`, one process per server, in the
server's namespace, mTLS to the controller, reading the BFB from the shared BFB directory as upstream's PVC). What
is real: the controller and every reconciler, both apiservers, the host agents and their flashes (the BFB + bf.cfg
streamed into each emulated rshim `boot` and checked by the emulated DPU), the host network (VFs, br-dpu), the node
effect on the host Nodes. What is simulated: the DPU's OS after boot. With `--join kwok` (default) the booted DPU
registers its Node in the DPU cluster (named from its bf.cfg) and kwok (sigs.k8s.io/kwok v0.8.0, built on demand)
plays its kubelet; there is no containerd, kubelet, OVS or DPU agent per DPU.

Host agents: one `ip netns exec <server> dpf agent host` process per server up to 10 servers; above that (or with
`--agent-processes K`) the servers' host agents share K processes (`agents.py`: one HostAgent per server, each its
own certificate, NodeState stream, sysroot and flashes, its netlink calls made in its server's namespace), as
`bench/fanout` runs DPU agents. The bench follows the DPUs with one watch (`observe.py`), not a list per poll.

Timing starts when the DPUSet is applied (the BFB is Ready and every server's BlueFields are detected before) and
ends when the last DPU is Ready. Per DPU: first seen (its ADDED event) to Ready. The goal: total / slowest single
DPU <= 1.1 (DPUs provision in parallel, none waits on another's turn); `solo` is the N=1 run's DPU, if N=1 ran too.
Controller CPU (user + system over the timed span, and as % of one core) and RSS (at the end, peak) from /proc.

`--steady S`: after the last DPU is Ready, everything keeps running S seconds more, and the host agents' CPU
(user + system of their processes and reaped children, from /proc) is taken over that span: the steady-state
cost of keeping N provisioned DPUs (their host networks re-checked, the hosts' HostInfo re-detected), reported
as host-agent CPU seconds per DPU-minute, beside the agents' CPU over the timed span.

With M DPUs on one server, a reboot of the server per DPU would power-cycle its siblings mid-install; the
servers' Nodes then carry `provisioning.dpu.nvidia.com/reboot-command: skip` (`--reboot`; the default is cycle
when M = 1).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from observe import DpuWatch  # noqa: E402 - beside this script (sys.path[0])

from dpf.lab.bed.kube import ControlPlane  # noqa: E402
from dpf.lab.bed.kwok import Kwok  # noqa: E402
from dpf.lab.bed.process import Child, wait_until  # noqa: E402
from dpf.lab.controller import ControllerProcess  # noqa: E402
from dpf.lab.dpus import AgentTLS  # noqa: E402
from dpf.lab.emulator.bfb import EmulatedBfb  # noqa: E402
from dpf.lab.emulator.host import FIRST_BUS  # noqa: E402
from dpf.lab.emulator.serve import BfbHttpServer  # noqa: E402

NAMESPACE = "bench"
BFB_FILE = "bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod.bfb"
EXAMPLE = ROOT / "lab" / "manifests" / "upstream" / "hbn_only.yaml"
GROUP, VERSION = "provisioning.dpu.nvidia.com", "v1alpha1"
REBOOT_COMMAND = "provisioning.dpu.nvidia.com/reboot-command"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds_all(pid: int) -> float:
    """User + system of `pid` and of its children it has reaped (a host agent's power commands)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


@dataclass
class Result:
    n: int
    hosts: int
    per_host: int
    join: str
    reboot: str
    workers: int
    agent_processes: int  # 0: one `dpf agent host` process per server
    total: float = 0.0
    singles: list[float] = field(default_factory=list)
    controller_cpu: float = 0.0
    controller_rss: float = 0.0
    controller_hwm: float = 0.0
    setup: float = 0.0
    in_phase: dict[str, tuple[float, float]] = field(default_factory=dict)  # phase -> (median, max) seconds
    ready: int = 0
    timed_out: float = 0.0  # the timeout, when it ended the run before every DPU was Ready
    left_in: dict[str, int] = field(default_factory=dict)  # phase -> DPUs, at the timeout
    agent_cpu: float = 0.0  # the host agents' CPU s over the timed span
    steady: float = 0.0  # seconds held after the last Ready (--steady)
    agent_cpu_steady: float = 0.0  # the host agents' CPU s over that hold
    load_steady: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the hold's start and end

    @property
    def slowest(self) -> float:
        return max(self.singles) if self.singles else float("nan")


class Server:
    """One emulated server (`dpf.lab.machine`, --kwok) and its host agent."""

    def __init__(self, name: str, dpus: int, work: Path, dpu_kubeconfig: Path, install_seconds: float,
                 totalvfs: int) -> None:
        self.name = name
        self.work = work
        self.root = work / "root"
        self.machine = Child(f"machine-{name}", [
            sys.executable, "-m", "dpf.lab.machine", str(self.root), "--name", name, "--dpus", str(dpus),
            "--owner", "pb", "--workdir", str(work / "dpus"), "--totalvfs", str(totalvfs),
            "--install-seconds", str(install_seconds), "--kwok", str(dpu_kubeconfig)], work / "machine.log")
        self.agent: Child | None = None

    @property
    def netns(self) -> str:
        return f"dpf-pb{self.machine.proc.pid}-{self.name}"

    def ready(self) -> bool:
        return (self.root / "run/emulator/control.sock").exists()

    def prepare_agent(self, node: str, controller: ControllerProcess, cidr: str) -> None:
        """The OOB bridge upstream leaves to the user, and the agent's certificate (a CLI run: in a pool)."""
        for args in (["link", "add", "br-dpu", "type", "bridge"], ["addr", "add", cidr, "dev", "br-dpu"],
                     ["link", "set", "br-dpu", "up"]):
            subprocess.run(["ip", "-n", self.netns, *args], check=True)
        controller.issue_node_cert(node, self.work / "certs", role="host")

    def start_agent(self, node: str, controller: ControllerProcess, bfb_dir: Path) -> Child:
        """From the main thread: a Child dies with the thread that started it (PR_SET_PDEATHSIG)."""
        tls = AgentTLS(self.work / "certs")
        self.agent = Child(f"host-agent-{node}", [
            "ip", "netns", "exec", self.netns, sys.executable, "-m", "dpf.cli", "agent", "host", "--node", node,
            "--controller", controller.endpoint, *tls.flags(), "--state-dir", str(self.work / "state"),
            "--sysroot", str(self.root), "--bfb-dir", str(bfb_dir), "--log-level", "warning",
            "--power-command", str(self.root / "usr/bin/ipmitool")], self.work / "host-agent.log")
        return self.agent

    def agent_entry(self, node: str) -> dict[str, str]:
        """This server's host agent for `agents.py` (the same flags `start_agent` passes)."""
        tls = AgentTLS(self.work / "certs")
        return {"node": node, "netns": self.netns, "sysroot": str(self.root), "state_dir": str(self.work / "state"),
                "ca": str(tls.directory / "ca.crt"), "cert": str(tls.directory / "tls.crt"),
                "key": str(tls.directory / "tls.key"), "power_command": str(self.root / "usr/bin/ipmitool")}


def start_agent_processes(servers: list[Server], processes: int, controller: ControllerProcess, bfb_dir: Path,
                          work: Path) -> list[Child]:
    """The servers' host agents spread over `processes` processes of `agents.py` (round robin), in the root
    network namespace (each agent enters its server's for netlink); from the main thread, as `start_agent`."""
    children = []
    for k in range(processes):
        share = [(i, s) for i, s in enumerate(servers) if i % processes == k]
        if not share:
            continue
        spec = work / f"host-agents-{k}.json"
        spec.write_text(json.dumps([s.agent_entry(f"worker-{i}") for i, s in share], indent=1))
        children.append(Child(f"host-agents-{k}", [
            sys.executable, str(Path(__file__).with_name("agents.py")), "--controller", controller.endpoint,
            "--bfb-dir", str(bfb_dir), "--spec", str(spec), "--log-level", "warning"], work / f"host-agents-{k}.log"))
    return children


def start_controller(controller: ControllerProcess, log_level: str, workers: int) -> None:
    """`ControllerProcess.start` with `--workers` (concurrent reconciles)."""
    controller.workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "dpf.cli", "controller", "run", "--kubeconfig", str(controller.kubeconfig),
            "--namespace", NAMESPACE, "--watch-namespace", NAMESPACE, "--listen", controller.endpoint,
            "--health-listen", "127.0.0.1:0", "--no-leader-elect", "--log-level", log_level,
            "--bfb-dir", str(controller.bfb_dir), "--workers", str(workers)]
    controller.child = Child("dpf-controller", argv, controller.workdir / "controller.log")
    wait_until(controller.socket.exists, 30, "the controller's NodeState socket", while_alive=[controller.child])


def hbn(kind: str) -> dict[str, Any]:
    doc = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == kind)
    doc["metadata"]["namespace"] = NAMESPACE
    return doc


def profile_controller(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the controller (collapsed stacks into `out`) until SIGINT; None without py-spy."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        say(f"no py-spy beside {sys.executable}: the controller is not profiled")
        return None
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "20", "--format", "raw",
                             "--output", str(out), "--nonblocking"], stdout=log, stderr=subprocess.STDOUT)


def run_one(n: int, per_host: int, join: str, reboot: str, bfb_mib: int, install_seconds: float, vfs: int,
            timeout: float, workers: int, agent_processes: int, profile: bool, work: Path,
            steady: float = 0.0) -> Result:
    hosts = math.ceil(n / per_host)
    result = Result(n, hosts, per_host, join, reboot, workers, agent_processes)
    setup_started = time.monotonic()
    servers: list[Server] = []
    agent_children: list[Child] = []
    controller: ControllerProcess | None = None
    watch: DpuWatch | None = None
    spy: subprocess.Popen[bytes] | None = None
    with ControlPlane(work / "host-kube", name=f"pv{n}") as kube, \
            ControlPlane(work / "dpu-kube", name=f"pvd{n}") as dpu_kube, \
            Kwok(dpu_kube.kubeconfig, work / "kwok.log"), \
            BfbHttpServer({BFB_FILE: EmulatedBfb("bf-bundle-2.9.1-30", bfb_mib << 20, seed=7)}) as files:
        try:
            say(f"N={n}: host and DPU clusters up; {hosts} servers x {per_host} DPUs")
            core = k8s.CoreV1Api(kube.client)
            custom = k8s.CustomObjectsApi(kube.client)
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
            bfb_dir = work / "bfb"
            bfb_dir.mkdir()
            controller = ControllerProcess(kube.kubeconfig, NAMESPACE, work / "controller", bfb_dir)
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dpu-admin", "namespace": NAMESPACE},
                 "data": {"admin.conf": base64.b64encode(dpu_kube.kubeconfig.read_bytes()).decode()}},
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DPUCluster",
                 "metadata": {"name": "dpu", "namespace": NAMESPACE},
                 "spec": {"type": "static", "maxNodes": min(n + 10, 1000),  # the CRD's maximum is 1000
                          "version": "v1.37.2", "kubeconfig": "dpu-admin"}}]))
            start_controller(controller, "warning" if n > 10 else "info", workers)
            annotations = {REBOOT_COMMAND: "skip"} if reboot == "skip" else None
            for i in range(hosts):
                core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=f"worker-{i}", annotations=annotations)))
                count = min(per_host, n - i * per_host)
                servers.append(Server(f"s{i}", count, work / "servers" / f"s{i}", dpu_kube.kubeconfig,
                                      install_seconds, max(vfs, 1) * 2))
            wait_until(lambda: all(s.ready() for s in servers), 120 + 2 * hosts, "the emulated servers",
                       while_alive=[s.machine for s in servers])
            with concurrent.futures.ThreadPoolExecutor(4) as pool:  # certificates are issued by a CLI each
                list(pool.map(lambda i: servers[i].prepare_agent(f"worker-{i}", controller,
                                                                 f"192.0.2.{10 + i % 200}/24"), range(hosts)))
            if agent_processes:
                agent_children = start_agent_processes(servers, agent_processes, controller, bfb_dir, work)
            else:
                for i, server in enumerate(servers):
                    agent_children.append(server.start_agent(f"worker-{i}", controller, bfb_dir))
            say(f"N={n}: {hosts} host agents in {len(agent_children)} processes")
            flavor, bfb = hbn("DPUFlavor"), hbn("BFB")
            flavor["spec"]["nvconfig"][0]["parameters"] = [
                p if not p.startswith("NUM_OF_VFS=") else f"NUM_OF_VFS={vfs}"
                for p in flavor["spec"]["nvconfig"][0]["parameters"]]
            bfb["spec"]["url"] = files.url(BFB_FILE)
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([bfb, flavor]))

            def detected() -> bool:
                nodes = core.list_node(label_selector="feature.node.kubernetes.io/dpu-enabled=true").items
                return len(nodes) == hosts

            alive = [controller.child, *[s.machine for s in servers], *agent_children]
            wait_until(detected, 120 + hosts, "every server's BlueFields detected", while_alive=alive)
            wait_until(lambda: (custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "bfbs", "bf-bundle")
                                .get("status") or {}).get("phase") == "Ready", 120, "the BFB Ready",
                       while_alive=alive)
            result.setup = time.monotonic() - setup_started
            say(f"N={n}: {hosts} servers detected, BFB ready after {result.setup:.0f}s of setup; applying the DPUSet")

            assert controller.child is not None
            pid = controller.child.proc.pid
            watch = DpuWatch(kube.kubeconfig, GROUP, VERSION, NAMESPACE, say).start()
            if profile:
                spy = profile_controller(pid, work / "controller-profile.txt")
            cpu0 = cpu_seconds(pid)
            agent_pids = [child.proc.pid for child in agent_children]
            agents0 = sum(cpu_seconds_all(p) for p in agent_pids)
            started = time.monotonic()
            dpuset = hbn("DPUSet")
            if per_host > 1:  # without a dpuSelector a DPUSet takes DPU 0 of each node (as upstream); every
                # server has the same PCI layout, so one selector names them all
                dpuset["spec"]["dpuSelector"] = {
                    f"feature.node.kubernetes.io/dpu-{i}-pci-address": f"0000-{FIRST_BUS + i:02x}-00"
                    for i in range(per_host)}
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(dpuset))
            last_report = started
            while len(watch.ready_at) < n:
                time.sleep(1.0)
                now = time.monotonic()
                if now - started > timeout:  # recorded as it stands: how far it got, and in which phases
                    result.timed_out = timeout
                    result.left_in = watch.phase_counts()
                    say(f"N={n}: TIMEOUT: {len(watch.ready_at)} of {n} DPUs Ready after {timeout:.0f}s; phases "
                        f"{result.left_in}")
                    break
                for child in alive:
                    if child is not None and not child.alive():
                        raise RuntimeError(f"{child.name} exited; see {child.log}")
                if now - last_report >= (10 if n <= 100 else 30):
                    last_report = now
                    say(f"N={n}: after {now - started:.0f}s {len(watch.first_seen)} DPUs, {len(watch.ready_at)} "
                        f"Ready; phases {watch.phase_counts()}; controller {cpu_seconds(pid) - cpu0:.0f} CPU s, "
                        f"RSS {status_mb(pid, 'VmRSS'):.0f} MB; load {os.getloadavg()[0]:.1f}"
                        + (f"; watch broke {watch.failures}x" if watch.failures else ""))
            ready_at, first_seen, transitions = watch.ready_at, watch.first_seen, watch.transitions
            result.ready = len(ready_at)
            result.total = (max(ready_at.values()) if ready_at else now) - started
            result.singles = [ready_at[name] - first_seen[name] for name in ready_at]
            result.controller_cpu = cpu_seconds(pid) - cpu0
            result.agent_cpu = sum(cpu_seconds_all(p) for p in agent_pids) - agents0
            result.controller_rss = status_mb(pid, "VmRSS")
            result.controller_hwm = status_mb(pid, "VmHWM")
            spent: dict[str, list[float]] = {}
            for seen in transitions.values():
                for (phase, at), (_, until) in itertools.pairwise(seen):
                    spent.setdefault(phase or "(none)", []).append(until - at)
            result.in_phase = {phase: (statistics.median(v), max(v)) for phase, v in spent.items()}
            say(f"N={n}: {result.ready} Ready, the last after {result.total:.1f}s (slowest single "
                f"{result.slowest:.1f}s); seconds in each phase (median / max over DPUs, watched): "
                f"{phase_line(result)}")
            if steady and not result.timed_out:
                hold(result, steady, agent_pids, alive)
            return result
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            if watch is not None:
                watch.stop()
            for child in agent_children:
                child.stop()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:  # a server takes a while to tear down
                list(pool.map(lambda s: s.machine.stop(timeout=120), servers))
            if controller is not None:
                controller.stop()


def hold(result: Result, seconds: float, agent_pids: list[int], alive: list[Child | None]) -> None:
    """Everything running `seconds` more, the host agents' CPU taken over that span."""
    say(f"N={result.n}: holding {seconds:.0f}s with every DPU Ready (host agents' steady-state CPU)")
    load0 = os.getloadavg()[0]
    cpu0 = sum(cpu_seconds_all(p) for p in agent_pids)
    started = time.monotonic()
    while (left := seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(left, 1.0))
        for child in alive:
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited; see {child.log}")
    result.steady = time.monotonic() - started
    result.agent_cpu_steady = sum(cpu_seconds_all(p) for p in agent_pids) - cpu0
    result.load_steady = (load0, os.getloadavg()[0])
    say(f"N={result.n}: steady {result.steady:.0f}s: host agents {result.agent_cpu_steady:.1f} CPU s "
        f"({steady_per_dpu_minute(result):.3f} CPU s per DPU-minute); load {load0:.1f} -> "
        f"{result.load_steady[1]:.1f}")


def steady_per_dpu_minute(r: Result) -> float:
    return r.agent_cpu_steady / (r.n * r.steady / 60) if r.steady else math.nan


def phase_line(r: Result) -> str:
    return ", ".join(f"{phase} {med:.1f}/{worst:.1f}" for phase, (med, worst) in r.in_phase.items())


def table(results: list[Result]) -> str:
    solo = next((r.slowest for r in results if r.n == 1), None)
    lines = ["| N | servers x DPUs | host agent processes | DPU nodes | reboot | controller workers | total s | "
             "slowest single s | median single s | total / slowest | total / solo | controller CPU s (% of a core) | "
             "controller RSS MB (peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        vs_solo = f"{r.total / solo:.2f}" if solo else "-"
        agents = f"{r.agent_processes} (multiplexed)" if r.agent_processes else f"{r.hosts} (one per server)"
        total = f"{r.total:.1f}" if not r.timed_out else f"timeout {r.timed_out:.0f} ({r.ready} of {r.n} Ready)"
        median = statistics.median(r.singles) if r.singles else math.nan
        lines.append(f"| {r.n} | {r.hosts} x {r.per_host} | {agents} | {r.join} | {r.reboot} | {r.workers} | "
                     f"{total} | {r.slowest:.1f} | {median:.1f} | {r.total / r.slowest:.2f} | {vs_solo} | "
                     f"{r.controller_cpu:.1f} ({100 * r.controller_cpu / r.total:.0f} %) | "
                     f"{r.controller_rss:.0f} ({r.controller_hwm:.0f}) |")
    lines.append("")
    lines.extend(f"- N={r.n}, {r.workers} workers, seconds in each phase (median / max over DPUs, watched): "
                 f"{phase_line(r)}" + (f"; at the timeout: {r.left_in}" if r.timed_out else "") for r in results)
    lines.extend(f"- N={r.n}, host agents: {r.agent_cpu:.1f} CPU s over the timed span"
                 + (f"; {r.agent_cpu_steady:.1f} CPU s over {r.steady:.0f} s held after the last Ready = "
                    f"{steady_per_dpu_minute(r):.3f} CPU s per DPU-minute (load average {r.load_steady[0]:.1f} -> "
                    f"{r.load_steady[1]:.1f})" if r.steady else "") for r in results)
    return "\n".join(lines)


def record(text: str, argv: list[str]) -> None:
    results = ROOT / "bench" / "RESULTS.md"
    body = results.read_text()
    heading = "## provision\n"
    section = (f"{heading}\n`.venv/bin/python bench/provision/run.py {' '.join(argv)}` on {platform.node()} "
               f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')} UTC, load average at the end "
               f"{os.getloadavg()[0]:.1f}.\n\n{text}\n")
    if heading in body:
        head, rest = body.split(heading, 1)
        nxt = rest.find("\n## ")
        body = head + section + (rest[nxt:] if nxt >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    results.write_text(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dpus", type=int, nargs="+", default=[1, 10], help="N per run")
    parser.add_argument("--per-host", type=int, default=0,
                        help="DPUs per emulated server (default: 1 up to N=10, 10 up to 100, else 25)")
    parser.add_argument("--join", choices=["kwok"], default="kwok", help="how a booted DPU's node is simulated")
    parser.add_argument("--reboot", choices=["cycle", "skip"], help="the servers' reboot-command (see above)")
    parser.add_argument("--bfb-mib", type=int, default=4, help="size of the emulated BFB")
    parser.add_argument("--install-seconds", type=float, default=0.5, help="emulated install time after the stream")
    parser.add_argument("--vfs", type=int, default=2, help="NUM_OF_VFS in the flavor (upstream's hbn: 46)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per N, from the DPUSet to all Ready")
    parser.add_argument("--record", action="store_true", help="write the table into bench/RESULTS.md")
    parser.add_argument("--workers", type=int, nargs="+", default=[4],
                        help="the controller's --workers (concurrent reconciles); every N runs with each")
    parser.add_argument("--agent-processes", type=int, metavar="K",
                        help="run the servers' host agents in K processes (bench/provision/agents.py) instead of "
                             "one `dpf agent host` per server (0); default 0 up to 10 servers, else 4")
    parser.add_argument("--profile", action="store_true",
                        help="sample the controller with py-spy over the timed span (<work>/controller-profile.txt)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work under DIR/<N> and keep it (logs)")
    parser.add_argument("--steady", type=float, default=0.0, metavar="S",
                        help="after the last Ready, hold S seconds and take the host agents' CPU over them (their "
                             "steady-state cost: CPU s per DPU-minute)")
    args = parser.parse_args()
    results = []
    for n, workers in itertools.product(args.dpus, args.workers):
        per_host = args.per_host or (1 if n <= 10 else 10 if n <= 100 else 25)
        reboot = args.reboot or ("cycle" if per_host == 1 else "skip")
        hosts = math.ceil(n / per_host)
        agent_processes = args.agent_processes if args.agent_processes is not None else (0 if hosts <= 10 else 4)
        with tempfile.TemporaryDirectory(prefix=f"dpf-bench-provision-{n}-") as tmp:
            work = Path(tmp) if args.keep is None else args.keep / f"{n}-w{workers}"
            results.append(run_one(n, per_host, args.join, reboot, args.bfb_mib, args.install_seconds, args.vfs,
                                   args.timeout, workers, agent_processes, args.profile, work, args.steady))
        print(table(results), flush=True)
    text = table(results)
    if args.record:
        record(text, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
