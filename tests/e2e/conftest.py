"""End-to-end bed: the host cluster (`kube`) and a separate DPU cluster (`dpu_kube`), the real controller
process (mTLS), and two emulated DPUs, each an OVS in its own netns with its DPU agent process (CNI server
included) and uplinks p0/p1 into fabric namespaces. Objects and processes are the lab's (`dpf.lab.dpus`,
`dpf.lab.controller`, `dpf.lab.chains`), so the lab shows exactly what these tests check.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.controller import ControllerProcess
from dpf.lab.dpus import AgentTLS, EmulatedDpu, cni_bin_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and OVS")


@dataclass
class Bed:
    host: ControlPlane
    dpu_cluster: ControlPlane
    namespace: str
    group: str
    controller: ControllerProcess
    dpus: dict[str, EmulatedDpu]
    tls: dict[str, AgentTLS]
    bin_dir: Path
    host_reader: chains.Reader
    nodes: list[str] = field(default_factory=list)

    def apply(self, objects: list[dict], cluster: ControlPlane | None = None) -> None:
        (cluster or self.host).kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(objects))

    def delete(self, kind: str, name: str, cluster: ControlPlane | None = None, wait: bool = False) -> None:
        (cluster or self.host).kubectl("delete", kind, name, "-n", self.namespace, f"--wait={str(wait).lower()}")

    def start_agent(self, name: str) -> None:
        self.dpus[name].start_agent(self.controller.endpoint, self.tls[name])


@contextlib.contextmanager
def e2e_bed(host: ControlPlane, dpu_cluster: ControlPlane, namespace: str, netns: NetnsBed,
            workdir: Path) -> Iterator[Bed]:
    """Two DPU Nodes (HBN runs on the first), the controller process and two emulated DPUs with uplinks p0/p1
    and their agents. `namespace` must exist in `host`; it is created in `dpu_cluster` and removed again."""
    group = uuid.uuid4().hex[:6]
    core = k8s.CoreV1Api(dpu_cluster.client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    names = {"a": f"dpu-a-{group}", "b": f"dpu-b-{group}"}
    for short, name in names.items():
        core.create_node(chains.dpu_node(name, group, hbn=short == "a"))
    controller = ControllerProcess(host.kubeconfig, namespace, workdir / "controller")
    dpus: dict[str, EmulatedDpu] = {}
    try:
        host.kubectl("apply", "-f", "-", input=chains.to_yaml(
            chains.dpu_cluster(namespace, "dpu", dpu_cluster.kubeconfig.read_bytes())))
        controller.start()
        tls = {}
        for short, name in names.items():
            dpu = dpus[name] = EmulatedDpu(name, netns, workdir / name, short=f"d{short}")
            dpu.start_switch()
            dpu.uplink("p0", f"10.8{short == 'b':d}.0.1/24", f"f{short}0")
            dpu.uplink("p1", f"10.8{short == 'b':d}.1.1/24", f"f{short}1")
            tls[name] = controller.issue_node_cert(name, workdir / name / "certs")
            dpu.start_agent(controller.endpoint, tls[name])
        yield Bed(host, dpu_cluster, namespace, group, controller, dpus, tls, cni_bin_dir(workdir / "cni-bin"),
                  chains.Reader(host.client), list(names.values()))
    finally:
        for dpu in dpus.values():
            dpu.stop_agent()
        controller.stop()
        for dpu in dpus.values():
            dpu.stop()
        for name in names.values():
            _ignore_missing(core.delete_node, name)
        _ignore_missing(core.delete_namespace, namespace)


@pytest.fixture
def bed(kube: ControlPlane, dpu_kube: ControlPlane, namespace: str, netns: NetnsBed,
        tmp_path: Path) -> Iterator[Bed]:
    with e2e_bed(kube, dpu_kube, namespace, netns, tmp_path) as built:
        yield built


def _ignore_missing(call, *args) -> None:
    try:
        call(*args)
    except ApiException as exc:
        if exc.status != 404:
            raise
