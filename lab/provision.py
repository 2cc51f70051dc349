"""The lab's provisioning step: DPUs provisioned by DPF itself, as on real servers.

A DPU cluster that is a control plane of its own (`bed/dpucluster.py`: kube-apiserver with bootstrap tokens,
controller-manager, scheduler) on a node-network bridge; `--hosts` emulated servers (`lab/machine.py`, each in
its own process: PCI sysfs with the BlueFields, rshim, power, and each DPU's OS) with their host agents
(`dpf agent host`, in the server's network namespace); a Node per server in the host cluster. Then upstream's
hbn_only `bfb.yaml`, `hbn-dpuflavor.yaml` and `dpuset.yaml` (`manifests/provisioning.yaml`), with the BFB's url on
the lab's BFB server (emulated images the emulated rshim verifies). From there it is DPF's work: the host agents
report their BlueFields, the DPUSet makes a DPU per device, the controller downloads the BFB, the host agents
flash it, reboot the host, set up the host network, the DPUs boot their bf.cfg, join the DPU cluster with a real
containerd + kubelet, start their DPU agent, and the controller takes them to Ready. Every phase change of every
DPU is printed (from the controller's PhaseChanged Events, so none is missed between polls) with its progress
from the DPU's status (flash bytes and rate), then the time to Ready.

`rolling_update()` then applies a new BFB version to the DPUSet and shows the DPUs re-provisioned at most
`maxUnavailable` at a time.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.controller.kube.rest import KubeError
from dpf.lab import chains
from dpf.lab.bed.dpucluster import DPUCluster, NodeNetwork
from dpf.lab.bed.images import build_busybox_image
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool
from dpf.lab.controller import ControllerProcess
from dpf.lab.dpus import CNI_PLUGIN, cni_bin_dir
from dpf.lab.emulator.bfb import EmulatedBfb
from dpf.lab.emulator.serve import BfbHttpServer
from dpf.lab.hbn_ovn import IPAM_PLUGIN

NAMESPACE = "dpf-operator-system"
GROUP = "lab"
PROVISIONING = ("provisioning.dpu.nvidia.com", "v1alpha1")
BFB_FILE = "bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod.bfb"  # upstream's example URL's file name
BFB_VERSION = "bf-bundle-2.9.1-30"
UPDATE_FILE = "bf-bundle-2.10.0-147_25.04_ubuntu-22.04_prod.bfb"
UPDATE_VERSION = "bf-bundle-2.10.0-147"
UPDATE_BFB = "bf-bundle-2.10.0"
BFB_SIZE = 256 << 20
FLASH_RATE = 64 << 20
"""Bytes/s each emulated rshim accepts (the emulator's dial): a flash of a few seconds, long enough for its
progress to show."""
READY_TIMEOUT = 600.0
POLL_INTERVAL = 0.5
EVENT_GRACE = 5.0
"""Seconds a DPU's status may show a phase before its PhaseChanged Event arrives; then the status is shown."""
DPU_FIRST_ADDRESS = 100
"""DPU i's address on the node network is the bridge's network + DPU_FIRST_ADDRESS + i."""
GONE = "deleted"
"""The lab's name for a DPU whose object is gone (a rolling update replaces a DPU by deleting it)."""
NFD = "feature.node.kubernetes.io/"
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


class ProvisioningError(RuntimeError):
    pass


@dataclass
class Server:
    """One emulated server (its own process) and its host agent."""

    index: int
    node: str
    """The host cluster's Node of this server (`worker<i>`)."""
    short: str
    workdir: Path
    machine: Child
    agent: Child | None = None
    dpus: dict[str, tuple[str, str]] = field(default_factory=dict)
    """PCI address → (emulated DPU name, its network namespace), as the server reports them."""

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def netns(self) -> str:
        return f"dpf-lab{self.machine.pid}-{self.short}"


@dataclass
class DpuView:
    """A provisioned DPU as the lab sees it."""

    name: str
    server: Server
    pci: str
    phases: list[tuple[str, float]] = field(default_factory=list)
    """(phase, seconds since the DPUSet was applied) in the order seen."""
    message: str = ""
    differs_since: float | None = None
    """Since when the status has shown a phase no Event announced (after EVENT_GRACE the status is shown)."""

    @property
    def emulated(self) -> str:
        return self.server.dpus[self.pci][0]

    @property
    def netns(self) -> str:
        return self.server.dpus[self.pci][1]

    @property
    def workdir(self) -> Path:
        """The DPU's software state in its server (`machine.py --workdir`): OVS, kubelet, DPU agent."""
        return self.server.workdir / "dpus" / self.emulated

    def ovs(self) -> OvsSwitch:
        """The DPU OS's Open vSwitch (started by its boot; this object only talks to it)."""
        return OvsSwitch(netns=self.netns, rundir=self.workdir / "ovs")


class Relay:
    """Prints a server's own lines (not its log records) as they come, prefixed with its Node name."""

    def __init__(self, server: Server, say: Callable[[str], None], on_line: Callable[[Server, str], None]) -> None:
        self.server = server
        self.say = say
        self.on_line = on_line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay-{server.node}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self.server.machine.log, errors="replace") as log:
            pending = ""
            while not self._stop.is_set():
                chunk = log.readline()
                if not chunk:
                    self._stop.wait(0.1)
                    continue
                pending += chunk
                if not pending.endswith("\n"):
                    continue
                line, pending = pending.rstrip("\n"), ""
                if not line or _LOG_RECORD.match(line) or line.startswith((" ", "\t", "Traceback", "---", "time=")):
                    continue
                self.on_line(self.server, line)
                self.say(f"{self.server.node}: {line}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def provisioning_manifests(namespace: str, url: str, group: str, pci: list[str] | None = None) -> list[dict[str, Any]]:
    """Upstream's BFB, DPUSet and DPUFlavor; the BFB's url is `url`, and the DPUSet's DPU nodes carry the labels
    the lab's chains select (`spec.dpuTemplate.spec.cluster.nodeLabels`, upstream's field for this). With more
    than one PCI address in `pci` (several BlueFields per host), a `dpuSelector` takes each of them: without one
    a DPUSet takes DPU 0 of a node only, as upstream."""
    docs = [d for d in yaml.safe_load_all((chains.MANIFESTS / "provisioning.yaml").read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "BFB":
            doc["spec"]["url"] = url
        if doc["kind"] == "DPUSet":
            template = doc["spec"]["dpuTemplate"]["spec"]
            template.setdefault("cluster", {})["nodeLabels"] = {chains.GROUP_LABEL: group, chains.HBN_LABEL: "true"}
            if pci and len(pci) > 1:
                doc["spec"]["dpuSelector"] = {f"{NFD}dpu-{i}-pci-address": address.replace(":", "-")
                                              for i, address in enumerate(pci)}
    return docs


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class Provisioning:
    def __init__(self, host: ControlPlane, workdir: Path, stack: contextlib.ExitStack, say: Callable[[str], None],
                 hosts: int = 2, dpus_per_host: int = 1, bfb_size: int = BFB_SIZE,
                 flash_rate: float | None = FLASH_RATE) -> None:
        self.host = host
        self.workdir = workdir
        self.stack = stack
        self.say = say
        self.hosts = hosts
        self.dpus_per_host = dpus_per_host
        self.bfb_size = bfb_size
        self.flash_rate = flash_rate
        self.bfb_dir = workdir / "bfb"
        self.certs = workdir / "dpu-certs"
        self.network: NodeNetwork | None = None
        self.cluster: DPUCluster | None = None
        self.files: BfbHttpServer | None = None
        self.servers: list[Server] = []
        self.dpus: dict[str, DpuView] = {}
        self.agents: dict[str, tuple[int, str]] = {}
        """DPU name → (pid, log) of its DPU agent, as its server last reported it."""
        self.ready_seconds: float | None = None
        self._custom = k8s.CustomObjectsApi(host.client)
        self._relays: list[Relay] = []
        self._issuing: dict[str, threading.Thread] = {}
        self._issuer = ControllerProcess(host.kubeconfig, NAMESPACE, self.workdir / "controller")
        """Issues the DPU agents' certificates (the CA read once, shared by the issuing threads)."""
        self._issue_errors: list[str] = []
        self._failures: list[str] = []
        self._bfb_phases: dict[str, str] = {}
        self._seen_events: set[str] = set()
        """Steps a DPU's OS reported failed (its server's `<dpu>: <step> failed: <cause>` lines)."""

    @property
    def expected(self) -> int:
        return self.hosts * self.dpus_per_host

    # -- the DPU cluster ---------------------------------------------------------------------------------------
    def start_dpu_cluster(self) -> DPUCluster:
        self.network = NodeNetwork()
        self.stack.callback(self.network.remove)
        self.say(f"starting the DPU cluster: its own etcd + kube-apiserver (bootstrap tokens, Node authorizer) + "
                 f"controller-manager (CSR signing, DaemonSets) + scheduler, on bridge {self.network.bridge} "
                 f"({self.network.network})")
        self.cluster = DPUCluster(self.workdir / "dpu-cluster", address=self.network.address)
        self.stack.callback(self.cluster.stop)
        self.cluster.start()
        self.say(f"DPU cluster kube-apiserver {self.cluster.version()} ready at {self.cluster.server} in "
                 f"{self.cluster.startup_seconds:.1f}s")
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        return self.cluster

    def register_dpu_cluster(self, apply: Callable[[list[dict[str, Any]]], None]) -> None:
        assert self.cluster is not None
        self.say("registering it: DPUCluster 'dpu' (static, maxNodes 100) whose kubeconfig Secret holds its "
                 "admin.conf")
        objects = chains.dpu_cluster(NAMESPACE, "dpu", self.cluster.admin_conf())
        objects[1]["spec"]["maxNodes"] = 100
        apply(objects)

    # -- servers -----------------------------------------------------------------------------------------------
    def start_servers(self, controller: ControllerProcess) -> None:
        assert self.network is not None
        image = build_busybox_image(self.workdir / "image")
        self.bfb_dir.mkdir(parents=True, exist_ok=True)
        # Each DPU's kubelet runs Multus as its CNI (reading pods and NADs as the DPU cluster's admin: upstream's
        # Multus DaemonSet has a ServiceAccount of its own), with our SFC CNI plugin among its plugins.
        assert self.cluster is not None
        multus_kubeconfig = self.workdir / "multus.kubeconfig"
        multus_kubeconfig.write_bytes(self.cluster.admin_conf())
        multus_kubeconfig.chmod(0o600)
        plugin = cni_bin_dir(self.workdir / "cni-bin") / CNI_PLUGIN
        core = k8s.CoreV1Api(self.host.client)
        prefix = self.network.network.prefixlen
        for i in range(1, self.hosts + 1):
            node = f"worker{i}"
            core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=node)))
            workdir = self.workdir / "servers" / node
            first = self.network.network.network_address + DPU_FIRST_ADDRESS + (i - 1) * self.dpus_per_host
            addresses = [f"{first + d}/{prefix}" for d in range(self.dpus_per_host)]
            argv = [sys.executable, "-m", "dpf.lab.machine", str(workdir / "root"), "--name", f"w{i}",
                    "--dpus", str(self.dpus_per_host), "--owner", "lab", "--workdir", str(workdir / "dpus"),
                    "--node-bridge", self.network.bridge, "--image-tar", str(image), "--totalvfs", "64",
                    "--multus-kubeconfig", str(multus_kubeconfig), "--cni-plugin", f"{CNI_PLUGIN}={plugin}",
                    # the same plugin as an IPAM called by other plugins (hbn_ovn's NAD iprequest), by its name
                    "--cni-plugin", f"{IPAM_PLUGIN}={plugin}",
                    "--install-seconds", "1", "--controller", controller.endpoint, "--agent-certs", str(self.certs),
                    *(["--flash-rate", str(self.flash_rate)] if self.flash_rate else []),
                    *(a for address in addresses for a in ("--node-address", address))]
            server = Server(i, node, f"w{i}", workdir, Child(f"server-{node}", argv, workdir / "machine.log"))
            self.stack.callback(server.machine.stop, 60)
            self.servers.append(server)
            relay = Relay(server, self.say, self._on_server_line)
            self._relays.append(relay)
            self.stack.callback(relay.stop)
            def up(server: Server = server) -> bool:
                return len(server.dpus) == self.dpus_per_host and (server.root / "run/emulator/control.sock").exists()

            wait_until(up, 60, f"emulated server {node}", while_alive=[server.machine])
            self.say(f"server {node}: emulated in its own process (pid {server.machine.pid}, netns {server.netns}): "
                     f"{self.dpus_per_host} BlueField-3 on PCI {', '.join(server.dpus)}, rshim, power (ipmitool)")
            # The prerequisite upstream leaves to the user: the host's OOB NIC in br-dpu, which holds an address.
            for args in (["link", "add", "br-dpu", "type", "bridge"],
                         ["addr", "add", f"192.0.2.{i}/24", "dev", "br-dpu"], ["link", "set", "br-dpu", "up"]):
                subprocess.run([tool("ip"), "-n", server.netns, *args], check=True, capture_output=True)
            tls = controller.issue_node_cert(node, workdir / "host-certs", role="host")
            server.agent = Child(f"host-agent-{node}", [
                tool("ip"), "netns", "exec", server.netns, sys.executable, "-m", "dpf.cli", "agent", "host",
                "--node", node, "--controller", controller.endpoint, *tls.flags(), "--state-dir",
                str(workdir / "host-agent"), "--sysroot", str(server.root), "--bfb-dir", str(self.bfb_dir),
                "--power-command", str(server.root / "usr/bin/ipmitool")], workdir / "host-agent.log")
            self.stack.callback(server.agent.stop)
            self.say(f"server {node}: host agent running (detection, flasher, power, host network); "
                     f"log: {server.agent.log}")

    def _on_server_line(self, server: Server, line: str) -> None:
        failed = re.match(r"^(\S+): (.+?) failed: (.*)$", line)
        if failed and not line.startswith("dpu agent "):
            self._failures.append(f"server {server.node}: DPU {failed[1]}: {failed[2]} failed: {failed[3]} (more in "
                                  f"{server.machine.log})")
        parts = line.split()
        # "<emulated dpu>: <pci> rshim <dir> netns <netns>"
        if len(parts) == 6 and parts[2] == "rshim" and parts[4] == "netns":
            server.dpus[parts[1].rsplit(".", 1)[0]] = (parts[0].rstrip(":"), parts[5])
        # "dpu agent <node> started as pid <pid>; log: <log>" / "dpu agent <node> running again as pid <pid>; ..."
        m = re.match(r"^dpu agent (\S+) (?:started|running again) as pid (\d+); log: (\S+)$", line)
        if m:
            self.agents[m[1]] = (int(m[2]), m[3])

    def processes(self) -> list[tuple[str, Child, Path]]:
        found = []
        for server in self.servers:
            if server.agent is not None:
                found.append((f"host agent {server.node}", server.agent, server.agent.log))
        return found

    # -- provisioning ------------------------------------------------------------------------------------------
    def serve_bfbs(self) -> BfbHttpServer:
        self.files = BfbHttpServer({BFB_FILE: EmulatedBfb(BFB_VERSION, self.bfb_size, seed=1),
                                    UPDATE_FILE: EmulatedBfb(UPDATE_VERSION, self.bfb_size, seed=2)})
        self.stack.enter_context(self.files)
        return self.files

    def provision(self, apply: Callable[[list[dict[str, Any]]], None], on_ready: Callable[[], None] | None = None,
                  timeout: float = READY_TIMEOUT) -> float:
        """Apply the manifests and watch until every DPU is Ready, then until their DPU agents serve; the time to
        Ready. `on_ready` runs the moment all are Ready (before the agents are waited for): the provisioning
        bench samples the controller there (`bench/provision/real_nodes.py`)."""
        files = self.files or self.serve_bfbs()
        url = files.url(BFB_FILE)
        self.say(f"BFB server: emulated images of {_size(self.bfb_size)} at {url} (and {UPDATE_FILE}, for the "
                 "update later); each rshim takes "
                 f"{_size(self.flash_rate) + '/s' if self.flash_rate else 'as fast as it can'}")
        objects = provisioning_manifests(NAMESPACE, url, GROUP, sorted(self.servers[0].dpus))
        self.say("applying upstream's hbn_only BFB bf-bundle, DPUFlavor dpf-provisioning-hbn and DPUSet dpuset "
                 f"(nodeSelector feature.node.kubernetes.io/dpu-enabled=true, RollingUpdate maxUnavailable 10%, node "
                 f"effect taint dpu=provisioning; DPU nodes labelled {chains.GROUP_LABEL}={GROUP}, "
                 f"{chains.HBN_LABEL}=true" + (f"; dpuSelector: the {self.dpus_per_host} BlueFields of each host"
                                              if self.dpus_per_host > 1 else "") + ")")
        started = time.monotonic()
        apply(objects)
        self.watch(started, lambda dpus: len(dpus) == self.expected and
                   all(d.phases and d.phases[-1][0] == "Ready" for d in dpus.values()), "all DPUs Ready",
                   timeout=timeout)
        self.ready_seconds = time.monotonic() - started
        if on_ready is not None:
            on_ready()
        slowest = max(self.dpus.values(), key=lambda d: d.phases[-1][1])
        self.say(f"all {self.expected} DPUs Ready {self.ready_seconds:.1f}s after the DPUSet was applied (slowest: "
                 f"{slowest.name}): each booted its bf.cfg and joined the DPU cluster with its own kubelet")
        self.wait_agents()
        return self.ready_seconds

    def wait_agents(self, timeout: float = 120.0) -> None:
        """Until the DPU agent each DPU's OS starts after its join serves (its CNI socket answers)."""
        children = [s.machine for s in self.servers]
        for view in self.dpus.values():
            def serving(view: DpuView = view) -> bool:
                if self._issue_errors:  # the agent would wait for its certificate until it times out
                    raise ProvisioningError(self._issue_errors[0])
                return view.name in self.agents and (view.workdir / "run" / "cni.sock").exists()

            _wait_failing_fast(serving, timeout, f"the DPU agent of {view.name}", interval=0.2, while_alive=children)
            pid, log = self.agents[view.name]
            self.say(f"DPU {view.name}: its OS started the DPU agent (SFC programmer + CNI server), pid {pid}; "
                     f"log: {log}")

    def watch(self, started: float, done: Callable[[dict[str, DpuView]], bool], what: str,
              on_poll: Callable[[dict[str, DpuView]], None] | None = None, timeout: float = READY_TIMEOUT) -> None:
        """Print each DPU's phase changes (and new progress messages) until `done(dpus)`."""
        children = [s.machine for s in self.servers] + [s.agent for s in self.servers if s.agent]

        def check() -> bool:
            self._poll(started)
            if on_poll is not None:
                on_poll(self.dpus)
            if self._issue_errors or self._failures:
                raise ProvisioningError((self._issue_errors + self._failures)[0])
            return done(self.dpus)

        try:
            _wait_failing_fast(check, timeout, what, interval=POLL_INTERVAL, while_alive=children)
        except TimeoutError:
            state = "; ".join(f"{d.name}: {d.phases[-1][0] if d.phases else '-'} {d.message}"
                              for d in self.dpus.values())
            raise ProvisioningError(f"not {what} after {timeout:.0f}s: {state or 'no DPU objects'} (controller "
                                    f"log: {self.workdir / 'controller' / 'controller.log'})") from None

    def _poll(self, started: float) -> None:
        now = time.monotonic() - started
        bfbs = cast(dict, self._custom.list_namespaced_custom_object(*PROVISIONING, NAMESPACE, "bfbs"))
        for bfb in bfbs["items"]:
            name, phase = bfb["metadata"]["name"], (bfb.get("status") or {}).get("phase") or ""
            if phase and self._bfb_phases.get(name) != phase:
                self._bfb_phases[name] = phase
                cached = self.bfb_dir / ((bfb.get("spec") or {}).get("fileName") or "")
                detail = (f"  (downloaded by the controller: {_size(cached.stat().st_size)} in {cached})"
                          if phase == "Ready" and cached.is_file() else "")
                self.say(f"BFB {name}: {now:6.1f}s  {phase}{detail}")
        listing = cast(dict, self._custom.list_namespaced_custom_object(*PROVISIONING, NAMESPACE, "dpus"))
        statuses: dict[str, dict[str, Any]] = {}
        for obj in listing["items"]:
            name = obj["metadata"]["name"]
            if (self.dpus.get(name) or self._new_dpu(obj)) is not None:
                statuses[name] = obj.get("status") or {}
        # Phase changes from the controller's PhaseChanged Events ("A → B: why"), so a phase shorter than a poll
        # is still shown; the status adds flash progress, and stands in for an Event that does not come.
        for event in self._new_phase_events():
            view = self.dpus.get(event.regarding.name)
            if view is None or view.name not in statuses:
                continue
            before, _, after = (event.note or "").partition(" → ")
            phase, _, why = after.partition(": ")
            if not view.phases and before:
                self._phase(view, before, now, "")
            self._phase(view, phase, now, why)
        # After the Events: a DPU the DPUSet deleted because another became Ready is shown after that Ready.
        present = {obj["metadata"]["name"] for obj in listing["items"]}
        for gone in self.dpus.values():
            if gone.name not in present and (not gone.phases or gone.phases[-1][0] != GONE):
                gone.phases.append((GONE, now))
                gone.message = ""
                self.say(f"DPU {gone.name}: {now:6.1f}s  {GONE}")
        for name, status in statuses.items():
            view = self.dpus[name]
            phase, message = status.get("phase") or "", _progress(status)
            last = view.phases[-1][0] if view.phases else ""
            if not phase:
                continue
            if phase == last:
                view.differs_since = None
                if message and message != view.message and (phase == "OS Installing" or not view.message):
                    view.message = message
                    self.say(f"DPU {name}: {now:6.1f}s  {phase}  ({message})")
            elif not view.phases:
                self._phase(view, phase, now, message)
            elif view.differs_since is None:
                view.differs_since = now
            elif now - view.differs_since > EVENT_GRACE:
                self._phase(view, phase, now, message)

    def _phase(self, view: DpuView, phase: str, now: float, detail: str) -> None:
        if not phase or (view.phases and view.phases[-1][0] == phase):
            return
        view.phases.append((phase, now))
        view.message = detail
        view.differs_since = None
        self.say(f"DPU {view.name}: {now:6.1f}s  {phase}{f'  ({detail})' if detail else ''}")

    def _new_phase_events(self) -> list[Any]:
        """PhaseChanged Events about DPUs not seen before, oldest first."""
        fresh = []
        for event in k8s.EventsV1Api(self.host.client).list_namespaced_event(NAMESPACE).items:
            name = event.metadata.name if event.metadata else None
            if name and name not in self._seen_events and event.reason == "PhaseChanged" and \
                    event.regarding is not None and event.regarding.kind == "DPU":
                self._seen_events.add(name)
                fresh.append(event)
        return sorted(fresh, key=lambda e: e.event_time or (e.metadata and e.metadata.creation_timestamp))

    def _new_dpu(self, obj: dict[str, Any]) -> DpuView | None:
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        node = spec.get("nodeName") or ""
        server = next((s for s in self.servers if s.node == node), None)
        if server is None:
            return None
        pci = (spec.get("pciAddress") or name[len(node) + 1:].replace("-", ":")).rsplit(".", 1)[0]
        view = self.dpus[name] = DpuView(name, server, pci)
        self.say(f"DPU {name}: made by DPUSet dpuset for the BlueField at {pci} that {node}'s host agent reported")
        thread = threading.Thread(target=self._issue, args=(name,), name=f"issue-{name}", daemon=True)
        self._issuing[name] = thread
        thread.start()
        return view

    def _issue(self, name: str) -> None:
        """The DPU agent's node certificate, for its OS to start the agent with once it has joined."""
        try:
            self._issuer.issue_node_cert(name, self.certs / name)
        except (KubeError, ValueError, OSError, TimeoutError) as exc:  # the agents' wait reports it, naming the DPU
            self._issue_errors.append(f"issuing the node certificate of {name}: {exc}")

    # -- the rolling update ------------------------------------------------------------------------------------
    def rolling_update(self, apply: Callable[[list[dict[str, Any]]], None]) -> float:
        assert self.files is not None
        dpuset = cast(dict, self._custom.get_namespaced_custom_object(*PROVISIONING, NAMESPACE, "dpusets", "dpuset"))
        strategy = (dpuset["spec"].get("strategy") or {})
        max_unavailable = ((strategy.get("rollingUpdate") or {}).get("maxUnavailable")) or 1
        allowed = _scaled(max_unavailable, len(self.dpus))
        bfb = {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "BFB",
               "metadata": {"name": UPDATE_BFB, "namespace": NAMESPACE}, "spec": {"url": self.files.url(UPDATE_FILE)}}
        self.say(f"rolling update: BFB {UPDATE_BFB} ({UPDATE_FILE}) applied, and DPUSet dpuset's "
                 f"spec.dpuTemplate.spec.bfb.name set to it; strategy {strategy.get('type', 'RollingUpdate')} "
                 f"maxUnavailable {max_unavailable} of {len(self.dpus)} DPUs = {allowed} at a time")
        apply([bfb])
        for view in self.dpus.values():
            view.phases.clear()
            view.message = ""
            view.differs_since = None
        self.agents.clear()  # each DPU's OS starts its agent again after the update's boot
        started = time.monotonic()
        patch = {"spec": {"dpuTemplate": {"spec": {"bfb": {"name": UPDATE_BFB}}}}}
        self._custom.patch_namespaced_custom_object(*PROVISIONING, NAMESPACE, "dpusets", "dpuset", patch)
        worst = 0
        seen: set[str] = set()

        def track(dpus: dict[str, DpuView]) -> None:
            nonlocal worst
            updating = [d.name for d in dpus.values() if d.phases and d.phases[-1][0] != "Ready"]
            if len(updating) > worst:
                worst = len(updating)
            key = ",".join(sorted(updating))
            if updating and key not in seen:
                seen.add(key)
                self.say(f"rolling update: {len(updating)} of {len(dpus)} DPUs unavailable ({', '.join(updating)}); "
                         f"maxUnavailable {allowed}")

        def updated(dpus: dict[str, DpuView]) -> bool:
            return all(self._version(d.name).startswith(UPDATE_VERSION) and d.phases and d.phases[-1][0] == "Ready"
                       for d in dpus.values())

        self.watch(started, updated, f"every DPU Ready on {UPDATE_VERSION}", on_poll=track)
        took = time.monotonic() - started
        if worst > allowed:
            raise ProvisioningError(f"rolling update: {worst} DPUs were unavailable at once; maxUnavailable is "
                                    f"{allowed}")
        self.say(f"rolling update: every DPU Ready on {UPDATE_VERSION} after {took:.1f}s; at most {worst} of "
                 f"{len(self.dpus)} unavailable at a time (maxUnavailable {allowed})")
        self.wait_agents()
        return took

    def _version(self, name: str) -> str:
        assert self.cluster is not None
        try:
            node = k8s.CoreV1Api(self.cluster.client).read_node(name)
        except ApiException:
            return ""
        return ((node.metadata and node.metadata.labels) or {}).get("provisioning.dpu.nvidia.com/DOCA-BFB-version", "")

    # -- output ------------------------------------------------------------------------------------------------
    def usage(self) -> str:
        assert self.cluster is not None
        lines = ["Provisioning (upstream's hbn_only BFB, DPUFlavor, DPUSet) on emulated servers:",
                 f"  {tool('kubectl')} get dpusets,dpus,bfbs -n {NAMESPACE}",
                 f"  {tool('kubectl')} get dpu -n {NAMESPACE} -o yaml    # phases, conditions, flash progress",
                 "The DPU cluster (its own control plane; the DPUs' kubelets joined it):",
                 f"  KUBECONFIG={self.cluster.kubeconfig} {tool('kubectl')} get nodes -o wide"]
        if self.ready_seconds is not None:
            lines.append(f"Time to Ready: {self.ready_seconds:.1f}s for {self.expected} DPUs")
        return "\n".join(lines)

    def agent_listing(self) -> list[tuple[str, int, str]]:
        return [(f"dpu agent {name}", pid, log) for name, (pid, log) in sorted(self.agents.items())]


def _wait_failing_fast(predicate: Callable[[], bool], timeout: float, what: str, interval: float,
                       while_alive: list[Child]) -> None:
    """`wait_until`, except that a ProvisioningError from `predicate` ends the wait at once: `wait_until` takes
    any exception for "not yet", which turned a failed node-certificate issue into a timeout minutes later."""
    failures: list[ProvisioningError] = []

    def check() -> bool:
        try:
            return predicate()
        except ProvisioningError as exc:
            failures.append(exc)
            return True

    wait_until(check, timeout, what, interval=interval, while_alive=while_alive)
    if failures:
        raise failures[0]


def _progress(status: dict[str, Any]) -> str:
    """The message of the first condition that is not True (where the controller puts progress and causes)."""
    for condition in status.get("conditions") or ():
        if condition.get("status") != "True" and condition.get("type") != "Ready" and condition.get("message"):
            return f"{condition['type']}: {condition['message']}"
    return ""


def _scaled(value: int | str, total: int) -> int:
    """maxUnavailable of `total` DPUs as upstream scales it: a percentage rounds up; at least 1."""
    if isinstance(value, str) and value.endswith("%"):
        value = -(-total * int(value[:-1]) // 100)
    return max(1, min(int(value), total))
