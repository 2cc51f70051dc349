"""The DPUDeployment plan without an apiserver: upstream's children for the 05.2 use-case manifests, the value
coalescing, the resource fitting arithmetic, the prerequisite messages, the dependency marks and the Ready mirror."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpf.controller.kube.rest import Obj
from dpf.controller.reconcilers import dpudeployment_plan as plan
from tests.api.helpers import example_documents

NS = "dpf-operator-system"


def flavor(resources: dict[str, Any] | None = None, reserved: dict[str, Any] | None = None) -> Obj:
    spec: dict[str, Any] = {}
    if resources is not None:
        spec["dpuResources"] = resources
    if reserved is not None:
        spec["systemReservedResources"] = reserved
    return {"metadata": {"name": "dpf-provisioning-hbn-ovn", "namespace": NS}, "spec": spec}


def example() -> tuple[Obj, dict[str, Obj], dict[str, Obj]]:
    """Upstream's 05.2 DPUDeployment `ovn-hbn`, its templates and its configurations by service key."""
    docs = example_documents("hbn_ovn_dpudeployment.yaml", NS)
    dd = next(d for d in docs if d["kind"] == "DPUDeployment")
    dd["metadata"]["uid"] = "uid-1"
    templates = {d["spec"]["deploymentServiceName"]: d for d in docs if d["kind"] == "DPUServiceTemplate"}
    configurations = {d["spec"]["deploymentServiceName"]: d for d in docs if d["kind"] == "DPUServiceConfiguration"}
    return dd, templates, configurations


def test_children_of_the_upstream_example_have_upstreams_names_labels_and_spec() -> None:
    dd, templates, configurations = example()
    children = plan.plan_children(dd, templates, configurations)
    assert sorted(children["DPUService"]) == ["ovn-hbn-blueman", "ovn-hbn-dts", "ovn-hbn-hbn", "ovn-hbn-ovn"]
    assert sorted(children["DPUServiceInterface"]) == ["ovn-hbn-hbn-p0-if", "ovn-hbn-hbn-p1-if",
                                                       "ovn-hbn-hbn-pf2dpu2-if"]
    assert list(children["DPUServiceChain"]) == ["ovn-hbn"]
    assert list(children["DPUSet"]) == ["ovn-hbn-dpuset1"]
    for by_name in children.values():
        for child in by_name.values():
            meta = child["metadata"]
            assert meta["labels"] == {plan.OWNER_LABEL: f"{NS}_ovn-hbn"}
            assert meta["ownerReferences"] == [{"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "DPUDeployment",
                                                "name": "ovn-hbn", "uid": "uid-1", "controller": True,
                                                "blockOwnerDeletion": True}]

    hbn = children["DPUService"]["ovn-hbn-hbn"]
    assert hbn["metadata"]["annotations"][plan.VERSION_ANNOTATION] == "placeholder-for-version"
    spec = hbn["spec"]
    assert spec["serviceID"] == "dpudeployment_ovn-hbn_hbn"
    assert spec["interfaces"] == ["ovn-hbn-hbn-p0-if", "ovn-hbn-hbn-p1-if", "ovn-hbn-hbn-pf2dpu2-if"]
    assert spec["helmChart"]["source"] == {"repoURL": "https://helm.ngc.nvidia.com/nvidia/doca", "version": "1.0.1",
                                           "chart": "doca-hbn"}
    values = spec["helmChart"]["values"]
    assert values["image"]["tag"] == "2.4.1-doca2.9.1"  # from the template
    assert values["resources"] == {"memory": "6Gi", "nvidia.com/bf_sf": 3}
    assert "bgp_autonomous_system: 65111" in values["configuration"]["perDPUValuesYAML"]  # from the configuration
    daemon = spec["serviceDaemonSet"]
    assert "k8s.v1.cni.cncf.io/networks" in daemon["annotations"]
    assert daemon["nodeSelector"] == {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "svc.dpu.nvidia.com/dpuservice-hbn-version", "operator": "In", "values": ["placeholder-for-version"]},
        {"key": plan.OWNER_LABEL, "operator": "In", "values": [f"{NS}_ovn-hbn"]}]}]}
    assert "deployInCluster" not in spec

    iface = children["DPUServiceInterface"]["ovn-hbn-hbn-pf2dpu2-if"]["spec"]["template"]["spec"]["template"]
    assert iface == {"metadata": {"labels": {plan.SERVICE_LABEL: "dpudeployment_ovn-hbn_hbn",
                                             plan.INTERFACE_LABEL: "pf2dpu2_if"}},
                     "spec": {"interfaceType": "service", "service": {
                         "serviceID": "dpudeployment_ovn-hbn_hbn", "network": "mybrhbn",
                         "interfaceName": "pf2dpu2_if"}}}

    chain = children["DPUServiceChain"]["ovn-hbn"]["spec"]["template"]["spec"]
    assert chain["nodeSelector"]["matchExpressions"][0] == {
        "key": plan.CHAIN_VERSION_LABEL, "operator": "In", "values": ["placeholder-for-version"]}
    switches = chain["template"]["spec"]["switches"]
    assert switches[0]["ports"] == [
        {"serviceInterface": {"matchLabels": {"uplink": "p0"}}},  # copied
        {"serviceInterface": {"matchLabels": {plan.SERVICE_LABEL: "dpudeployment_ovn-hbn_hbn",
                                              plan.INTERFACE_LABEL: "p0_if"}}}]  # a service port, resolved
    assert switches[2]["ports"][0] == {"serviceInterface": {"matchLabels": {"port": "ovn"}}}

    dpuset = children["DPUSet"]["ovn-hbn-dpuset1"]["spec"]
    assert dpuset["strategy"] == {"type": "RollingUpdate"}
    assert dpuset["nodeSelector"] == {"matchLabels": {"feature.node.kubernetes.io/dpu-enabled": "true"}}
    assert dpuset["dpuTemplate"]["spec"]["bfb"] == {"name": "bf-bundle"}
    assert dpuset["dpuTemplate"]["spec"]["dpuFlavor"] == "dpf-provisioning-hbn-ovn"
    assert dpuset["dpuTemplate"]["spec"]["cluster"]["nodeLabels"] == {
        plan.OWNER_LABEL: f"{NS}_ovn-hbn", plan.CHAIN_VERSION_LABEL: "placeholder-for-version",
        **{f"svc.dpu.nvidia.com/dpuservice-{s}-version": "placeholder-for-version"
           for s in ("blueman", "dts", "hbn", "ovn")}}


