"""The pure rules behind "one bad object affects only itself" and "conflicts are decided by age": the snapshot
builders hold back a bad or conflicting object with a reason naming the field or the holder, and everything
else is still sent; condition messages stay within what the apiserver stores. The same rules against a real
apiserver and controller: `test_bad_input.py`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from dpf.controller.api import conditions as cond
from dpf.controller.api.svc_network import DPUServiceIPAMSpec
from dpf.controller.cache import servicechains, serviceinterfaces
from dpf.controller.cache.snapshot import Snapshot
from dpf.proto.v1 import sfc_pb2

NS = "ns"
OLD, NEW = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def si(name: str, created: str, labels: dict[str, str] | None = None, **spec: object) -> dict:
    spec = spec or {"interfaceType": "physical", "physical": {"interfaceName": name[:15]}}
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": created,
                         "generation": 1, "labels": labels or {"if": name}},
            "spec": {"node": "dpu-1", **spec}}


def chain(name: str, created: str, *selectors: dict[str, str]) -> dict:
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": created},
            "spec": {"node": "dpu-1", "switches": [{"ports": [{"serviceInterface": {"matchLabels": s}}
                                                              for s in selectors]}]}}


def ports_of(snapshot: Snapshot, name: str) -> list[str]:
    message = sfc_pb2.ServiceChain()
    snapshot.resources[f"{NS}/{name}"].body.Unpack(message)
    return [p.service_interface for s in message.switches for p in s.ports]


@pytest.mark.parametrize(("spec", "field", "says"), [
    ({"interfaceType": "vf", "vf": {"pfID": 0, "vfID": 2**31}}, "spec.vf.vfID", "less than or equal to 4095"),
    ({"interfaceType": "vf", "vf": {"pfID": 0, "vfID": 2**53 + 1}}, "spec.vf.vfID", "less than or equal to 4095"),
    ({"interfaceType": "vf", "vf": {"pfID": 0, "vfID": -(2**31) - 1}}, "spec.vf.vfID", "greater than or equal to 0"),
    ({"interfaceType": "pf", "pf": {"pfID": -1}}, "spec.pf.pfID", "greater than or equal to 0"),
    ({"interfaceType": "physical", "physical": {"interfaceName": "x" * 16}}, "spec.physical.interfaceName",
     "at most 15 characters"),
])
def test_an_interface_the_node_could_never_get_is_held_back_alone(spec: dict, field: str, says: str) -> None:
    """Before: `ValueError: Value out of range` on every pass, so no interface on any node was published."""
    plan = serviceinterfaces.plan_serviceinterfaces([si("a-bad", OLD, **spec), si("p0", NEW)])
    assert list(plan.snapshot.resources) == [f"{NS}/p0"], "the good interface is still sent"
    why = plan.held_back[f"{NS}/a-bad"]
    assert why.startswith(f"{field}: "), why
    assert says in why, why
    assert why.endswith("fix the spec"), why


def test_a_second_interface_on_a_port_waits_for_the_elder_whatever_its_name() -> None:
    holder = si("p0", OLD)
    newcomer = si("a-p0-again", NEW, interfaceType="physical", physical={"interfaceName": "p0"})
    for objects in ([holder, newcomer], [newcomer, holder]):
        plan = serviceinterfaces.plan_serviceinterfaces(objects)
        assert list(plan.snapshot.resources) == [f"{NS}/p0"]
        assert plan.held_back[f"{NS}/a-p0-again"].startswith(
            f"OVS port p0 is already taken by ServiceInterface {NS}/p0 (created {OLD}; the elder keeps it)")
    pf = [si("pf-old", OLD, interfaceType="pf", pf={"pfID": 1}), si("a-pf", NEW, interfaceType="pf", pf={"pfID": 1})]
    assert "OVS port pf1hpf is already taken by ServiceInterface ns/pf-old" in \
        serviceinterfaces.plan_serviceinterfaces(pf).held_back[f"{NS}/a-pf"]
    same_second = [si("z", OLD, interfaceType="ovn"), si("a", OLD, interfaceType="ovn")]
    same_second[1]["metadata"]["uid"] = "uid-zz"  # the uid breaks a tie within a second, not the name
    assert list(serviceinterfaces.plan_serviceinterfaces(same_second).held_back) == [f"{NS}/a"]


def test_a_newcomer_matching_a_running_chains_selector_waits_unless_a_chain_uses_it() -> None:
    holder, newcomer = si("p0", OLD, {"uplink": "p0"}), si("a-p5", NEW, {"uplink": "p0"})
    running = chain("hbn-to-fabric", OLD, {"uplink": "p0"})
    plan = serviceinterfaces.plan_serviceinterfaces([holder, newcomer], chains=[running])
    assert list(plan.snapshot.resources) == [f"{NS}/p0"]
    assert plan.held_back[f"{NS}/a-p5"].startswith(
        f"its labels also match switches[0].ports[0] selector uplink=p0 of ServiceChain {NS}/hbn-to-fabric, "
        f"which keeps the elder ServiceInterface {NS}/p0 (created {OLD})")
    snapshot, problems = servicechains.compute_servicechains([running], [holder, newcomer])
    assert problems == {}
    assert ports_of(snapshot, "hbn-to-fabric") == ["p0"]

    # A chain that uses the newcomer through a selector of its own keeps it: a new chain whose selector
    # matches both never takes a port away from a running chain.
    own = chain("uses-p5", NEW, {"if": "p5"})
    newcomer["metadata"]["labels"]["if"] = "p5"
    plan = serviceinterfaces.plan_serviceinterfaces([holder, newcomer], chains=[running, own])
    assert plan.held_back == {}
    assert len(plan.snapshot.resources) == 2


def test_an_interface_is_a_port_of_the_elder_chain_only_whatever_the_names() -> None:
    interfaces = [si("p0", OLD, {"uplink": "p0"}), si("p1", OLD, {"uplink": "p1"}), si("sf", OLD, {"svc": "x"})]
    running = chain("hbn-to-fabric", OLD, {"uplink": "p0"}, {"uplink": "p1"})
    newcomer = chain("a-chain", NEW, {"uplink": "p1"}, {"svc": "x"})
    snapshot, problems = servicechains.compute_servicechains([newcomer, running], interfaces)
    assert list(snapshot.resources) == [f"{NS}/hbn-to-fabric"]
    assert ports_of(snapshot, "hbn-to-fabric") == ["p0", "p1"]
    assert problems == {f"{NS}/a-chain": (
        f"ServiceInterface {NS}/p1 is already a port of ServiceChain {NS}/hbn-to-fabric (created {OLD}; the "
        "elder keeps it); this chain waits until that chain lets go of it")}
    twice = chain("twice", NEW, {"svc": "x"}, {"svc": "x"})
    assert "matched by more than one port" in servicechains.compute_servicechains([twice], interfaces)[1][
        f"{NS}/twice"]


def test_a_chain_on_a_held_back_interface_says_so_and_others_are_sent() -> None:
    bad = si("p9", OLD, {"uplink": "p9"}, interfaceType="vf", vf={"pfID": 0, "vfID": 2**31})
    good = si("p0", OLD, {"uplink": "p0"})
    snapshot, problems = servicechains.compute_servicechains(
        [chain("on-bad", OLD, {"uplink": "p9"}), chain("on-good", OLD, {"uplink": "p0"})], [bad, good])
    assert list(snapshot.resources) == [f"{NS}/on-good"]
    assert "selector uplink=p9 matches no ServiceInterface" in problems[f"{NS}/on-bad"]


def test_condition_messages_are_bounded_keeping_what_failed_and_the_fix() -> None:
    message = "spec.nodeSelector " + "v" * 60_000 + " selects no DPU node yet; fix the selector"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    [written] = cond.set_condition(None, "Ready", "False", "Pending", message, now=now)
    assert len(written.message) == cond.MESSAGE_LIMIT
    assert written.message.startswith("spec.nodeSelector vvv")
    assert written.message.endswith("selects no DPU node yet; fix the selector")
    assert cond.TRUNCATED in written.message
    assert cond.bounded("short") == "short"


@pytest.mark.parametrize(("network", "field", "says"), [
    ({"network": "10.0.120.0/22", "prefixSize": 33}, "prefixSize", "must be between the network's prefix length 22"
                                                                    " and 32"),
    ({"network": "10.0.120.0/22", "prefixSize": 16}, "prefixSize", "must be between"),
    ({"network": "not-a-cidr", "prefixSize": 24}, "network", "is not a CIDR"),
    ({"network": "10.0.0.0/8", "prefixSize": 24, "exclusions": ["10.1"]}, "exclusions[0]", "is not a single IP"),
])
def test_an_ipam_spec_the_split_cannot_use_is_refused_by_the_model(network: dict, field: str, says: str) -> None:
    """Before: `prefixSize: 33` raised inside the split and the object never got a status; now the model
    refuses it, which the IPAM reconciler reports on the object's DPUIPAMObjectReconciled condition."""
    with pytest.raises(ValidationError) as refused:
        DPUServiceIPAMSpec.model_validate({"ipv4Network": network})
    error = refused.value.errors()[0]
    assert error["loc"] == ("ipv4Network",)
    assert error["msg"].startswith(f"Value error, {field} "), error["msg"]
    assert says in error["msg"], error["msg"]
