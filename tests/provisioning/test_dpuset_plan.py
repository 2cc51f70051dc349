"""The pure DPUSet plan and its status (controller/provisioning/dpuset_plan.py, dpuset_status.py), table-driven,
no apiserver: which DPUs a set wants, stale deletions, rolling-update pacing, nodeLabels merge, adoption,
name conflicts, spec errors and what the conditions say."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dpf.controller.api import conditions as cond
from dpf.controller.api.provisioning import DPUSet
from dpf.controller.provisioning import dpuset_status
from dpf.controller.provisioning.dpuset_plan import (
    HOST_IP_LABEL,
    PCI_ADDRESS_LABEL,
    PF_NAME_LABEL,
    SET_NAME_LABEL,
    SET_NAMESPACE_LABEL,
    compute_plan,
    max_unavailable,
    owner_reference,
)

NS = "fleet"
ENABLED = "feature.node.kubernetes.io/dpu-enabled"
PCI0 = "feature.node.kubernetes.io/dpu-0-pci-address"
PF0 = "feature.node.kubernetes.io/dpu-0-pf0-name"
PCI1 = "feature.node.kubernetes.io/dpu-1-pci-address"


def node(name: str, pci: str | None = "0000-04-00", ip: str | None = "10.0.0.1", **labels: str) -> dict[str, Any]:
    all_labels = {ENABLED: "true", **({PCI0: pci} if pci is not None else {}), PF0: "ens1f0np0", **labels}
    addresses = [{"type": "Hostname", "address": name}] + ([{"type": "InternalIP", "address": ip}] if ip else [])
    return {"metadata": {"name": name, "labels": all_labels}, "status": {"addresses": addresses}}


def dpuset(strategy: str = "RollingUpdate", max_unavailable: Any = 1, bfb: str = "bf-bundle",
           flavor: str = "hbn", **spec: Any) -> dict[str, Any]:
    strategy_block: dict[str, Any] = {"type": strategy}
    if strategy == "RollingUpdate" and max_unavailable is not None:
        strategy_block["rollingUpdate"] = {"maxUnavailable": max_unavailable}
    return {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPUSet",
            "metadata": {"name": "set", "namespace": NS, "uid": "set-uid", "generation": 1,
                         "labels": {"team": "net"}},
            "spec": {"nodeSelector": {"matchLabels": {ENABLED: "true"}}, "strategy": strategy_block,
                     "dpuTemplate": {"annotations": {"note": "from-template"},
                                     "spec": {"bfb": {"name": bfb}, "dpuFlavor": flavor,
                                              "nodeEffect": {"taint": {"key": "dpu", "value": "provisioning",
                                                                       "effect": "NoSchedule"}},
                                              "cluster": {"nodeLabels": {"role": "dpu"}},
                                              "automaticNodeReboot": True}},
                     **spec}}


def existing(want_set: dict[str, Any], node_name: str, pci: str = "0000-04-00", *, ready: bool = True,
             bfb: str = "bf-bundle", flavor: str = "hbn", phase: str = "Ready", uid: str | None = None,
             deleting: bool = False, owner: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    name = f"{node_name}-{pci}"
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "resourceVersion": "7",
                            "labels": {SET_NAME_LABEL: "set", SET_NAMESPACE_LABEL: NS},
                            "ownerReferences": [owner if owner is not None else owner_reference(want_set)]}
    if owner == {}:
        meta["ownerReferences"] = []
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "spec": {"nodeName": node_name, "bfb": bfb, "dpuFlavor": flavor,
                                       "cluster": {"nodeLabels": {"role": "dpu"}}, **spec},
            "status": {"phase": phase, "conditions": conditions}}


NODES = [node("w1", ip="10.0.0.1"), node("w2", ip="10.0.0.2"), node("w3", ip="10.0.0.3")]


def test_one_dpu_per_matching_node_with_upstream_name_labels_owner_and_template_spec() -> None:
    s = dpuset()
    plan = compute_plan(s, [*NODES, node("other", **{ENABLED: "false"})], [])
    assert [w.name for w in plan.creates] == ["w1-0000-04-00", "w2-0000-04-00", "w3-0000-04-00"]
    body = plan.creates[1].body
    assert body["metadata"] == {
        "name": "w2-0000-04-00", "namespace": NS,
        "labels": {"team": "net", SET_NAME_LABEL: "set", SET_NAMESPACE_LABEL: NS, PCI_ADDRESS_LABEL: "0000-04-00",
                   PF_NAME_LABEL: "ens1f0np0", HOST_IP_LABEL: "10.0.0.2"},
        "annotations": {"note": "from-template"},
        "ownerReferences": [{"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPUSet", "name": "set",
                             "uid": "set-uid", "controller": True, "blockOwnerDeletion": True}]}
    assert body["spec"] == {"nodeName": "w2", "bfb": "bf-bundle", "dpuFlavor": "hbn",
                            "nodeEffect": {"taint": {"key": "dpu", "value": "provisioning", "effect": "NoSchedule"}},
                            "automaticNodeReboot": True, "cluster": {"nodeLabels": {"role": "dpu"}}}
    assert plan.deletes == ()
    assert plan.patches == ()
    assert plan.wanted == 3
    # The body is a copy: editing it does not edit the DPUSet in the cache.
    body["spec"]["nodeEffect"]["taint"]["key"] = "changed"
    assert s["spec"]["dpuTemplate"]["spec"]["nodeEffect"]["taint"]["key"] == "dpu"


def test_nil_node_selector_selects_every_node_and_ipv6_is_not_a_label_value() -> None:
    s = dpuset()
    del s["spec"]["nodeSelector"]
    plan = compute_plan(s, [node("w1", ip="fd00::1"), node("cp", **{ENABLED: "false"})], [])
    assert [w.name for w in plan.creates] == ["cp-0000-04-00", "w1-0000-04-00"]
    assert HOST_IP_LABEL not in plan.creates[1].body["metadata"]["labels"]


@pytest.mark.parametrize(("selector", "expected"), [
    ({PCI1: "0000-05-00"}, ["w1-0000-05-00"]),
    ({PCI0: "0000-04-00", PCI1: "0000-05-00"}, ["w1-0000-04-00", "w1-0000-05-00"]),
    ({PCI1: "0000-99-00"}, []),  # the value differs: this node's DPU 1 is not selected
    ({"feature.node.kubernetes.io/dpu-1-ps-id": "MT_0000000884"}, ["w1-0000-05-00"]),
])
def test_dpu_selector_picks_dpu_indexes(selector: dict[str, str], expected: list[str]) -> None:
    two = node("w1", **{PCI1: "0000-05-00", "feature.node.kubernetes.io/dpu-1-ps-id": "MT_0000000884"})
    plan = compute_plan(dpuset(dpuSelector=selector), [two], [])
    assert [w.name for w in plan.creates] == expected
    assert plan.gaps == ()


def test_nodes_that_get_no_dpu_say_why() -> None:
    plan = compute_plan(dpuset(), [node("w1"), node("bare", pci=None), node("empty", pci=""),
                                   node("colons", pci="0000:04:00.0")], [])
    assert [w.name for w in plan.creates] == ["w1-0000-04-00"]
    gaps = {g.node: g for g in plan.gaps}
    assert gaps["bare"].severity == ""
    assert not gaps["bare"].warn
    assert "bare has no feature.node.kubernetes.io/dpu-0-pci-address label" in gaps["bare"].message
    assert gaps["empty"].severity == cond.PENDING
    assert "an empty" in gaps["empty"].message
    assert gaps["colons"].severity == cond.FAILURE
    assert "'colons-0000:04:00.0'" in gaps["colons"].message
    # A dpuSelector naming DPU 1 on a node without its PCI address: discovery is incomplete, the set waits.
    plan = compute_plan(dpuset(dpuSelector={"feature.node.kubernetes.io/dpu-1-ps-id": "X"}),
                        [node("w1", **{"feature.node.kubernetes.io/dpu-1-ps-id": "X"})], [])
    assert plan.creates == ()
    assert plan.gaps[0].severity == cond.PENDING
    assert "dpu-1-pci-address" in plan.gaps[0].message


@pytest.mark.parametrize(("change", "field"), [
    ({"nodeSelector": {"matchExpressions": [{"key": ENABLED, "operator": "Equals", "values": ["true"]}]}},
     "spec.nodeSelector.matchExpressions[0].operator 'Equals' is not one of"),
    ({"dpuSelector": {"dpu-0-pci-address": "x"}}, "spec.dpuSelector key 'dpu-0-pci-address' names no DPU"),
    ({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "ten"}}},
     "spec.strategy.rollingUpdate.maxUnavailable 'ten' must be"),
])
def test_spec_errors_plan_nothing_and_name_the_field(change: dict[str, Any], field: str) -> None:
    s = dpuset()
    s["spec"].update(change)
    plan = compute_plan(s, NODES, [existing(s, "w9", phase="")])
    assert field in plan.spec_error
    assert plan.creates == plan.deletes == plan.patches == ()
    assert plan.statistics == {"Initializing": 1}
    mark = dpuset_status.reconciled(plan, [])
    assert mark[1:3] == ("False", cond.FAILURE)
    assert field in mark[3]


def test_missing_bfb_name_is_a_spec_error() -> None:
    s = dpuset()
    del s["spec"]["dpuTemplate"]["spec"]["bfb"]
    assert "spec.dpuTemplate.spec.bfb.name is not set" in compute_plan(s, NODES, []).spec_error


@pytest.mark.parametrize(("value", "total", "expected"), [
    (None, 3, 1), (1, 3, 1), (0, 3, 1), (5, 3, 3), ("10%", 3, 1), ("34%", 3, 2), ("50%", 3, 2), ("100%", 3, 3),
    ("10%", 0, 1), (2, 0, 1), ("10%", 25, 3),
])
def test_max_unavailable_scales_up_and_clamps(value: Any, total: int, expected: int) -> None:
    assert max_unavailable(dpuset(max_unavailable=value), total) == expected


def test_dpus_of_nodes_that_left_are_deleted_with_the_reason() -> None:
    s = dpuset()
    dpus = [existing(s, "w1"), existing(s, "w2"), existing(s, "gone"), existing(s, "w3", deleting=True)]
    nodes = [NODES[0], node("w2", **{ENABLED: "false"})]
    plan = compute_plan(s, nodes, dpus)
    assert {(d.name, d.why) for d in plan.deletes} == {
        ("w2-0000-04-00", "node w2 no longer matches spec.nodeSelector"),
        ("gone-0000-04-00", "node gone no longer exists")}  # w3's DPU is already being deleted
    # Another set's DPUs (or unlabelled ones) are never touched.
    other = existing(s, "x", owner={"kind": "DPUSet", "name": "other", "uid": "other-uid", "controller": True})
    assert compute_plan(s, nodes, [other]).deletes == ()


def test_dpu_index_no_longer_selected_is_deleted() -> None:
    psid = "feature.node.kubernetes.io/dpu-1-ps-id"
    s = dpuset(dpuSelector={psid: "MT_1"})
    plan = compute_plan(s, [node("w1", **{PCI1: "0000-06-00", psid: "MT_1"})], [existing(s, "w1", "0000-05-00")])
    assert [w.name for w in plan.creates] == ["w1-0000-06-00"]
    assert [(d.name, d.why) for d in plan.deletes] == [
        ("w1-0000-05-00", "node w1 no longer selects this DPU (spec.dpuSelector or its PCI address label changed)")]


def rolled(s: dict[str, Any], dpus: list[dict[str, Any]], deleting: frozenset[str] = frozenset()) -> list[str]:
    return [d.name for d in compute_plan(s, NODES, dpus, deleting).deletes]


def test_rolling_update_replaces_at_most_max_unavailable_available_dpus() -> None:
    s = dpuset(bfb="bf-new")
    old = [existing(s, n) for n in ("w1", "w2", "w3")]
    assert rolled(s, old) == ["w1-0000-04-00"]
    plan = compute_plan(s, NODES, old)
    assert plan.outdated == ("w1-0000-04-00", "w2-0000-04-00", "w3-0000-04-00")
    assert "rolling update: 3 of 3 DPUs" in dpuset_status.reconciled(plan, [])[3]
    # While one is missing, deleted-but-still-cached, or recreated but not Ready yet, nothing else goes.
    assert rolled(s, old[1:]) == []
    assert rolled(s, old, frozenset({"uid-w1-0000-04-00"})) == []
    assert rolled(s, [existing(s, "w1", bfb="bf-new", ready=False, phase="Initializing"), *old[1:]]) == []
    # Once it is Ready, the next one goes.
    assert rolled(s, [existing(s, "w1", bfb="bf-new"), *old[1:]]) == ["w2-0000-04-00"]
    # A flavor change counts too; maxUnavailable 2 lets two go at once.
    s2 = dpuset(max_unavailable=2, flavor="hbn-2")
    assert rolled(s2, [existing(s2, n) for n in ("w1", "w2", "w3")]) == ["w1-0000-04-00", "w2-0000-04-00"]
    assert rolled(dpuset(max_unavailable="66%", flavor="hbn-2"), old) == ["w1-0000-04-00", "w2-0000-04-00"]


def test_outdated_dpus_that_are_already_unavailable_go_at_once() -> None:
    s = dpuset(bfb="bf-new")
    dpus = [existing(s, "w1"), existing(s, "w2", ready=False, phase="Error"), existing(s, "w3", ready=False)]
    assert rolled(s, dpus) == ["w2-0000-04-00", "w3-0000-04-00"]
    # A missing Ready condition is unavailable too (so is Unknown: only True counts as available).
    unknown = existing(s, "w1")
    unknown["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    assert rolled(s, [unknown, existing(s, "w2"), existing(s, "w3")]) == ["w1-0000-04-00"]


def test_recreate_never_replaces_and_says_so() -> None:
    s = dpuset(strategy="Recreate", bfb="bf-new")
    plan = compute_plan(s, NODES, [existing(s, n) for n in ("w1", "w2", "w3")])
    assert plan.deletes == ()
    assert plan.patches == ()
    mark = dpuset_status.reconciled(plan, [])
    assert mark[1:3] == ("False", cond.PENDING)
    assert "strategy Recreate replaces a DPU only when you delete it" in mark[3]


def test_rolling_update_merges_missing_node_labels_in_place() -> None:
    s = dpuset()
    s["spec"]["dpuTemplate"]["spec"]["cluster"]["nodeLabels"] = {"role": "dpu", "rack": "r1"}
    dpu = existing(s, "w1", cluster={"nodeLabels": {"role": "dpu", "provisioning.dpu.nvidia.com/host": "w1"}})
    plan = compute_plan(s, NODES[:1], [dpu])
    assert plan.deletes == ()
    assert [(p.name, p.body) for p in plan.patches] == [
        ("w1-0000-04-00", {"metadata": {"resourceVersion": "7"}, "spec": {"cluster": {"nodeLabels": {"rack": "r1"}}}})]
    s["spec"]["strategy"] = {"type": "Recreate"}
    assert compute_plan(s, NODES[:1], [dpu]).patches == ()


def test_orphans_are_adopted_and_foreign_names_are_reported_not_taken() -> None:
    s = dpuset()
    orphan = existing(s, "w1", owner={})
    foreign = existing(s, "w2", owner={"kind": "DPUSet", "name": "other", "uid": "o", "controller": True})
    foreign["metadata"]["labels"] = {SET_NAME_LABEL: "other", SET_NAMESPACE_LABEL: NS}
    dying = existing(s, "w3", owner={"kind": "DPUSet", "name": "old", "uid": "o2", "controller": True}, deleting=True)
    earlier = existing(s, "w4", owner={"kind": "DPUSet", "name": "set", "uid": "old-uid", "controller": True})
    plan = compute_plan(s, [*NODES, node("w4")], [orphan, foreign, dying, earlier])
    assert plan.creates == ()
    assert plan.deletes == ()
    assert [(p.name, p.body["metadata"]["ownerReferences"]) for p in plan.patches] == [
        ("w1-0000-04-00", [owner_reference(s)])]
    gaps = {g.node: g for g in plan.gaps}
    assert gaps["w2"].severity == cond.FAILURE
    assert "belongs to DPUSet other" in gaps["w2"].message
    assert gaps["w3"].severity == cond.PENDING
    assert not gaps["w3"].warn
    assert gaps["w4"].severity == cond.PENDING
    assert "earlier DPUSet of this name (uid old-uid)" in gaps["w4"].message
    assert dpuset_status.reconciled(plan, [])[2] == cond.FAILURE


def test_statistics_count_phases_like_upstream() -> None:
    s = dpuset()
    dpus = [existing(s, "w1", phase="Ready"), existing(s, "w2", phase=""), existing(s, "w3", phase="Rebooting"),
            existing(s, "w4", phase="OS Installing")]
    assert compute_plan(s, NODES, dpus).statistics == {"Ready": 1, "Initializing": 1, "OS Installing": 1}


def test_conditions_say_how_far_the_fleet_is() -> None:
    s = dpuset()
    nodes = [*NODES, node("bare", pci=None)]
    dpus = [existing(s, "w1"), existing(s, "w2", ready=False, phase="OS Installing")]
    plan = compute_plan(s, nodes, dpus)
    reconciled, ready = dpuset_status.marks(plan, s, [])
    # w3's DPU is created by this plan: reconciled; the DPU-less node is only mentioned.
    assert reconciled[1:3] == ("True", cond.SUCCESS)
    assert "node bare has no" in reconciled[3]
    assert ready[1:] == ("False", cond.PENDING, "1 of 3 DPUs are Ready; waiting for w2-0000-04-00 (OS Installing, "
                                                "not Ready), w3-0000-04-00 (missing)")
    errors = dpuset_status.reconciled(plan, ["creating DPU w3-0000-04-00: 422 Invalid"])
    assert errors[1:3] == ("False", cond.ERROR)
    everything = compute_plan(s, NODES, [existing(s, n) for n in ("w1", "w2", "w3")])
    assert [m[1] for m in dpuset_status.marks(everything, s, [])] == ["True", "True"]
    none = dpuset_status.dpus_ready(compute_plan(s, [], []), s)
    assert none[1] == "False"
    assert 'selects no host Node' in none[3]
    assert dpuset_status.CONDITION_TYPES == DPUSet.CONDITION_TYPES


def test_plan_is_deterministic_and_does_not_touch_its_input() -> None:
    s = dpuset(bfb="bf-new")
    dpus = [existing(s, n) for n in ("w3", "w1", "w2")]
    before = copy.deepcopy((s, NODES, dpus))
    first = compute_plan(s, list(reversed(NODES)), dpus)
    assert first == compute_plan(s, NODES, list(reversed(dpus)))
    assert (s, NODES, dpus) == before