def test_an_in_cluster_service_gets_no_node_selector_and_no_dpu_node_label() -> None:
    dd, templates, configurations = example()
    configurations["dts"]["spec"]["serviceConfiguration"] = {"deployInCluster": True}
    children = plan.plan_children(dd, templates, configurations)
    dts = children["DPUService"]["ovn-hbn-dts"]["spec"]
    assert dts["deployInCluster"] is True
    assert "serviceDaemonSet" not in dts
    labels = children["DPUSet"]["ovn-hbn-dpuset1"]["spec"]["dpuTemplate"]["spec"]["cluster"]["nodeLabels"]
    assert "svc.dpu.nvidia.com/dpuservice-dts-version" not in labels


def test_configuration_values_are_coalesced_over_the_templates() -> None:
    template = {"image": {"repository": "r", "tag": "1"}, "keep": 1, "drop": "x"}
    merged = plan.coalesce(template, {"image": {"tag": "2"}, "drop": None, "new": [1]})
    assert merged == {"image": {"repository": "r", "tag": "2"}, "keep": 1, "new": [1]}
    assert template["image"]["tag"] == "1"  # the input is not changed


def templates_needing(*needs: dict[str, Any]) -> dict[str, Obj]:
    return {f"s{i}": {"spec": {"resourceRequirements": n}} for i, n in enumerate(needs)}


