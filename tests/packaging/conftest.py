"""The controller's manifests applied to the bed once for this package, file by file as `kubectl apply -f`
would (the CRDs are already installed by the `kube` fixture), and removed afterwards. The DPU-cluster RBAC
is applied to the same bed: its ServiceAccount is a second, separate identity there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dpf.lab.bed.kube import ControlPlane
from tests.packaging.rbac import DPU_CLUSTER_MANIFESTS, MANIFESTS, NAMESPACE, listed_files


@pytest.fixture(scope="package")
def installed(kube: ControlPlane) -> Iterator[ControlPlane]:
    files = listed_files(MANIFESTS) + listed_files(DPU_CLUSTER_MANIFESTS)
    try:
        for path in files:
            kube.kubectl("apply", "--server-side", "-f", str(path))
        yield kube
    finally:
        for path in reversed(files):  # the namespace last: its deletion takes whatever is left in it
            kube.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(path), check=False)
        kube.delete_namespace(NAMESPACE)  # gone before the next package that names it
