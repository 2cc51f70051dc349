"""The pure pieces of service chaining, table-driven: label selectors, chain port resolution, the per-node
children the sets write, the mirror's readiness message, and the DPU agent's translation of payloads and
programmer verdicts (and the older wire state they still carry)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dpf.agent.dpu import translate
from dpf.agent.sfc.model import ModelError, Verdict
from dpf.controller.cache import servicechains, serviceinterfaces
from dpf.controller.kube.selectors import SelectorError, matches, validate
from dpf.controller.reconcilers import mirror, nodeset, objects
from dpf.controller.reconcilers.dpuservicechain import DPUServiceChainReconciler
from dpf.controller.reconcilers.serviceinterfaceset import ServiceInterfaceSetReconciler
from dpf.proto.status import object_status, verdict_of
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import sfc_pb2

NS = "dpf-operator-system"


def si(name: str, labels: dict[str, str], node: str = "dpu-1", namespace: str = NS, **spec: object) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels, "generation": 1},
            "spec": {"node": node, "interfaceType": "physical", "physical": {"interfaceName": name}, **spec}}


def aged(obj: dict, created: str, uid: str = "") -> dict:
    """`obj` as the apiserver stamps it: creationTimestamp (and a uid)."""
    obj["metadata"].update(creationTimestamp=created, uid=uid or f"uid-{obj['metadata']['name']}")
    return obj


def chain(name: str, *switches: list[dict[str, str]], node: str = "dpu-1") -> dict:
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"node": node, "switches": [{"ports": [{"serviceInterface": {"matchLabels": s}} for s in sw]}
                                                for sw in switches]}}


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    (None, {}, True),
    ({}, {"a": "b"}, True),
    ({"matchLabels": {"a": "b"}}, {"a": "b", "c": "d"}, True),
    ({"matchLabels": {"a": "b"}}, {"a": "x"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "y"]}]}, {"a": "y"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
    ({"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "c", "operator": "Exists"}]}, {"a": "b"}, False),
])
def test_label_selectors_match_as_the_apiserver_does(selector, labels, expected) -> None:
    assert matches(selector, labels) is expected


def test_an_invalid_selector_names_the_field() -> None:
    with pytest.raises(SelectorError, match=r"spec.nodeSelector.matchExpressions\[0\].operator 'Equals'"):
        validate({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}, "spec.nodeSelector")
    with pytest.raises(SelectorError, match="values must be non-empty for operator In"):
        validate({"matchExpressions": [{"key": "a", "operator": "In"}]})


def test_chain_ports_resolve_to_the_eldest_matching_interface_of_the_node_and_namespace() -> None:
    interfaces = [si("p0", {"uplink": "p0"}), si("p1", {"uplink": "p1"}),
                  aged(si("a-sf", {"svc": "hbn", "if": "p1_sf"}), "2026-01-01T00:00:09Z"),
                  aged(si("sf0", {"svc": "hbn", "if": "p0_sf"}), "2026-01-01T00:00:05Z"),
                  si("other-ns", {"uplink": "p0"}, namespace="elsewhere")]
    good = servicechains.resolve(chain("c", [{"uplink": "p0"}, {"svc": "hbn", "if": "p0_sf"}]), interfaces)
    assert good.problem == ""
    assert [[p.service_interface for p in s.ports] for s in good.message.switches] == [["p0", "sf0"]]
    assert dict(good.message.switches[0].ports[1].match_labels) == {"svc": "hbn", "if": "p0_sf"}
    several = servicechains.resolve(chain("c", [{"svc": "hbn"}]), interfaces)
    assert several.interfaces() == [f"{NS}/sf0"], "the elder of two matches, not the first by name"

    bad = servicechains.resolve(chain("c", [{"uplink": "p0"}, {"svc": "hbn"}], [{"uplink": "p9"}]), interfaces)
    assert bad.message is None
    assert bad.problem == (
        f"switches[1].ports[0] selector uplink=p9 matches no ServiceInterface in namespace {NS} on node "
        "dpu-1; one must match, so the chain is not programmed")


def test_a_chain_that_does_not_resolve_is_left_out_whole_and_deleting_objects_do_not_count() -> None:
    gone = si("p1", {"uplink": "p1"})
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    snapshot, problems = servicechains.compute_servicechains(
        [chain("a", [{"uplink": "p0"}]), chain("b", [{"uplink": "p0"}, {"uplink": "p1"}])],
        [si("p0", {"uplink": "p0"}), gone])
    assert list(snapshot.resources) == [f"{NS}/a"]
    assert "selector uplink=p1 matches no ServiceInterface" in problems[f"{NS}/b"]


def test_a_service_interface_carries_its_one_pod() -> None:
    svc = si("sf0", {}, interfaceType="service", service={"serviceID": "hbn", "network": "n", "interfaceName": "p0_if"})
    svc["spec"].pop("physical")

    def pod(name: str, namespace: str = NS, service: str = "hbn", deleting: bool = False) -> dict:
        meta = {"name": name, "namespace": namespace, "labels": {"svc.dpu.nvidia.com/service": service}}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "spec": {"nodeName": "dpu-1"}}

    assert serviceinterfaces.match_pod(svc, [pod("hbn-1"), pod("x", service="other"), pod("y", "elsewhere")]) == \
        f"{NS}/hbn-1"
    assert serviceinterfaces.match_pod(svc, [pod("old", deleting=True), pod("new")]) == f"{NS}/new"
    assert serviceinterfaces.match_pod(svc, [pod("a"), pod("b")]) == "", "two pods: ambiguous, none"
    assert serviceinterfaces.match_pod(si("p0", {}), [pod("hbn-1")]) == "", "only service interfaces have pods"
    with_pod = serviceinterfaces.compute_serviceinterfaces([svc], [pod("hbn-1")])
    message = sfc_pb2.ServiceInterface()
    with_pod.resources[f"{NS}/sf0"].body.Unpack(message)
    assert message.pod == f"{NS}/hbn-1"
    assert with_pod.version != serviceinterfaces.compute_serviceinterfaces([svc], []).version, \
        "a pod arriving changes what the node gets"


def test_set_children_are_named_per_node_and_labelled_like_upstream() -> None:
    kinds = ServiceInterfaceSetReconciler.kinds
    owner = {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "ServiceInterfaceSet",
             "metadata": {"name": "p0-sf", "namespace": NS, "uid": "u1",
                          "annotations": {"team": "net", "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
             "spec": {"template": {"metadata": {"labels": {"svc.dpu.nvidia.com/interface": "p0_sf"}},
                                   "spec": {"interfaceType": "vf", "vf": {"vfID": 1, "pfID": 0,
                                                                           "parentInterfaceRef": "pf0"}}}}}
    reconciler = ServiceInterfaceSetReconciler.__new__(ServiceInterfaceSetReconciler)
    body = nodeset.child_body(kinds, owner, "dpu-7", reconciler.child_spec(owner, "dpu-7"),
                              reconciler.child_labels(owner))
    assert body["metadata"]["name"] == "p0-sf-dpu-7"
    assert body["metadata"]["labels"] == {
        "svc.dpu.nvidia.com/interface": "p0_sf", "svc.dpu.nvidia.com/serviceinterfaceset-name": "p0-sf",
        "svc.dpu.nvidia.com/serviceinterfaceset-namespace": NS, "svc.dpu.nvidia.com/nodeName": "dpu-7"}
    assert body["metadata"]["annotations"] == {"team": "net"}
    assert body["metadata"]["ownerReferences"][0] == {
        "apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "ServiceInterfaceSet", "name": "p0-sf", "uid": "u1",
        "controller": True, "blockOwnerDeletion": True}
    assert body["spec"] == {"interfaceType": "vf", "vf": {"vfID": 1, "pfID": 0, "parentInterfaceRef": "pf0-dpu-7"},
                            "node": "dpu-7"}
    owner["spec"]["template"]["spec"] = {"interfaceType": "service",
                                         "service": {"serviceID": "hbn", "network": "n", "interfaceName": "i"}}
    assert reconciler.child_labels(owner) == {"svc.dpu.nvidia.com/service-id": "hbn"}


def test_the_mirror_copies_the_template_and_explains_an_unready_child() -> None:
    kinds = DPUServiceChainReconciler.kinds
    parent = {"metadata": {"name": "c", "namespace": NS, "uid": "u-1"},
              "spec": {"template": {"metadata": {"labels": {"a": "b"}},
                                    "spec": {"nodeSelector": {"matchLabels": {"x": "y"}}, "template": {}}}}}
    assert mirror.child_body(kinds, parent) == {
        "apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "ServiceChainSet",
        "metadata": {"name": "c", "namespace": NS, "labels": {"a": "b", kinds.owner_label: "u-1"}},
        "spec": {"nodeSelector": {"matchLabels": {"x": "y"}}, "template": {}}}
    child = {"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "conditions": []}}
    assert "not reconciled at its current generation" in mirror.child_readiness("dpu", child, "ServiceChainSet", "c")
    child["status"] = {"observedGeneration": 2, "conditions": [
        {"type": "Ready", "status": "False", "message": "The following conditions are not ready: ServiceChainsReady"},
        {"type": "ServiceChainsReady", "status": "False", "message": "selector uplink=p9 matches no ServiceInterface"},
        {"type": "ServiceChainsReconciled", "status": "True", "message": ""}]}
    assert mirror.child_readiness("dpu", child, "ServiceChainSet", f"{NS}/c") == (
        f"ServiceChainSet {NS}/c in DPU cluster dpu: ServiceChainsReady: selector uplink=p9 matches no "
        "ServiceInterface")
    child["status"]["conditions"][0]["status"] = "True"
    assert mirror.child_readiness("dpu", child, "ServiceChainSet", "c") == ""


def test_conditions_summarize_and_keep_transition_times() -> None:
    obj = {"metadata": {"generation": 3}, "status": {}}
    t0, t1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    types = ("Ready", "ServiceChainsReconciled", "ServiceChainsReady")
    first = objects.build_conditions(obj, types, [("ServiceChainsReconciled", "True", "Success", ""),
                                                  ("ServiceChainsReady", "False", "Pending", "waiting")], t0)
    ready = next(c for c in first if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "Pending")
    assert ready.message == "The following conditions are not ready: ServiceChainsReady"
    obj["status"] = objects.status_body(obj, first)
    second = objects.build_conditions(obj, types, [("ServiceChainsReconciled", "True", "Success", ""),
                                                   ("ServiceChainsReady", "True", "Success", "")], t1)
    by_type = {c.type: c for c in second}
    assert by_type["Ready"].status == "True"
    assert by_type["ServiceChainsReconciled"].last_transition_time == t0, "unchanged status keeps its time"
    assert by_type["ServiceChainsReady"].last_transition_time == t1
    assert objects.status_body(obj, second)["observedGeneration"] == 3


def test_agent_translation_names_the_resource_and_the_field() -> None:
    service = sfc_pb2.ServiceSpec(service_id="hbn", network="n", interface_name="p0_if")
    message = sfc_pb2.ServiceInterface(interface_type="service", labels={"a": "b"}, service=service, pod=f"{NS}/hbn-1")
    model = translate.interface(f"{NS}/p0-sf-dpu-1", message)
    assert (model.key, model.service.pod, model.labels) == (f"{NS}/p0-sf-dpu-1", f"{NS}/hbn-1", (("a", "b"),))
    with pytest.raises(ModelError, match=rf"{NS}/x: spec.physical is required when spec.interfaceType is physical"):
        translate.interface(f"{NS}/x", sfc_pb2.ServiceInterface(interface_type="physical"))
    with pytest.raises(ModelError, match=rf"{NS}/y: physical.interfaceName: 'not a netdev name!' is not a valid"):
        translate.interface(f"{NS}/y", sfc_pb2.ServiceInterface(
            interface_type="physical", physical=sfc_pb2.PhysicalSpec(interface_name="not a netdev name!")))
    with pytest.raises(ModelError, match="resource name 'x' must be '<namespace>/<name>'"):
        translate.interface("x", message)
    empty = sfc_pb2.ServiceChain()
    with pytest.raises(ModelError, match=rf"{NS}/c: spec.switches has 0 entries"):
        translate.chain(f"{NS}/c", empty)


def test_an_uplink_naming_the_bridges_own_port_is_refused_naming_the_field() -> None:
    message = sfc_pb2.ServiceInterface(interface_type="physical",
                                       physical=sfc_pb2.PhysicalSpec(interface_name="br-sfc"))
    with pytest.raises(ModelError, match=rf"{NS}/up: spec.physical.interfaceName: 'br-sfc' is the bridge br-sfc's own "
                                         r"port, not an uplink; name the uplink netdev"):
        translate.interface(f"{NS}/up", message, "v1", frozenset({"br-sfc", "br-ovn"}))
    message.physical.interface_name = "p0"
    assert translate.interface(f"{NS}/up", message, "v1", frozenset({"br-sfc"})).version == "v1"


def test_every_programmer_verdict_has_a_wire_verdict_and_old_reports_still_read() -> None:
    assert set(translate.VERDICTS) == set(Verdict)
    for verdict, wire in translate.VERDICTS.items():
        sent = object_status("ns/x", "v1", wire, verdict.value)
        assert verdict_of(sent) == wire
        # What a controller that predates verdicts reads: PROGRAMMED is READY, everything else not.
        assert (sent.state == pb.OBJECT_STATE_READY) == (verdict is Verdict.PROGRAMMED)
    old = {pb.OBJECT_STATE_READY: pb.VERDICT_PROGRAMMED, pb.OBJECT_STATE_PROGRESSING: pb.VERDICT_PENDING,
           pb.OBJECT_STATE_FAILED: pb.VERDICT_FAILED}
    for state, verdict in old.items():
        assert verdict_of(pb.ObjectStatus(name="ns/x", state=state)) == verdict


