"""DPUFlavors that leave out fields upstream's v24.10 CRD leaves optional are accepted, as upstream accepts them,
and the controller's model reads them back (the bf.cfg renderer skips what is absent)."""

from __future__ import annotations

from typing import Any

import pytest

from dpf.controller.api.provisioning import DPUFlavor
from dpf.controller.provisioning.bfcfg import render_bfcfg
from dpf.lab.bed.kube import ControlPlane
from tests.api.helpers import create, get

PARTIAL_SPECS: dict[str, dict[str, Any]] = {
    "empty": {},
    "grub-without-parameters": {"grub": {}},
    "sysctl-without-parameters": {"sysctl": {}},
    "ovs-without-script": {"ovs": {}},
    "containerd-without-endpoint": {"containerdConfig": {}},
    "nvconfig-without-parameters": {"nvconfig": [{"device": "*"}]},
    "config-file-path-only": {"configFiles": [{"path": "/etc/empty"}]},
    "config-file-without-path": {"configFiles": [{"raw": "x=1\n", "operation": "append"}]},
    "config-file-without-permissions": {"configFiles": [{"path": "/etc/a", "raw": "a\n"}]},
    "all-partial": {"grub": {}, "sysctl": {}, "ovs": {}, "containerdConfig": {}, "nvconfig": [{}],
                    "configFiles": [{}], "bfcfgParameters": ["UPDATE_DPU_OS=yes"]},
}


@pytest.mark.parametrize("name", sorted(PARTIAL_SPECS))
def test_partial_flavor_is_accepted(api_kube: ControlPlane, namespace: str, name: str) -> None:
    flavor = {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPUFlavor",
              "metadata": {"name": name}, "spec": PARTIAL_SPECS[name]}
    create(api_kube, namespace, flavor)
    stored = DPUFlavor.model_validate(get(api_kube, namespace, "DPUFlavor", name))
    text = render_bfcfg(stored.spec, "dpu-1", "kubeadm join 10.0.0.1:6443 --token a.b")
    assert "hostnamectl" in text
