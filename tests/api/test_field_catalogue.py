"""The generated CRDs against the committed field catalogue, and the upstream facts it holds, on a real apiserver.

`field_catalogue.txt` lists every schema node of every CRD (type, format, bounds, merge markers, columns,
subresources). A model change that alters the API shows up here as a diff to review; an intended one is
written back with `python -m tests.api.catalogue --write` and explained in docs/api.md.
"""

from __future__ import annotations

import difflib
import json
import re

import pytest

from dpf.lab.bed.kube import ControlPlane
from tests.api import catalogue
from tests.api.helpers import create, get, patch, refusal

EMPTY_STATUS_KINDS = ("ServiceChain", "ServiceInterface", "DPUServiceTemplate", "DPUServiceConfiguration")


def _catalogue() -> list[str]:
    return [line for line in catalogue.FILE.read_text().splitlines() if line and not line.startswith("#")]


def test_generated_crds_match_the_committed_catalogue() -> None:
    committed, generated = _catalogue(), catalogue.lines()
    diff = "\n".join(difflib.unified_diff(committed, generated, "field_catalogue.txt", "generated CRDs", lineterm=""))
    assert committed == generated, (
        "the CRDs drifted from tests/api/field_catalogue.txt; if intended, run "
        f"`python -m tests.api.catalogue --write` and say why in docs/api.md:\n{diff}")


def test_catalogue_holds_upstreams_status_subresources_formats_and_markers() -> None:
    lines = set(_catalogue())
    for kind in EMPTY_STATUS_KINDS:
        assert f"{kind} subresource /status" in lines
        assert f"{kind} .status object" in lines
        assert not any(line.startswith(f"{kind} .status.") for line in lines), kind  # empty, as upstream
    # metav1.LabelSelector / corev1.NodeSelector merge markers wherever those types appear.
    paths = {tuple(line.split(" ", 2)[:2]) for line in lines}
    selectors = 0
    for line in lines:
        kind, path, facts = line.split(" ", 2)
        if (kind, f"{path}.matchExpressions") in paths or (kind, f"{path}.nodeSelectorTerms") in paths:
            assert "map=atomic" in facts, line
            selectors += 1
        if re.search(r"(matchExpressions|matchFields|nodeSelectorTerms)(\[\]\.values)?$", path):
            assert "list=atomic" in facts, line
    assert selectors == 13  # every LabelSelector, NodeSelector and NodeSelectorTerm
    for expected in (
        "DPUServiceIPAM .spec.ipv4Network.prefixSize integer required format=int32",
        "DPUServiceIPAM .spec.ipv4Network.gatewayIndex integer format=int32",
        "ServiceChainSet .status.numberApplied integer format=int32",
        "ServiceInterfaceSet .status.numberReady integer format=int32",
        "DPUService .status.observedGeneration integer format=int64",
        "DPU .status.conditions[].observedGeneration integer format=int64 min=0",
    ):
        assert any(line.startswith(expected) for line in lines), expected
    columns = {line for line in lines if " column " in line}
    assert "ServiceInterface column IfType string .spec.interfaceType" in columns
    assert "ServiceInterface column IfName string .spec.service.interfaceName" in columns


def test_empty_status_is_a_subresource_and_prunes_what_upstream_does_not_declare(
        api_kube: ControlPlane, namespace: str) -> None:
    chain = {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "ServiceChain", "metadata": {"name": "c"},
             "spec": {"switches": [{"ports": [{"serviceInterface": {"matchLabels": {"a": "b"}}}]}]},
             "status": {"bogus": 1}}
    created = create(api_kube, namespace, chain)
    assert "bogus" not in created.get("status", {})
    # /status is served (404 without the subresource) and a status write leaves spec alone.
    written = patch(api_kube, namespace, "ServiceChain", "c", {"status": {"bogus": 2},
                                                                 "spec": {"node": "changed"}}, status=True)
    assert written["spec"].get("node") is None
    assert written["metadata"]["generation"] == created["metadata"]["generation"]


def test_label_selector_lists_are_atomic_under_server_side_apply(api_kube: ControlPlane, namespace: str) -> None:
    def apply(manager: str, values: list[str]) -> None:
        body = {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "ServiceChainSet",
                "metadata": {"name": "s", "namespace": namespace},
                "spec": {"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "In", "values": values}]},
                         "template": {"spec": {"switches": [{"ports": [
                             {"serviceInterface": {"matchLabels": {"a": "b"}}}]}]}}}}
        api_kube.kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={manager}", "-f", "-",
                         input=json.dumps(body))

    apply("one", ["a", "b"])
    apply("two", ["c"])
    got = get(api_kube, namespace, "ServiceChainSet", "s")
    # Atomic: the second manager's list replaces the first one's whole (a granular list would keep a and b).
    assert got["spec"]["nodeSelector"]["matchExpressions"] == [{"key": "k", "operator": "In", "values": ["c"]}]


@pytest.mark.parametrize(("image", "ok"), [
    ("[fd00::1]:5000/dpf/provisioning:v24.10", True),
    ("[::1]/dpf/provisioning", True),
    ("nvcr.io/nvidia/doca/dpf-system:v24.10.0", True),
    ("[fd00::1/dpf/provisioning", False),
    ("fd00::1:5000/dpf/provisioning", False),
])
def test_operator_image_accepts_bracketed_ipv6_registries(api_kube: ControlPlane, namespace: str,
                                                         image: str, ok: bool) -> None:
    config = {"apiVersion": "operator.dpu.nvidia.com/v1alpha1", "kind": "DPFOperatorConfig",
              "metadata": {"name": "c"}, "spec": {"provisioningController": {"bfbPVCName": "p", "image": image}}}
    if ok:
        assert create(api_kube, namespace, config, dry_run=True)["spec"]["provisioningController"]["image"] == image
    else:
        assert "spec.provisioningController.image" in refusal(create, api_kube, namespace, config, dry_run=True)


def test_the_tables_kubectl_prints_for_service_interfaces(api_kube: ControlPlane, namespace: str) -> None:
    iface = {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "ServiceInterface", "metadata": {"name": "i"},
             "spec": {"node": "dpu-1", "interfaceType": "service",
                      "service": {"serviceID": "hbn", "network": "mybrhbn", "interfaceName": "p0_if"}}}
    create(api_kube, namespace, iface)
    table = api_kube.kubectl("get", "serviceinterfaces", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "IFTYPE", "IFNAME", "NODE", "AGE"]
    assert row.split()[:4] == ["i", "service", "p0_if", "dpu-1"]
