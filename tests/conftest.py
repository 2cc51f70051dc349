"""Test bed fixtures: real components, started once where they are expensive, always cleaned up.

- `kube`: etcd + kube-apiserver + kube-controller-manager with the project's CRDs (session-scoped).
- `dpu_kube`: a second, independent control plane, "the DPU cluster" (session-scoped, on demand).
- `namespace`: a fresh namespace in `kube` per test.
- `netns`: a NetnsBed that creates namespaces/veth pairs and removes them after the test.
- `ovs`: ovsdb-server + ovs-vswitchd in a private run dir inside their own netns (per test).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from dpf.lab.bed.dpucluster import DPUCluster, NodeNetwork
from dpf.lab.bed.images import build_busybox_image
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.kubelet import HOST_SYSCTLS
from dpf.lab.bed.netns import NetnsBed, bed_namespaces, reap_stale
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import descendants, live_children

# Processes the bed starts; the leak check looks for any left running by this test process.
BED_PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "containerd",
                 "ovsdb-server", "ovs-vswitchd", "registry")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        reap_stale("t")  # namespaces left by an earlier run that was SIGKILLed


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("kube-host"), name="host") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dpu_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("kube-dpu"), name="dpu") as cluster:
        yield cluster


@pytest.fixture
def namespace(kube: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(kube.client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def netns() -> Iterator[NetnsBed]:
    bed = NetnsBed(owner="t")
    try:
        yield bed
    finally:
        bed.cleanup()


@pytest.fixture
def ovs(netns: NetnsBed, tmp_path: Path) -> Iterator[OvsSwitch]:
    switch = OvsSwitch(netns=netns.namespace("ovs"), rundir=tmp_path / "ovs")
    try:
        yield switch.start()
    finally:
        switch.stop()


def host_sysctls() -> dict[str, str]:
    """The kernel sysctls a kubelet sets on the host (it must leave them as it found them)."""
    return {key: Path("/proc/sys", key).read_text().strip() for key in HOST_SYSCTLS}


SESSION_START_SYSCTLS = host_sysctls()


def pod_netns() -> set[str]:
    """containerd's pod network namespaces as the host sees them (`/run/netns/cni-*`)."""
    return {p.name for p in Path("/run/netns").glob("cni-*")}


SESSION_START_POD_NETNS = pod_netns()


def leaked_processes() -> dict[int, str]:
    """Bed daemons still running under this test process that no live fixture owns."""
    owned = live_children()
    return {pid: comm for pid, comm in descendants().items()
            if any(comm.startswith(name[:15]) for name in BED_PROCESSES) and pid not in owned}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The leak check must run after every other test.
    last = [item for item in items if item.get_closest_marker("leak_check")]
    items[:] = [item for item in items if item not in last] + last


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # After all fixtures are torn down nothing of the bed may remain, not even session fixtures.
    leftovers = descendants()
    daemons = {pid: c for pid, c in leftovers.items() if any(c.startswith(n[:15]) for n in BED_PROCESSES)}
    namespaces = bed_namespaces("t", os.getpid()) if os.geteuid() == 0 else []
    if daemons or namespaces:
        print(f"\nLEAK after teardown: processes {daemons}, namespaces {namespaces}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# A DPU cluster of its own (module-scoped: a control plane takes seconds) on a bridge DPU namespaces reach, and the
# local busybox image its kubelets import (tests/dpucluster, tests/e2e).
@pytest.fixture(scope="module")
def node_network() -> Iterator[NodeNetwork]:
    network = NodeNetwork()
    try:
        yield network
    finally:
        network.remove()


@pytest.fixture(scope="module")
def dpu_cluster(node_network: NodeNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DPUCluster]:
    with DPUCluster(tmp_path_factory.mktemp("dpu-cluster"), address=node_network.address) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_image(tmp_path_factory.mktemp("image"))
