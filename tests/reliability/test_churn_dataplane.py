"""Create → delete churn against the real data plane: the end-to-end bed (host and DPU clusters, the controller
process, two emulated DPUs with their agents and Open vSwitch). A DPUServiceChain over both DPUs, then a
DPUServiceInterface, is created and deleted again 50+ times under the same name, at once or after a short
random wait; afterwards nothing of it is left anywhere: no object or finalizer in either cluster, no flow
with the chain's cookie, no `dpf-sfc-chain-*` bridge record, no port, on either DPU; the uplinks the chain
used are untouched.
"""

from __future__ import annotations

import random
import time

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.agent.sfc.desired import CHAIN_RECORD, chain_cookie
from dpf.lab import chains
from dpf.lab.bed.process import wait_until
from tests.e2e.conftest import Bed
from tests.e2e.test_sfc_chain import cookie_flows
from tests.reliability.test_churn import CYCLES_AT_ONCE, CYCLES_RANDOM_WAIT, MAX_WAIT, uplink_chain, uplink_interface

SETTLE_TIMEOUT = 30
TIMEOUT = 30


def create_when_free(api: k8s.CustomObjectsApi, plural: str, body: dict) -> None:
    """Create `body`, retrying while the previous incarnation still holds the name (terminating)."""
    while True:
        try:
            api.create_namespaced_custom_object(*chains.SVC, body["metadata"]["namespace"], plural, body)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        time.sleep(0.01)


def churn(bed: Bed, plural: str, body: dict, waits: random.Random | None, cycles: int,
          programmed: callable = lambda: False) -> int:  # type: ignore[valid-type]
    """Create then delete `body` `cycles` times; how often it was programmed on a DPU when deleted."""
    api = k8s.CustomObjectsApi(bed.host.client)
    hits = 0
    for _ in range(cycles):
        create_when_free(api, plural, body)
        if waits is not None:
            time.sleep(waits.uniform(0, MAX_WAIT))
            hits += bool(programmed())
        api.delete_namespaced_custom_object(*chains.SVC, bed.namespace, plural, body["metadata"]["name"])
    return hits


def bridge_records(bed: Bed, dpu: str) -> list[str]:
    """The chain records (`external_ids:dpf-sfc-chain-*`) on `dpu`'s br-sfc."""
    node = bed.dpus[dpu]
    if not node.has_bridge():
        return []
    assert node.ovs is not None
    ids = node.ovs.vsctl("--if-exists", "get", "Bridge", "br-sfc", "external_ids").stdout
    return [item.split("=", 1)[0].strip() for item in ids.strip().strip("{}").split(",")
            if item.strip().startswith(CHAIN_RECORD) or item.strip().startswith(f'"{CHAIN_RECORD}')]


def leftovers(bed: Bed, plural: str, set_plural: str, child_plural: str, name: str) -> list[str]:
    found = []
    if bed.host_reader.get(plural, bed.namespace, name) is not None:
        found.append(f"{plural}/{name}")
    dpu_reader = chains.Reader(bed.dpu_cluster.client)
    if dpu_reader.get(set_plural, bed.namespace, name) is not None:
        found.append(f"{set_plural}/{name}")
    found += [f"{child_plural}/{c['metadata']['name']}" for c in dpu_reader.list(child_plural, bed.namespace)
              if c["metadata"]["name"].startswith(f"{name}-")]
    return found


def test_churn_leaves_no_flow_record_or_port_on_the_dpus(bed: Bed) -> None:
    ns = bed.namespace
    for short, name in zip("ab", bed.nodes, strict=True):
        bed.dpus[name].uplink("p2", f"10.8{short == 'b':d}.2.1/24", f"f{short}2")
    uplinks = [uplink_interface(ns, bed.group, netdev, netdev) for netdev in ("p0", "p1")]
    bed.apply(uplinks)
    for obj in uplinks:
        wait_until(lambda o=obj: bed.host_reader.is_ready("dpuserviceinterfaces", ns, o["metadata"]["name"]),
                   TIMEOUT, f"DPUServiceInterface {obj['metadata']['name']} Ready")
    ports_before = {dpu: sorted(bed.dpus[dpu].ports()) for dpu in bed.nodes}
    assert all({"p0", "p1"} <= set(p) for p in ports_before.values())

    chain = uplink_chain(ns, bed.group, "churn")
    cookies = {dpu: chain_cookie(ns, f"churn-{dpu}") for dpu in bed.nodes}

    def chain_programmed() -> bool:
        return bool(cookie_flows(bed.dpus[bed.nodes[0]].flows(), cookies[bed.nodes[0]]))

    started = time.monotonic()
    churn(bed, "dpuservicechains", chain, None, CYCLES_AT_ONCE)
    programmed = churn(bed, "dpuservicechains", chain, random.Random(12), CYCLES_RANDOM_WAIT, chain_programmed)
    churned = time.monotonic() - started
    assert programmed, "the chain was programmed on a DPU at least once before it was deleted (path exercised)"

    def chain_gone() -> bool:
        return not leftovers(bed, "dpuservicechains", "servicechainsets", "servicechains", "churn") and \
            not any(cookie_flows(bed.dpus[d].flows(), cookies[d]) or bridge_records(bed, d) for d in bed.nodes)

    _settle(chain_gone, lambda: (leftovers(bed, "dpuservicechains", "servicechainsets", "servicechains", "churn"),
                                 {d: (len(cookie_flows(bed.dpus[d].flows(), cookies[d])), bridge_records(bed, d))
                                  for d in bed.nodes}), "the chain")
    chain_settled = time.monotonic() - started - churned

    interface = uplink_interface(ns, bed.group, "churn-if", "p2")
    started = time.monotonic()
    churn(bed, "dpuserviceinterfaces", interface, None, CYCLES_AT_ONCE)
    plugged = churn(bed, "dpuserviceinterfaces", interface, random.Random(12), CYCLES_RANDOM_WAIT,
                    lambda: "p2" in bed.dpus[bed.nodes[0]].ports())
    assert plugged, "the interface's port was on a DPU at least once before it was deleted (path exercised)"

    def interface_gone() -> bool:
        return not leftovers(bed, "dpuserviceinterfaces", "serviceinterfacesets", "serviceinterfaces", "churn-if") \
            and all(sorted(bed.dpus[d].ports()) == ports_before[d] for d in bed.nodes)

    _settle(interface_gone, lambda: (leftovers(bed, "dpuserviceinterfaces", "serviceinterfacesets",
                                               "serviceinterfaces", "churn-if"),
                                     {d: bed.dpus[d].ports() for d in bed.nodes}), "the interface")
    print(f"\nchain: {CYCLES_AT_ONCE + CYCLES_RANDOM_WAIT} cycles in {churned:.1f}s ({programmed} deleted while "
          f"programmed), nothing left {chain_settled:.1f}s later; interface: {plugged} deleted while plugged")


def _settle(done, describe, what: str) -> None:  # type: ignore[no-untyped-def]
    try:
        wait_until(done, SETTLE_TIMEOUT, f"nothing of {what} to be left")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; left: {describe()}") from None
