"""Status a user can trust, on the real bed (controller process, DPU agent processes, OVS): every object's
verdict travels from the SFC programmer to the host cluster's DPUServiceInterface / DPUServiceChain with a
reason that says what kind of problem it is. A chain waiting for its pod is Pending; a port held by something
else is an Error naming the port and the fix; an interface the agent refuses is a Failure naming the field
while the good ones beside it on the same node go Ready; ovs-vswitchd going away turns Ready False within
seconds and back when it returns; a controller restart does not flap Ready.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kubernetes import watch
from urllib3.exceptions import ProtocolError

from dpf.lab import chains
from dpf.lab.bed.process import wait_until

from .conftest import Bed

TIMEOUT = 30
SVC = ("svc.dpu.nvidia.com", "v1alpha1")


def uplink(namespace: str, group: str, name: str, netdev: str) -> dict[str, Any]:
    """A DPUServiceInterface for netdev `netdev` on every DPU of the bed, labelled uplink=<name>."""
    return {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "DPUServiceInterface",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {"nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                                           "template": {"metadata": {"labels": {"uplink": name}},
                                                        "spec": {"interfaceType": "physical",
                                                                 "physical": {"interfaceName": netdev}}}}}}}


def fabric_chain(namespace: str, group: str, name: str, *ports: str) -> dict[str, Any]:
    """A DPUServiceChain joining the uplinks `ports` in one switch on every DPU of the bed."""
    switch = {"ports": [{"serviceInterface": {"matchLabels": {"uplink": p}}} for p in ports]}
    return {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "DPUServiceChain",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {"nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                                           "template": {"spec": {"switches": [switch]}}}}}}


def condition_with(bed: Bed, plural: str, name: str, type_: str, reason: str, text: str) -> dict | None:
    found = bed.host_reader.condition(plural, bed.namespace, name, type_)
    if found and found["status"] == "False" and found["reason"] == reason and text in found.get("message", ""):
        return found
    return None


def test_a_waiting_chain_is_pending_and_a_port_conflict_is_an_error_naming_port_and_fix(bed: Bed) -> None:
    a = bed.nodes[0]
    ns = bed.namespace
    objects = chains.hbn_only(ns, bed.group)
    bed.apply(objects)
    # No HBN pod on dpu-a yet: the chain waits for it, which is Pending, with the agent's words.
    waiting = wait_until(lambda: condition_with(bed, "dpuservicechains", "hbn-to-fabric", "ServiceChainSetReady",
                                                "Pending", "no pod of service doca-hbn on this node yet"),
                         TIMEOUT, "the chain Pending, waiting for the HBN pod")
    assert f"hbn-to-fabric-{a}" in waiting["message"]

    # Somebody moves dpu-a's uplink p1 to a bridge of their own: dpf may not take it back.
    ovs = bed.dpus[a].ovs
    assert ovs is not None
    ovs.add_bridge("br-other", fail_mode="standalone")
    ovs.vsctl("del-port", "br-sfc", "p1", "--", "add-port", "br-other", "p1")
    for plural, name, type_ in (("dpuserviceinterfaces", "p1", "ServiceInterfaceSetReady"),
                                ("dpuservicechains", "hbn-to-fabric", "ServiceChainSetReady")):
        found = wait_until(lambda p=plural, n=name, t=type_: condition_with(
            bed, p, n, t, "Error", "port p1 exists on bridge br-other"), TIMEOUT, f"{name}'s conflict as an Error")
        assert "move or delete it by hand" in found["message"], found
        assert a in found["message"], "the message names the node"
    wait_until(lambda: bed.host_reader.is_ready("dpuserviceinterfaces", ns, "p0"), TIMEOUT, "p0, untouched, Ready")

    # Freed by hand: dpf plugs p1 again and the chain is back to waiting for its pod only.
    ovs.vsctl("del-port", "br-other", "p1")
    wait_until(lambda: bed.host_reader.is_ready("dpuserviceinterfaces", ns, "p1"), TIMEOUT, "p1 Ready again")
    wait_until(lambda: condition_with(bed, "dpuservicechains", "hbn-to-fabric", "ServiceChainSetReady", "Pending",
                                      "no pod of service doca-hbn"), TIMEOUT, "the chain Pending again")


def test_one_refused_interface_does_not_block_the_good_ones_on_its_node(bed: Bed) -> None:
    ns = bed.namespace
    # The bridge's own port as an "uplink": the agent refuses that one object, naming the field.
    bed.apply([uplink(ns, bed.group, "bridge-port", "br-sfc"), uplink(ns, bed.group, "p0", "p0"),
               uplink(ns, bed.group, "p1", "p1")])
    for name in ("p0", "p1"):
        wait_until(lambda n=name: bed.host_reader.is_ready("dpuserviceinterfaces", ns, n), TIMEOUT, f"{name} Ready")
    found = wait_until(lambda: condition_with(bed, "dpuserviceinterfaces", "bridge-port", "ServiceInterfaceSetReady",
                                              "Failure", "spec.physical.interfaceName: 'br-sfc'"),
                       TIMEOUT, "the refused interface's field named")
    assert "name the uplink netdev" in found["message"], found
    assert not bed.host_reader.is_ready("dpuserviceinterfaces", ns, "bridge-port")
    for dpu in bed.dpus.values():
        assert {"p0", "p1"} <= set(dpu.ports()), "the good interfaces are programmed on every DPU"


def test_ready_follows_ovs_vswitchd_down_and_back(bed: Bed) -> None:
    a = bed.nodes[0]
    ns = bed.namespace
    bed.apply([uplink(ns, bed.group, "p0", "p0"), uplink(ns, bed.group, "p1", "p1"),
               fabric_chain(ns, bed.group, "fabric", "p0", "p1")])
    wait_until(lambda: bed.host_reader.is_ready("dpuservicechains", ns, "fabric"), TIMEOUT, "the chain Ready")
    ovs = bed.dpus[a].ovs
    assert ovs is not None
    stopped = time.monotonic()
    ovs.stop_vswitchd()
    try:
        found = wait_until(lambda: condition_with(bed, "dpuservicechains", "fabric", "ServiceChainSetReady", "Error",
                                                  "OpenFlow connection to br-sfc is lost"),
                           10, "Ready False once ovs-vswitchd is gone")
        noticed = time.monotonic() - stopped
        assert a in found["message"]
        assert bed.host_reader.condition("dpuservicechains", ns, "fabric")["status"] == "False"
    finally:
        restarted = time.monotonic()
        ovs.start_vswitchd()
    wait_until(lambda: bed.host_reader.is_ready("dpuservicechains", ns, "fabric"), TIMEOUT,
               "the chain Ready again once ovs-vswitchd is back")
    print(f"\nReady=False on the DPUServiceChain {noticed:.2f}s after ovs-vswitchd stopped; "
          f"Ready again {time.monotonic() - restarted:.2f}s after it started")


def test_a_controller_restart_does_not_flap_ready(bed: Bed) -> None:
    ns = bed.namespace
    bed.apply([uplink(ns, bed.group, "p0", "p0"), uplink(ns, bed.group, "p1", "p1"),
               fabric_chain(ns, bed.group, "fabric", "p0", "p1")])
    wait_until(lambda: bed.host_reader.is_ready("dpuservicechains", ns, "fabric"), TIMEOUT, "the chain Ready")
    seen: list[tuple[float, str, str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    watcher = watch.Watch()

    def observe() -> None:
        """Every write of the chain's status: the first event is the object as it is (ADDED), then each change."""
        try:
            for event in watcher.stream(bed.host_reader.custom.list_namespaced_custom_object, *SVC, ns,
                                        "dpuservicechains", field_selector="metadata.name=fabric", timeout_seconds=60):
                for c in (event["object"].get("status") or {}).get("conditions") or ():
                    if c["type"] in ("Ready", "ServiceChainSetReady"):
                        seen.append((time.monotonic(), c["type"], c["status"]))
                if stop.is_set():
                    return
        except ProtocolError as exc:  # the connection closed under a stopped watch; before that it is a failure
            if not stop.is_set():
                failures.append(exc)

    thread = threading.Thread(target=observe, daemon=True)
    thread.start()
    started = time.monotonic()
    bed.controller.stop()
    bed.controller.start()
    # Long enough for the agents to reconnect and report, and for any flap of today's kind (about 6 s) to show.
    time.sleep(12)
    stop.set()
    watcher.stop()
    thread.join(5)
    assert failures == [], failures
    assert seen, "the watch saw the chain"
    assert bed.host_reader.is_ready("dpuservicechains", ns, "fabric")
    flaps = [(round(t - started, 2), type_) for t, type_, status in seen if status != "True"]
    assert flaps == [], f"Ready went False during the restart: {flaps}"
