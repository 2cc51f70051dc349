"""The lab's service-chaining scenario, started once the control plane is up: the dpf controller (mTLS), two
emulated DPUs (OVS + DPU agent each, uplinks p0/p1 into fabric namespaces, an HBN pod plugged through the
SFC CNI plugin), the DPU Nodes, and upstream's hbn_only interfaces and chain. It then shows packets pass
through the chain (ping and iperf3 from each fabric namespace to the HBN pod), deletes the chain and shows
them stop, and applies the chain again so the lab is left working. Then service pods attached through
Multus with addresses from a DPUServiceIPAM pool, chained to uplink p2 (`service_pods.py`). Every step is
printed.

The lab's DPU cluster is the host apiserver itself (a DPUCluster whose Secret holds the host's admin
kubeconfig): one control plane to start, the same objects and code paths as with two.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed, Pod, reap_stale
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool
from dpf.lab.controller import ControllerProcess
from dpf.lab.dpus import EmulatedDpu, cni_bin_dir
from dpf.lab.service_pods import ServicePods

NAMESPACE = "dpf-operator-system"
GROUP = "lab"
HBN_POD = "doca-hbn-ds-{i}"
READY_TIMEOUT = 60.0


class DemoError(RuntimeError):
    pass


class SfcDemo:
    def __init__(self, host: ControlPlane, workdir: Path, stack: contextlib.ExitStack,
                 say: Callable[[str], None], bfb_dir: Path | None = None) -> None:
        self.host = host
        self.workdir = workdir
        self.stack = stack
        self.say = say
        self.reader = chains.Reader(host.client)
        self.controller = ControllerProcess(host.kubeconfig, NAMESPACE, workdir / "controller", bfb_dir)
        self.bed = NetnsBed(owner="lab")
        self.dpus: list[EmulatedDpu] = []
        self.hbn: dict[str, dict[str, Pod]] = {}
        self.service_pods = ServicePods(host, self.bed, workdir / "cni-bin", workdir, NAMESPACE, GROUP, stack, say,
                                        self._apply, self._wait_ready)

    # -- what the lab runs ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._controller()
        self._dpus()
        self._chain()
        self.show_traffic(expect=True)
        self.say("deleting DPUServiceChain hbn-to-fabric (kubectl delete --wait: returns once it is gone)")
        started = time.monotonic()
        self._kubectl("delete", "dpuservicechain", "hbn-to-fabric", "-n", NAMESPACE, "--wait=true")
        self.say(f"DPUServiceChain gone after {time.monotonic() - started:.1f}s: its ServiceChains and "
                 "ServiceChainSet went first, and the agents removed the flows")
        self.show_traffic(expect=False)
        self.say("applying the chain again, so the lab is left with traffic flowing")
        self._apply(self._manifests("DPUServiceChain"))
        self._wait_ready("dpuservicechains", "hbn-to-fabric")
        self.show_traffic(expect=True, iperf=False)
        self.service_pods.start(self.dpus)

    def children(self) -> list[Child]:
        found = [self.controller.child] if self.controller.child else []
        for dpu in self.dpus:
            found += [c for c in (dpu.agent, *(dpu.ovs.children.values() if dpu.ovs else ())) if c]
        return found

    def processes(self) -> list[tuple[str, Child, Path]]:
        """(label, child, log) of each long-running process of the scenario, for the lab's supervisor."""
        found = []
        if self.controller.child:
            found.append(("dpf controller", self.controller.child, self.controller.child.log))
        for dpu in self.dpus:
            if dpu.ovs is not None:
                found += [(f"{daemon} of {dpu.name}", child, dpu.ovs.log(daemon))
                          for daemon, child in dpu.ovs.children.items()]
            if dpu.agent is not None:
                found.append((f"dpu agent {dpu.name}", dpu.agent, dpu.agent.log))
        return found

    def usage(self) -> str:
        lines = ["Service chaining (upstream's hbn_only shape) on two emulated DPUs:",
                 f"  {tool('kubectl')} get dpuserviceinterfaces,dpuservicechains -n {NAMESPACE}",
                 f"  {tool('kubectl')} get servicechains -n {NAMESPACE} -o wide"]
        for dpu in self.dpus:
            assert dpu.ovs is not None
            fabric, hbn = dpu.pods[f"{dpu.short}f0"], self.hbn[dpu.name]["p0"]
            lines += [f"  # {dpu.name}: flows, and a ping through its chain",
                      f"  OVS_RUNDIR={dpu.ovs.rundir} ovs-ofctl -O OpenFlow13 dump-flows br-sfc",
                      f"  ip netns exec {fabric.netns} ping {hbn.ip}"]
            if dpu.name in self.service_pods.pods:
                service = self.service_pods.pods[dpu.name]
                lines.append(f"  ip netns exec {self.service_pods.fabric[dpu.name].netns} ping {service.ip}"
                             f"  # service pod net1, via p2")
        lines.append(f"  {tool('kubectl')} get dpuserviceipams,network-attachment-definitions -n {NAMESPACE}")
        return "\n".join(lines)

    # -- steps ------------------------------------------------------------------------------------------------
    def _controller(self) -> None:
        self._apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        self.say("starting the dpf controller (NodeState gRPC with mTLS on a unix socket, leader of one)")
        self.stack.callback(self.controller.stop)
        self.controller.start()
        self.say(f"controller serving at {self.controller.endpoint}; log: {self.controller.workdir}/controller.log")
        self.say("registering the DPU cluster: DPUCluster 'dpu' (static) whose kubeconfig Secret points at this "
                 "apiserver")
        self._apply(chains.dpu_cluster(NAMESPACE, "dpu", self.host.kubeconfig.read_bytes()))

    def _dpus(self) -> None:
        for name in reap_stale("lab"):
            self.say(f"removed network namespace {name} left by a lab that was killed")
        self.stack.callback(self.bed.cleanup)
        bin_dir = cni_bin_dir(self.service_pods.bin_dir)
        for i in (1, 2):
            name = f"worker{i}-0000-08-00"
            dpu = EmulatedDpu(name, self.bed, self.workdir / f"dpu{i}", short=f"d{i}")
            self.dpus.append(dpu)
            self.stack.callback(dpu.stop)
            self.say(f"DPU {name}: network namespace with its own Open vSwitch (userspace datapath)")
            dpu.start_switch()
            for port in (0, 1):
                uplink = dpu.uplink(f"p{port}", f"10.100.{i}{port}.1/24", f"{dpu.short}f{port}")
                self.say(f"DPU {name}: uplink p{port} is a veth to fabric namespace {uplink.netns} ({uplink.cidr})")
            self.say(f"DPU {name}: joining the DPU cluster as Node {name} (labels {chains.GROUP_LABEL}={GROUP}, "
                     f"{chains.HBN_LABEL}=true)")
            self._apply([chains.dpu_node(name, GROUP, hbn=True)])
            tls = self.controller.issue_node_cert(name, dpu.workdir / "certs")
            self.say(f"DPU {name}: node certificate from `dpf controller issue-node-cert` in {tls.directory}")
            dpu.start_agent(self.controller.endpoint, tls)
            self.say(f"DPU {name}: DPU agent running (SFC programmer + CNI server); log: {dpu.workdir}/agent.log")
            pod = HBN_POD.format(i=i)
            self._apply(chains.hbn_pod(NAMESPACE, pod, name))
            self.hbn[name] = {
                f"p{port}": dpu.plug_pod(bin_dir, NAMESPACE, pod, f"p{port}_if", f"10.100.{i}{port}.2/24",
                                         f"{dpu.short}h{port}") for port in (0, 1)}
            self.say(f"DPU {name}: HBN pod {NAMESPACE}/{pod} plugged by the SFC CNI plugin: p0_if "
                     f"{self.hbn[name]['p0'].cidr}, p1_if {self.hbn[name]['p1'].cidr}")

    def _chain(self) -> None:
        interfaces = self._manifests("DPUServiceInterface")
        self.say("applying the hbn_only DPUServiceInterfaces: " + ", ".join(o["metadata"]["name"] for o in interfaces))
        self._apply(interfaces)
        for obj in interfaces:
            self._wait_ready("dpuserviceinterfaces", obj["metadata"]["name"])
        self.say("applying DPUServiceChain hbn-to-fabric: p0 <-> HBN p0_if, p1 <-> HBN p1_if")
        self._apply(self._manifests("DPUServiceChain"))
        self._wait_ready("dpuservicechains", "hbn-to-fabric")
        for dpu in self.dpus:
            flows = [f for f in dpu.flows() if "learn(" in f]
            self.say(f"DPU {dpu.name}: br-sfc carries {len(flows)} chain flows (one per port of each switch)")

    def show_traffic(self, expect: bool, iperf: bool = True) -> None:
        for dpu in self.dpus:
            for port in ("p0", "p1"):
                fabric, hbn = dpu.pods[f"{dpu.short}f{port[1]}"], self.hbn[dpu.name][port]
                passed = fabric.ping(hbn.ip, count=3, wait=0.5)
                what = f"DPU {dpu.name}: ping {fabric.ip} (fabric {port}) -> {hbn.ip} (HBN {port}_if)"
                if passed != expect:
                    raise DemoError(f"{what}: {'no reply' if expect else 'replies'}; expected the opposite")
                self.say(f"traffic passes: {what}: 3/3 replies" if passed else
                         f"traffic stops: {what}: no reply (no chain, br-sfc drops it)")
            if expect and iperf:
                self.say(f"traffic passes: DPU {dpu.name}: iperf3 TCP fabric p0 -> HBN p0_if: "
                         f"{self._iperf(dpu.pods[f'{dpu.short}f0'], self.hbn[dpu.name]['p0']):.2f} Gbit/s")

    # -- helpers ----------------------------------------------------------------------------------------------
    def _iperf(self, client: Pod, server: Pod) -> float:
        log = self.workdir / "iperf3.log"
        child = Child("iperf3", [tool("ip"), "netns", "exec", server.netns, tool("iperf3"), "-s", "-1", "-B",
                                 server.ip], log)
        try:
            time.sleep(0.2)  # iperf3 has no readiness signal; the client retries below anyway
            for _ in range(10):
                result = client.exec(tool("iperf3"), "-c", server.ip, "-t", "1", "-J", check=False, timeout=20)
                if result.returncode == 0:
                    return json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
                time.sleep(0.2)
            raise DemoError(f"iperf3 from {client.netns} to {server.ip} failed: {result.stdout[-300:]}")
        finally:
            child.stop()

    def _manifests(self, kind: str) -> list[dict]:
        return [o for o in chains.hbn_only(NAMESPACE, GROUP) if o["kind"] == kind]

    def _apply(self, objects: list[dict]) -> None:
        self._kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects))

    def _kubectl(self, *args: str, input: str | None = None) -> None:
        result = self.host.kubectl(*args, input=input, check=False)
        if result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        for line in result.stdout.splitlines():
            self.say(f"  kubectl: {line}")

    def _wait_ready(self, plural: str, name: str) -> None:
        started = time.monotonic()
        try:
            wait_until(lambda: self.reader.is_ready(plural, NAMESPACE, name), READY_TIMEOUT, f"{plural}/{name} Ready",
                       while_alive=self.children())
        except TimeoutError:
            found = self.reader.condition(plural, NAMESPACE, name)
            raise DemoError(f"{plural}/{name} not Ready after {READY_TIMEOUT:.0f}s: {found}") from None
        self.say(f"{plural}/{name} Ready after {time.monotonic() - started:.1f}s (every targeted DPU agent "
                 "ACKed and reported it programmed)")
