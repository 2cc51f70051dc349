"""Fixtures for the API tests: the bed's `kube` with its admission policies known to be in force."""

from __future__ import annotations

import pytest
from kubernetes.client.rest import ApiException

from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import wait_until
from tests.api.helpers import create

POLICY_NAMESPACE = "default"


def _bfb_defaulted(kube: ControlPlane) -> bool:
    bfb = {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "BFB",
           "metadata": {"name": "probe"}, "spec": {"url": "https://example.com/probe.bfb"}}
    return create(kube, POLICY_NAMESPACE, bfb, dry_run=True)["spec"].get("fileName") == "default-probe.bfb"


def _dpu_annotation_checked(kube: ControlPlane) -> bool:
    dpu = {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPU",
           "metadata": {"name": "probe",
                        "annotations": {"provisioning.dpu.nvidia.com/host-power-cycle-required": "maybe"}},
           "spec": {"nodeName": "n", "bfb": "b"}}
    try:
        create(kube, POLICY_NAMESPACE, dpu, dry_run=True)
    except ApiException as error:
        return error.status == 422
    return False


def _dpuset_defaulted(kube: ControlPlane) -> bool:
    dpuset = {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPUSet",
              "metadata": {"name": "probe"}, "spec": {"strategy": {"type": "RollingUpdate"}}}
    return "rollingUpdate" in create(kube, POLICY_NAMESPACE, dpuset, dry_run=True)["spec"]["strategy"]


@pytest.fixture(scope="session")
def api_kube(kube: ControlPlane) -> ControlPlane:
    """`kube` once the admission policies shipped in packaging/crds are in force (they load asynchronously)."""
    for probe in (_bfb_defaulted, _dpu_annotation_checked, _dpuset_defaulted):
        wait_until(lambda probe=probe: probe(kube), 30, f"admission policy ({probe.__name__}) in force")
    return kube
