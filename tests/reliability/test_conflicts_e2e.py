"""A newcomer never takes a port from a running chain, with the data plane: while a 20/s ping crosses the
hbn_only chain on real OVS, a second interface on p0, an interface with p0's labels and a new chain on p1,
each named to sort before what it contends with (the name decided before), are applied. Every one waits with
a condition naming the holder; not one ping is lost and the chain's flows are exactly those it had.
"""

from __future__ import annotations

import copy

from dpf.agent.sfc.desired import chain_cookie
from dpf.lab import chains
from dpf.lab.bed.process import wait_until
from tests.e2e.conftest import Bed
from tests.e2e.test_sfc_chain import TIMEOUT, cookie_flows, ping_while, plug_hbn


def _renamed(obj: dict, name: str) -> dict:
    out = copy.deepcopy(obj)
    out["metadata"]["name"] = name
    return out


def test_newcomers_named_first_wait_and_the_running_chain_loses_no_packet(bed: Bed) -> None:
    a = bed.nodes[0]
    ns, reader = bed.namespace, bed.host_reader
    fabric = bed.dpus[a].pods
    hbn = plug_hbn(bed, a)
    objects = {o["metadata"]["name"]: o for o in chains.hbn_only(ns, bed.group)}
    bed.apply([o for o in objects.values() if o["kind"] == "DPUServiceInterface"])
    bed.apply([objects["hbn-to-fabric"]])
    wait_until(lambda: reader.is_ready("dpuservicechains", ns, "hbn-to-fabric"), TIMEOUT, "the chain Ready")
    assert fabric["fa0"].ping(hbn["p0"].ip, count=5, wait=3)
    cookie = chain_cookie(ns, f"hbn-to-fabric-{a}")
    flows = sorted(cookie_flows(bed.dpus[a].flows(), cookie))
    assert len(flows) == 4

    second_on_p0 = _renamed(objects["p0"], "a-p0-port")
    second_on_p0["spec"]["template"]["spec"]["template"]["metadata"]["labels"] = {"uplink": "p0-again"}
    twin_of_p0 = _renamed(objects["p0"], "a-p0-twin")  # a netdev of its own, the labels of p0
    twin_of_p0["spec"]["template"]["spec"]["template"]["spec"]["physical"]["interfaceName"] = "p5"
    chain_on_p1 = _renamed(objects["hbn-to-fabric"], "a-chain")
    chain_on_p1["spec"]["template"]["spec"]["template"]["spec"]["switches"] = [
        {"ports": [{"serviceInterface": {"matchLabels": {"uplink": "p1"}}},
                   {"serviceInterface": {"matchLabels": {"svc.dpu.nvidia.com/interface": "p1_sf"}}}]}]
    waits = [("dpuserviceinterfaces", "a-p0-port", "ServiceInterfaceSetReady",
              f"OVS port p0 is already taken by ServiceInterface {ns}/p0-{a}"),
             ("dpuserviceinterfaces", "a-p0-twin", "ServiceInterfaceSetReady",
              f"which keeps the elder ServiceInterface {ns}/p0-{a}"),
             ("dpuservicechains", "a-chain", "ServiceChainSetReady",
              f"is already a port of ServiceChain {ns}/hbn-to-fabric-{a}")]

    def newcomers_arrive() -> None:
        bed.apply([second_on_p0, twin_of_p0, chain_on_p1])
        for plural, name, type_, holder in waits:
            wait_until(lambda p=plural, n=name, t=type_, h=holder: _says(reader.condition(p, ns, n, t), h), TIMEOUT,
                       f"{name} waiting, naming its holder")

    out = ping_while(fabric["fa0"].netns, hbn["p0"].ip, newcomers_arrive)
    assert " 0% packet loss" in out, out
    assert reader.is_ready("dpuservicechains", ns, "hbn-to-fabric")
    assert sorted(cookie_flows(bed.dpus[a].flows(), cookie)) == flows, "the running chain's flows are untouched"
    assert cookie_flows(bed.dpus[a].flows(), chain_cookie(ns, f"a-chain-{a}")) == []
    assert fabric["fa1"].ping(hbn["p1"].ip, count=3, wait=3)


def _says(condition: dict | None, text: str) -> dict | None:
    return condition if condition and condition.get("status") == "False" and text in condition.get("message", "") \
        else None
