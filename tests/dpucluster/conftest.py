"""A DPU cluster of its own (module-scoped: a control plane takes seconds) on a bridge DPU namespaces reach, and
the local busybox image its kubelets import."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dpf.lab.bed.dpucluster import DPUCluster, NodeNetwork
from dpf.lab.bed.images import build_busybox_image


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
