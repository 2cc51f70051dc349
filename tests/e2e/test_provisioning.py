"""Provisioning end to end, every part real except the BlueField hardware: upstream's hbn_only BFB, DPUFlavor and
DPUSet applied to the host cluster; the dpf controller process (mTLS); an emulated server (`lab/machine.py`:
PCI sysfs, rshim, power) whose host agent (`dpf agent host`, in the server's network namespace) reports its
BlueField and flashes it; the DPU boots the bf.cfg it received and joins a DPU cluster of its own (kube-apiserver
with bootstrap tokens, controller-manager, scheduler) with a real containerd + kubelet; the controller approves
its serving certificate. The DPU reaches Ready, its Node carries the labels, the host's taint goes; deleting the
DPUSet removes the DPU, its Node and the host network.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from dpf.lab import chains
from dpf.lab.bed.dpucluster import DPUCluster, NodeNetwork
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.controller import ControllerProcess
from dpf.lab.emulator.bfb import EmulatedBfb
from dpf.lab.emulator.serve import BfbHttpServer
from tests.api.helpers import example_documents

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns, kubelet and OVS"),
              pytest.mark.timeout(900)]

BFB_FILE = "bf-bundle-2.9.1-30_24.11_ubuntu-22.04_prod.bfb"
PROVISION_TIMEOUT = 480.0  # about 60 s on an idle 2-core machine; CI runs loaded


def _hbn(kind: str, namespace: str) -> dict[str, Any]:
    return next(d for d in example_documents("hbn_only.yaml", namespace) if d["kind"] == kind)


def _jsonpath(kube: ControlPlane, *args: str) -> str:
    return kube.kubectl("get", *args, check=False).stdout.strip()


class Server:
    """An emulated server in its own process (hardware + its DPUs' software) and its host agent."""

    def __init__(self, name: str, workdir: Path, node_network: NodeNetwork, address: str, image_tar: Path) -> None:
        self.name = name
        self.root = workdir / "root"
        self.machine = Child(f"machine-{name}", [
            sys.executable, "-m", "dpf.lab.machine", str(self.root), "--name", name, "--owner", "t",
            "--workdir", str(workdir / "dpus"), "--node-bridge", node_network.bridge,
            "--node-address", f"{address}/{node_network.network.prefixlen}", "--image-tar", str(image_tar),
            "--totalvfs", "64", "--install-seconds", "0.5"], workdir / "machine.log")
        self.agent: Child | None = None
        wait_until(lambda: (self.root / "run/emulator/control.sock").exists(), 60, f"emulated server {name}",
                   while_alive=[self.machine])

    @property
    def netns(self) -> str:
        return f"dpf-t{self.machine.pid}-{self.name}"

    def oob_bridge(self, cidr: str) -> None:
        """The prerequisite upstream leaves to the user: the host's OOB NIC in `br-dpu`, which holds an address."""
        for args in (["link", "add", "br-dpu", "type", "bridge"], ["addr", "add", cidr, "dev", "br-dpu"],
                     ["link", "set", "br-dpu", "up"]):
            subprocess.run(["ip", "-n", self.netns, *args], check=True)

    def start_agent(self, node: str, controller: ControllerProcess, bfb_dir: Path, workdir: Path) -> None:
        tls = controller.issue_node_cert(node, workdir / "certs", role="host")
        self.agent = Child(f"host-agent-{node}", [
            "ip", "netns", "exec", self.netns, sys.executable, "-m", "dpf.cli", "agent", "host", "--node", node,
            "--controller", controller.endpoint, *tls.flags(), "--state-dir", str(workdir / "state"),
            "--sysroot", str(self.root), "--bfb-dir", str(bfb_dir),
            "--power-command", str(self.root / "usr/bin/ipmitool")], workdir / "host-agent.log")

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.machine.stop(timeout=60)


def test_a_dpuset_provisions_a_dpu_that_joins_its_own_dpu_cluster(
        kube: ControlPlane, namespace: str, dpu_cluster: DPUCluster, node_network: NodeNetwork,
        busybox_image: Path, tmp_path: Path) -> None:
    host = f"worker-{namespace[-6:]}"
    dpu = f"{host}-0000-08-00"
    bfb_dir = tmp_path / "bfb"
    bfb_dir.mkdir()
    image_tar = busybox_image
    core = k8s.CoreV1Api(kube.client)
    dpu_core = k8s.CoreV1Api(dpu_cluster.client)
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=host)))
    controller = ControllerProcess(kube.kubeconfig, namespace, tmp_path / "controller", bfb_dir)
    server = None
    try:
        with BfbHttpServer({BFB_FILE: EmulatedBfb("bf-bundle-2.9.1-30", 16 << 20, seed=7)}) as files:
            admin = dpu_cluster.admin_conf()
            kube.kubectl("apply", "-f", "-", input=chains.to_yaml([
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dpu-admin", "namespace": namespace},
                 "data": {"admin.conf": base64.b64encode(admin).decode()}},
                {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPUCluster",
                 "metadata": {"name": "dpu", "namespace": namespace},
                 "spec": {"type": "static", "maxNodes": 10, "version": "v1.37.2", "kubeconfig": "dpu-admin"}}]))
            controller.start(log_level=os.environ.get("DPF_TEST_LOG_LEVEL", "info"))
            server = Server("pv", tmp_path / "server", node_network, str(node_network.network.network_address + 50),
                            image_tar)
            server.oob_bridge("192.0.2.10/24")
            server.start_agent(host, controller, bfb_dir, tmp_path / "agent")
            bfb, flavor, dpuset = (_hbn(kind, namespace) for kind in ("BFB", "DPUFlavor", "DPUSet"))
            bfb["spec"]["url"] = files.url(BFB_FILE)
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([bfb, flavor, dpuset]))

            # The host agent's report labels the host; the DPUSet makes the DPU from those labels.
            wait_until(lambda: _jsonpath(kube, "dpu", dpu, "-n", namespace, "-o", "name"), 60,
                       f"DPU {dpu} made by the DPUSet from the host's detected BlueField",
                       while_alive=[server.machine, server.agent, controller.child])
            phases: list[str] = []

            def ready() -> bool:
                phase = _jsonpath(kube, "dpu", dpu, "-n", namespace, "-o", "jsonpath={.status.phase}")
                if phase and (not phases or phases[-1] != phase):
                    phases.append(phase)
                return phase == "Ready"

            started = time.monotonic()
            try:
                wait_until(ready, PROVISION_TIMEOUT, f"DPU {dpu} Ready", interval=0.2,
                           while_alive=[server.machine, server.agent, controller.child])
            except TimeoutError as exc:
                conditions = _jsonpath(kube, "dpu", dpu, "-n", namespace, "-o",
                                       "jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: "
                                       "{.message}{'\\n'}{end}")
                logs = "\n".join(f"--- {child.name}\n{child.log_tail(15)}"
                                  for child in (controller.child, server.agent, server.machine) if child)
                raise AssertionError(f"{exc}; phases seen: {phases}\nconditions:\n{conditions}\n{logs}") from exc
            took = time.monotonic() - started
            # Every phase was passed through, as the controller's PhaseChanged Events ("A → B: why") say (a phase
            # can be shorter than a poll of the status). The controller records a step's Events after its status
            # write, so the last one ("→ Ready") may land a moment after the phase is seen.
            expected = ("Initializing", "Node Effect", "Pending", "DMS Deployment", "OS Installing",
                        "Rebooting", "Host Network Configuration", "DPU Cluster Config", "Ready")
            notes: list[str] = []

            def all_phases_recorded() -> bool:
                notes[:] = [e.note or "" for e in k8s.EventsV1Api(kube.client).list_namespaced_event(namespace).items
                            if e.reason == "PhaseChanged" and e.regarding is not None and e.regarding.name == dpu]
                passed = {phase for note in notes for phase in note.split(": ", 1)[0].split(" → ")}
                return all(phase in passed for phase in expected)

            try:
                wait_until(all_phases_recorded, 10, f"PhaseChanged Events of DPU {dpu}", interval=0.2)
            except TimeoutError as exc:
                raise AssertionError(f"not every phase passed through: {notes} (polled: {phases})") from exc

            node = dpu_core.read_node(dpu)
            ready_condition = next(c for c in node.status.conditions if c.type == "Ready")
            assert ready_condition.status == "True"
            assert node.metadata.labels["provisioning.dpu.nvidia.com/host"] == host
            assert node.metadata.labels["provisioning.dpu.nvidia.com/DOCA-BFB-version"].startswith("bf-bundle")
            taints = core.read_node(host).spec.taints or []
            assert not [t for t in taints if t.key == "dpu"], "the node effect's taint is gone at Ready"
            assert (server.root / "run/emulator/power.log").read_text().strip(), "the host was rebooted"
            # The kubelet asks for its serving certificate after it registers its Node, so the CSR (and the
            # controller's approval) may come a little after Ready.
            def approved() -> list[Any]:
                return [c for c in k8s.CertificatesV1Api(dpu_cluster.client).list_certificate_signing_request()
                        .items if c.spec.signer_name == "kubernetes.io/kubelet-serving" and c.spec.username ==
                        f"system:node:{dpu}" and any(s.type == "Approved" for s in (c.status.conditions or []))]
            wait_until(approved, 60.0, "the controller's approval of the provisioned DPU's serving certificate",
                       interval=0.2, while_alive=[controller.child])
            print(f"provisioned {dpu} in {took:.1f}s: {' -> '.join(phases)}")

            kube.kubectl("delete", "dpuset", dpuset["metadata"]["name"], "-n", namespace, "--wait=false")
            wait_until(lambda: not _jsonpath(kube, "dpu", dpu, "-n", namespace, "-o", "name", "--ignore-not-found"),
                       120, f"DPU {dpu} gone with its DPUSet", while_alive=[controller.child])
            wait_until(lambda: dpu not in [n.metadata.name for n in dpu_core.list_node().items], 60,
                       f"Node {dpu} removed from the DPU cluster")
            wait_until(lambda: "ens1f0v0" not in subprocess.run(["ip", "-n", server.netns, "link", "show"],
                                                                capture_output=True, text=True).stdout,
                       60, "the host network undone")
    finally:
        if server is not None:
            server.stop()
        controller.stop()
        core.delete_node(host)
