"""The lab's service-chaining scenario, on the DPUs the lab provisioned (`provision.py`): each DPU's OS runs its
Open vSwitch and its DPU agent (SFC programmer + CNI server) and its Node joined the DPU cluster with the labels
the chains select. The lab wires uplinks p0/p1 of each DPU to fabric namespaces (the cables), applies upstream's
hbn_only interfaces and DPUService doca-hbn (`hbn_service.py`: a Helm release whose DaemonSet runs an HBN pod on every
DPU, p0_if/p1_if attached by Multus through our CNI plugin), then the hbn_only chain. It shows packets pass through
the chain (ping and iperf3 from each fabric namespace to the HBN pod), deletes the chain and shows them stop, and
applies the chain again so the lab is left working. Then service pods attached through Multus with addresses from a
DPUServiceIPAM pool, chained to uplink p2 (`service_pods.py`). Every step is printed.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
from dpf.lab.dpus import EmulatedDpu
from dpf.lab.hbn_service import HbnService, addresses, fabric_cidr
from dpf.lab.provision import GROUP, NAMESPACE, DpuView
from dpf.lab.service_pods import ServicePods

READY_TIMEOUT = 60.0


class DemoError(RuntimeError):
    pass


class SfcDemo:
    def __init__(self, host: ControlPlane, dpu_cluster: ControlPlane, controller: ControllerProcess,
                 provisioned: list[DpuView], workdir: Path, stack: contextlib.ExitStack,
                 say: Callable[[str], None], watched: Callable[[], list[Child]] = list) -> None:
        self.host = host
        self.dpu_cluster = dpu_cluster
        self.workdir = workdir
        self.stack = stack
        self.say = say
        self.reader = chains.Reader(host.client)
        self.controller = controller
        self.provisioned = provisioned
        self._watched = watched
        self.bed = NetnsBed(owner="lab")
        self.dpus: list[EmulatedDpu] = []
        self.hbn = HbnService(dpu_cluster, NAMESPACE, GROUP, say, self._apply, self._apply_dpu, self._wait_ready)
        self.hbn_ip = {port: str(ipaddress.ip_interface(cidr).ip) for port, cidr in addresses().items()}
        self.service_pods = ServicePods(dpu_cluster, NAMESPACE, GROUP, say, self._apply, self._apply_dpu,
                                        self._wait_ready)

    # -- what the lab runs ----------------------------------------------------------------------------------
    def start(self) -> None:
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
        return [c for c in (self.controller.child, *self._watched()) if c]

    def usage(self) -> str:
        lines = [f"Service chaining (upstream's hbn_only shape) on the {len(self.dpus)} provisioned DPUs:",
                 f"  {tool('kubectl')} get dpuserviceinterfaces,dpuservicechains -n {NAMESPACE}",
                 f"  KUBECONFIG={self.dpu_cluster.kubeconfig} {tool('kubectl')} get servicechains -n {NAMESPACE} "
                 "-o wide    # in the DPU cluster"]
        for dpu in self.dpus:
            assert dpu.ovs is not None
            fabric = dpu.pods[f"{dpu.short}f0"]
            lines += [f"  # {dpu.name}: flows, and a ping through its chain",
                      f"  OVS_RUNDIR={dpu.ovs.rundir} ovs-ofctl -O OpenFlow13 dump-flows br-sfc",
                      f"  ip netns exec {fabric.netns} ping {self.hbn_ip['p0']}  # HBN pod p0_if, via p0"]
            if dpu.name in self.service_pods.pods:
                service = self.service_pods.pods[dpu.name]
                lines.append(f"  ip netns exec {self.service_pods.fabric[dpu.name].netns} ping {service.ip}"
                             f"  # service pod net1, via p2")
        lines.append(f"  {tool('kubectl')} get dpuservices,dpuserviceipams -n {NAMESPACE}"
                     "    # DPUServices doca-hbn and the service pods' (a Helm release each per DPU cluster)")
        lines.append(f"  KUBECONFIG={self.dpu_cluster.kubeconfig} {tool('kubectl')} get pods,"
                     f"network-attachment-definitions -n {NAMESPACE} -o wide")
        return "\n".join(lines)

    # -- steps ------------------------------------------------------------------------------------------------
    def _dpus(self) -> None:
        for name in reap_stale("lab"):
            self.say(f"removed network namespace {name} left by a lab that was killed")
        self.stack.callback(self.bed.cleanup)
        self._apply_dpu([{"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": {"name": "default", "namespace": NAMESPACE}}])
        for i, view in enumerate(self.provisioned, start=1):
            name = view.name
            dpu = EmulatedDpu(name, self.bed, view.workdir, short=f"d{i}", ovs=view.ovs())
            self.dpus.append(dpu)
            for port in ("p0", "p1"):
                uplink = dpu.uplink(port, fabric_cidr(port), f"{dpu.short}f{port[1]}")
                self.say(f"DPU {name}: uplink {port} is a veth to fabric namespace {uplink.netns} ({uplink.cidr})")
        # Before any HBN pod exists, so the service pods' DPUService goes after it on teardown (LIFO), both while
        # the controller runs to uninstall their releases.
        self.stack.callback(self.hbn.stop, self.host)
        self.hbn.start(self.dpus, self._manifests("DPUServiceInterface"))

    def _chain(self) -> None:
        self.say("applying DPUServiceChain hbn-to-fabric: p0 <-> HBN p0_if, p1 <-> HBN p1_if")
        self._apply(self._manifests("DPUServiceChain"))
        self._wait_ready("dpuservicechains", "hbn-to-fabric")
        for dpu in self.dpus:
            flows = [f for f in dpu.flows() if "learn(" in f]
            self.say(f"DPU {dpu.name}: br-sfc carries {len(flows)} chain flows (one per port of each switch)")

    def wait_traffic(self, timeout: float = READY_TIMEOUT) -> None:
        """Until a ping through every DPU's chain gets a reply (after a reboot its agent programs the flows again),
        then show it."""
        service = self.service_pods

        def passes() -> bool:
            return all(dpu.pods[f"{dpu.short}f{port[1]}"].ping(self.hbn_ip[port], count=1, wait=0.5)
                       for dpu in self.dpus for port in ("p0", "p1")) and \
                all(service.fabric[name].ping(pod.ip, count=1, wait=0.5) for name, pod in service.current().items())

        started = time.monotonic()
        try:
            wait_until(passes, timeout, "traffic through every DPU's chain", interval=0.5, while_alive=self.children())
        except TimeoutError:
            raise DemoError(f"no traffic through every DPU's chain within {timeout:.0f}s") from None
        self.say(f"chains carry traffic again {time.monotonic() - started:.1f}s after the update")
        for dpu in self.dpus:
            self.hbn.current(dpu.name)  # names the HBN pod that runs now
        self.show_traffic(expect=True, iperf=False)
        service.show_traffic()

    def show_traffic(self, expect: bool, iperf: bool = True) -> None:
        for dpu in self.dpus:
            for port in ("p0", "p1"):
                fabric, hbn = dpu.pods[f"{dpu.short}f{port[1]}"], self.hbn_ip[port]
                passed = fabric.ping(hbn, count=3, wait=0.5)
                what = f"DPU {dpu.name}: ping {fabric.ip} (fabric {port}) -> {hbn} (HBN {port}_if)"
                if passed != expect:
                    raise DemoError(f"{what}: {'no reply' if expect else 'replies'}; expected the opposite")
                self.say(f"traffic passes: {what}: 3/3 replies" if passed else
                         f"traffic stops: {what}: no reply (no chain, br-sfc drops it)")
            if expect and iperf:
                pod = self.hbn.current(dpu.name)
                self.say(f"traffic passes: DPU {dpu.name}: iperf3 TCP fabric p0 -> HBN p0_if (server in pod "
                         f"{NAMESPACE}/{pod.name}): {self._iperf(dpu.pods[f'{dpu.short}f0'], pod.enter()):.2f} Gbit/s")

    # -- helpers ----------------------------------------------------------------------------------------------
    def _iperf(self, client: Pod, enter: list[str]) -> float:
        """iperf3 from `client` to the HBN pod's p0_if, the server run in the pod's network namespace (`enter`)."""
        log, server = self.workdir / "iperf3.log", self.hbn_ip["p0"]
        child = Child("iperf3", [*enter, tool("iperf3"), "-s", "-1", "-B", server], log)
        try:
            time.sleep(0.2)  # iperf3 has no readiness signal; the client retries below anyway
            for _ in range(10):
                result = client.exec(tool("iperf3"), "-c", server, "-t", "1", "-J", check=False, timeout=20)
                if result.returncode == 0:
                    return json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
                time.sleep(0.2)
            raise DemoError(f"iperf3 from {client.netns} to {server} failed: {result.stdout[-300:]}")
        finally:
            child.stop()

    def _manifests(self, kind: str) -> list[dict]:
        return [o for o in chains.hbn_only(NAMESPACE, GROUP) if o["kind"] == kind]

    def _apply(self, objects: list[dict]) -> None:
        self._kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects))

    def _apply_dpu(self, objects: list[dict]) -> None:
        """Objects of the DPU cluster (pods, NetworkAttachmentDefinitions)."""
        self._kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects), cluster=self.dpu_cluster)

    def _kubectl(self, *args: str, input: str | None = None, cluster: ControlPlane | None = None) -> None:
        result = (cluster or self.host).kubectl(*args, input=input, check=False)
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