def test_resource_fitting_is_exact_quantity_arithmetic() -> None:
    capacity = flavor({"memory": "8Gi", "cpu": "4"}, {"memory": "1536Mi", "cpu": "500m"})
    assert plan.fitting_problem(templates_needing({"memory": "6Gi"}, {"memory": "512Mi", "cpu": "3500m"}),
                                capacity) == ""  # exactly full
    problem = plan.fitting_problem(templates_needing({"memory": "6Gi"}, {"memory": "513Mi"}), capacity)
    assert "memory: the services need 6657Mi = 6Gi (s0) + 513Mi (s1)" in problem
    assert "DPUFlavor dpf-provisioning-hbn-ovn has 6656Mi (dpuResources 8Gi - systemReservedResources 1536Mi)" \
        in problem
    assert "cpu" not in problem
    cpu = plan.fitting_problem(templates_needing({"cpu": "3"}, {"cpu": "600m"}), capacity)
    assert "cpu: the services need 3.6" in cpu
    assert "has 3.5 (dpuResources 4 - systemReservedResources 0.5)" in cpu


def test_resource_fitting_counts_a_resource_the_flavor_lacks_as_zero_and_is_skipped_without_dpu_resources() -> None:
    problem = plan.fitting_problem(templates_needing({"nvidia.com/bf_sf": 3}), flavor({"memory": "8Gi"}))
    assert "nvidia.com/bf_sf: the services need 3" in problem
    assert "has 0" in problem
    assert plan.fitting_problem(templates_needing({"memory": "1Ei"}), flavor()) == ""


def test_prerequisites_name_the_missing_and_the_mismatched() -> None:
    dd, templates, configurations = example()
    templates["hbn"] = copy.deepcopy(templates["hbn"])
    templates["hbn"]["spec"]["deploymentServiceName"] = "hbn-typo"
    deps = plan.Dependencies(bfb={"metadata": {}}, flavor=None, templates={**templates, "dts": None},
                             configurations=configurations)
    problems = plan.prerequisite_problems(dd, deps)
    assert problems == [
        f"DPUFlavor {NS}/dpf-provisioning-hbn-ovn (spec.dpus.flavor) not found",
        f"DPUServiceTemplate {NS}/dts (spec.services.dts.serviceTemplate) not found",
        f"DPUServiceTemplate {NS}/hbn (spec.services.hbn.serviceTemplate) has deploymentServiceName 'hbn-typo', "
        "which does not match the service key 'hbn'"]


def dependency(finalizers: list[str] | None = None, labels: dict[str, str] | None = None,
               deleting: bool = False) -> Obj:
    meta: dict[str, Any] = {"name": "hbn", "namespace": NS, "resourceVersion": "7",
                            "finalizers": finalizers or [], "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_a_shared_dependency_keeps_its_finalizer_until_no_live_deployment_names_it() -> None:
    fresh = dependency(["other/finalizer"])
    assert plan.mark_patch(fresh, ["b", "a"]) == {"metadata": {
        "finalizers": ["other/finalizer", plan.FINALIZER], "labels": {plan.CONSUMED_BY_LABEL: "a"},
        "resourceVersion": "7"}}
    marked = dependency(["other/finalizer", plan.FINALIZER], {plan.CONSUMED_BY_LABEL: "a"})
    assert plan.mark_patch(marked, ["a", "b"]) is None  # both compute the same mark: no flip-flop
    assert plan.mark_patch(marked, ["b"]) == {"metadata": {"labels": {plan.CONSUMED_BY_LABEL: "b"},
                                                           "resourceVersion": "7"}}
    assert plan.mark_patch(marked, []) == {"metadata": {"finalizers": ["other/finalizer"],
                                                        "labels": {plan.CONSUMED_BY_LABEL: None},
                                                        "resourceVersion": "7"}}
    assert plan.mark_patch(dependency(deleting=True), ["a"]) == {"metadata": {
        "labels": {plan.CONSUMED_BY_LABEL: "a"}, "resourceVersion": "7"}}  # no finalizer on a deleted object
    assert plan.mark_patch(dependency(), ["x" * 64])["metadata"]["labels"] == {plan.CONSUMED_BY_LABEL: ""}


def ready_child(status: str, generation: int = 1, observed: int = 1, message: str = "") -> Obj:
    conditions = [{"type": "Ready", "status": status, "reason": "Pending", "message": message}]
    if status != "True":
        conditions.append({"type": "DPUsReady", "status": "False", "reason": "Pending", "message": message})
    return {"metadata": {"generation": generation}, "status": {"observedGeneration": observed,
                                                               "conditions": conditions}}


def test_ready_mirrors_the_childrens_ready_condition() -> None:
    assert plan.ready_mark(plan.SETS, NS, ["a"], {"a": ready_child("True")}) == ("DPUSetsReady", "True", "Success",
                                                                                 "")
    type_, status, reason, message = plan.ready_mark(
        plan.SETS, NS, ["a", "b", "c"], {"a": ready_child("True"), "b": ready_child("False", message="no node"),
                                         "c": None})
    assert (type_, status, reason) == ("DPUSetsReady", "False", "Pending")
    assert message == (f"Objects are not ready: DPUSet {NS}/b is not ready (DPUsReady: no node); "
                       f"DPUSet {NS}/c does not exist yet")
    stale = plan.ready_mark(plan.SERVICES, NS, ["a"], {"a": ready_child("True", generation=2)})
    assert stale[1] == "False"
    assert "not reconciled at its current generation" in stale[3]
    assert plan.ready_mark(plan.CHAINS, NS, [], {})[1] == "True"  # nothing wanted: nothing to wait for


@pytest.mark.parametrize("change", ["default", "drop", "edit"])
def test_child_differs_ignores_server_defaults_but_not_a_dropped_or_edited_field(change: str) -> None:
    dd, templates, configurations = example()
    desired = plan.plan_children(dd, templates, configurations)["DPUSet"]["ovn-hbn-dpuset1"]
    current = copy.deepcopy(desired)
    current["spec"]["dpuTemplate"]["spec"]["automaticNodeReboot"] = True  # the CRD's default
    current["metadata"]["labels"]["someone/else"] = "x"
    if change == "default":
        assert not plan.child_differs(current, desired)
        return
    if change == "drop":
        dd["spec"]["dpus"]["dpuSets"][0].pop("nodeSelector")
        desired = plan.plan_children(dd, templates, configurations)["DPUSet"]["ovn-hbn-dpuset1"]
    else:
        current["spec"]["dpuTemplate"]["spec"]["dpuFlavor"] = "edited-by-hand"
    assert plan.child_differs(current, desired)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=5, unique=True),
       ifnames=st.lists(st.text(min_size=1, max_size=20), max_size=4, unique=True),
       need=st.sampled_from(["1", "500m", "1.5", "6Gi", "512Mi", "1e3", "0.001", "2k", "0"]))
def test_any_names_and_quantities_plan_without_crashing(keys: list[str], ifnames: list[str], need: str) -> None:
    dd = {"metadata": {"name": "d", "namespace": NS, "uid": "u"},
          "spec": {"dpus": {"bfb": "b", "flavor": "f", "dpuSets": [{"nameSuffix": "s"}]},
                   "services": {k: {"serviceTemplate": "t", "serviceConfiguration": "c"} for k in keys},
                   "serviceChains": [{"ports": [{"service": {"name": keys[0], "interface": "x"}}]}]}}
    templates = {k: {"spec": {"deploymentServiceName": k, "helmChart": {"source": {"repoURL": "oci://r",
                                                                                   "version": "1"}},
                              "resourceRequirements": {"cpu": need}}} for k in keys}
    configurations = {k: {"spec": {"deploymentServiceName": k,
                                   "interfaces": [{"name": i, "network": "n"} for i in ifnames] or None}}
                      for k in keys}
    children = plan.plan_children(dd, templates, configurations)
    assert len(children["DPUService"]) == len(keys)
    assert len(children["DPUServiceInterface"]) <= len(keys) * len(ifnames)
    for by_name in children.values():
        for child in by_name.values():
            assert child["metadata"]["labels"] == {plan.OWNER_LABEL: f"{NS}_d"}
    assert plan.prerequisite_problems(dd, plan.Dependencies({"metadata": {}}, {"metadata": {}}, templates,
                                                            configurations)) == []
    # A flavor with room for exactly the sum fits; one millicore less names cpu.
    total = plan.quantity(need) * len(keys)
    exact = {"metadata": {"name": "f"}, "spec": {"dpuResources": {"cpu": str(total)}}}
    assert plan.fitting_problem(templates, exact) == ""
    if total > 0:
        short = {"metadata": {"name": "f"}, "spec": {"dpuResources": {"cpu": str(total - plan.quantity("1m"))}}}
        assert "cpu: the services need" in plan.fitting_problem(templates, short)
