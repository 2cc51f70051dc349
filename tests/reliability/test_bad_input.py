"""One bad or newer object affects only itself, against the real apiserver and the controller, with an agent that
records what its node is sent (no data plane; the rules are the snapshot builders', `test_conflicts_pure.py`):

- objects stored before the CRDs had today's bounds (an upgrade) no longer block every node: the bad one is
  held back and its own condition names the field, every other interface is sent, a deletion completes;
- a DPUServiceIPAM whose prefixSize the split cannot use gets a status naming the field;
- a 60 KiB selector value still gets a written condition (messages are bounded);
- a newcomer never takes a port from a running chain, whatever its name: a second interface on p0, an
  interface with the labels of the chain's p0, a new chain on p1 all wait, naming the holder.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpf.agent.runtime.handlers import RecordingHandler
from dpf.controller.api import conditions as cond
from dpf.controller.kube.rest import Kind, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import (
    DPU_SERVICE_CHAIN,
    DPU_SERVICE_INTERFACE,
    DPU_SERVICE_IPAM,
    NODE,
    SERVICE_CHAIN_SET,
)
from dpf.lab import chains
from dpf.lab.bed.kube import CRD_DIR, ControlPlane
from dpf.proto.v1 import sfc_pb2
from tests.controlplane.harness import (
    agent,
    controller_settings,
    dpu_cluster,
    eventually,
    host_rest,
    node_files,
    run,
    started,
    stop_task,
)
from tests.ipam.harness import Nodes, network_pool

# -- an apiserver whose CRDs predate the bounds ------------------------------------------------------------

_BOUNDS = ("minimum", "maximum")  # string lengths stay: CEL cost estimates need them


def _relaxed(node: Any) -> Any:
    """A CRD schema as it was before the bounds: no numeric bounds, no prefixSize address-family rule."""
    if isinstance(node, dict):
        out = {k: _relaxed(v) for k, v in node.items() if k not in _BOUNDS}
        if "x-kubernetes-validations" in out:
            out["x-kubernetes-validations"] = [r for r in out["x-kubernetes-validations"]
                                               if "family() == 4 ?" not in r["rule"]]
        return out
    if isinstance(node, list):
        return [_relaxed(v) for v in node]
    return node


@pytest.fixture(scope="module")
def legacy_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    crds = tmp_path_factory.mktemp("legacy-crds")
    for path in CRD_DIR.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        relaxed = [_relaxed(d) if d.get("kind") == "CustomResourceDefinition" else d for d in docs]
        (crds / path.name).write_text(yaml.safe_dump_all(relaxed))
    with ControlPlane(tmp_path_factory.mktemp("kube-legacy"), name="legacy", crd_dir=crds) as cluster:
        yield cluster


@pytest.fixture
def legacy_namespace(legacy_kube: ControlPlane) -> str:
    name = f"legacy-{uuid.uuid4().hex[:6]}"
    legacy_kube.kubectl("create", "namespace", name)
    return name


# -- helpers -------------------------------------------------------------------------------------------------


def interface(namespace: str, name: str, group: str, labels: dict[str, str], spec: dict[str, Any]) -> dict:
    return {"apiVersion": DPU_SERVICE_INTERFACE.api_version, "kind": "DPUServiceInterface",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {
                "nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                "template": {"metadata": {"labels": labels}, "spec": spec}}}}}


def uplink(namespace: str, name: str, group: str, netdev: str, labels: dict[str, str] | None = None) -> dict:
    return interface(namespace, name, group, labels or {"uplink": netdev},
                     {"interfaceType": "physical", "physical": {"interfaceName": netdev}})


def chain(namespace: str, name: str, group: str, *switches: list[dict[str, str]]) -> dict:
    return {"apiVersion": DPU_SERVICE_CHAIN.api_version, "kind": "DPUServiceChain",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {
                "nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                "template": {"spec": {"switches": [{"ports": [{"serviceInterface": {"matchLabels": s}} for s in sw]}
                                                   for sw in switches]}}}}}}


async def condition(rest: Rest, kind: Kind, namespace: str, name: str, type_: str) -> dict | None:
    obj = await rest.get(kind, name, namespace)
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_), None)


async def says(rest: Rest, kind: Kind, namespace: str, name: str, type_: str, *texts: str) -> dict | None:
    found = await condition(rest, kind, namespace, name, type_)
    return found if found and all(t in found.get("message", "") for t in texts) else None


async def is_ready(rest: Rest, kind: Kind, namespace: str, name: str) -> bool:
    found = await condition(rest, kind, namespace, name, "Ready")
    return bool(found and found["status"] == "True")


class Bed:
    """A controller, one DPU Node and its agent recording the ServiceInterfaces and ServiceChains it is sent."""

    def __init__(self, kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
        self.kube, self.namespace, self.tmp_path = kube, namespace, tmp_path
        self.group = uuid.uuid4().hex[:6]
        self.node = f"dpu-{self.group}"
        self.interfaces = RecordingHandler(sfc_pb2.ServiceInterface)
        self.chains = RecordingHandler(sfc_pb2.ServiceChain)

    async def __aenter__(self) -> Bed:
        self.rest = await host_rest(self.kube.kubeconfig)
        await dpu_cluster(self.rest, self.namespace, self.kube.kubeconfig)
        self.controller = await started(Controller(controller_settings(self.kube.kubeconfig, self.namespace)))
        await self.rest.create(NODE, chains.dpu_node(self.node, self.group, hbn=True))
        runtime = agent(self.node, [self.controller.grpc_port], self.tmp_path / "state",
                        await node_files(self.rest, self.namespace, self.node, "dpu", self.tmp_path / "certs"),
                        self.interfaces)
        runtime.add_handler(self.chains)
        self.task = asyncio.create_task(runtime.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_task(self.task)
        await self.rest.delete(NODE, self.node)
        await self.controller.stop()
        await self.rest.close()

    def sent(self, name: str) -> str:
        """The snapshot name of a host object's per-node child on this bed's node."""
        return f"{self.namespace}/{name}-{self.node}"

    def chain_ports(self, name: str) -> list[str]:
        message = self.chains.desired.get(self.sent(name))
        return [p.service_interface for s in message.switches for p in s.ports] if message else []


# -- one bad object -----------------------------------------------------------------------------------------


def test_an_interface_stored_before_the_bounds_blocks_only_itself(legacy_kube: ControlPlane, legacy_namespace: str,
                                                                  tmp_path: Path) -> None:
    """Before: the snapshot builder raised on every pass, so p0 stayed Pending and p1's deletion hung."""
    namespace = legacy_namespace

    async def scenario() -> None:
        async with Bed(legacy_kube, namespace, tmp_path) as bed:
            bad = interface(namespace, "a-bad-vf", bed.group, {"vf": "bad"},
                            {"interfaceType": "vf", "vf": {"pfID": 0, "vfID": 2**31}})
            await bed.rest.apply(DPU_SERVICE_INTERFACE, bad, "test")
            for name, netdev in (("p0", "p0"), ("p1", "p1")):
                await bed.rest.apply(DPU_SERVICE_INTERFACE, uplink(namespace, name, bed.group, netdev), "test")
            await eventually(lambda: is_ready(bed.rest, DPU_SERVICE_INTERFACE, namespace, "p0"), "p0 Ready")
            assert set(bed.interfaces.desired) == {bed.sent("p0"), bed.sent("p1")}
            found = await eventually(lambda: says(bed.rest, DPU_SERVICE_INTERFACE, namespace, "a-bad-vf",
                                                  "ServiceInterfaceSetReady", "spec.vf.vfID"),
                                     "the bad interface's own condition naming the field")
            assert "less than or equal to 4095" in found["message"], found["message"]
            assert "fix the spec" in found["message"], found["message"]

            await bed.rest.delete(DPU_SERVICE_INTERFACE, "p1", namespace)
            await eventually(lambda: _gone(bed.rest, DPU_SERVICE_INTERFACE, namespace, "p1"), "p1's deletion")
            await eventually(lambda: bed.sent("p1") not in bed.interfaces.desired, "p1 removed from the node")
            assert bed.sent("p0") in bed.interfaces.desired

    run(scenario())


def test_an_ipam_pool_stored_before_the_bounds_gets_a_status_naming_the_field(
        legacy_kube: ControlPlane, legacy_namespace: str) -> None:
    """Before: `prefixSize: 33` raised inside the split on every pass and the object never got a status."""
    namespace, group = legacy_namespace, uuid.uuid4().hex[:6]

    async def scenario() -> None:
        rest = await host_rest(legacy_kube.kubeconfig)
        await dpu_cluster(rest, namespace, legacy_kube.kubeconfig)
        controller = await started(Controller(controller_settings(legacy_kube.kubeconfig, namespace)))
        nodes = Nodes(rest, group)
        try:
            await nodes.add(f"ipam-{group}")
            await rest.apply(DPU_SERVICE_IPAM, network_pool(namespace, "a-bad", group, prefix=33), "test")
            await rest.apply(DPU_SERVICE_IPAM, network_pool(namespace, "good", group, network="10.79.0.0/24"),
                             "test")
            found = await eventually(lambda: says(rest, DPU_SERVICE_IPAM, namespace, "a-bad",
                                                  "DPUIPAMObjectReconciled", "prefixSize 33"),
                                     "the bad pool's condition naming the field")
            assert found["reason"] == cond.FAILURE
            assert "and 32" in found["message"], found["message"]
            good = await eventually(lambda: _allocations(rest, namespace, "good"), "the good pool split")
            assert [a["nodeName"] for a in good] == [f"ipam-{group}"]
        finally:
            await nodes.cleanup()
            await controller.stop()
            await rest.close()

    run(scenario())


def test_a_60_kib_selector_value_still_gets_a_written_condition(kube: ControlPlane, namespace: str) -> None:
    """Before: the value echoed into the message broke metav1.Condition's 32768 limit; no status was written."""
    group, value = uuid.uuid4().hex[:6], "v" * 60 * 1024

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        try:
            huge = chain(namespace, "huge", group, [{"uplink": "p0"}])
            huge["spec"]["template"]["spec"]["nodeSelector"]["matchLabels"]["dpf.test/huge"] = value
            await rest.apply(DPU_SERVICE_CHAIN, huge, "test")
            found = await eventually(lambda: says(rest, SERVICE_CHAIN_SET, namespace, "huge", "ServiceChainsReady",
                                                  "selects no DPU node yet"), "the set's condition written")
            assert cond.TRUNCATED in found["message"]
            assert len(found["message"]) <= cond.MESSAGE_LIMIT
            assert found["message"].startswith('spec.nodeSelector {"matchLabels":')
            ready = await eventually(lambda: condition(rest, DPU_SERVICE_CHAIN, namespace, "huge",
                                                       "ServiceChainSetReady"), "the host object's status")
            assert ready["status"] == "False"
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())


# -- conflicts are decided by age ---------------------------------------------------------------------------

# Each newcomer is named to sort before what it contends with ("a-..." < "hbn-to-fabric", "p0", "p1").
NEWCOMERS = {
    "second interface on p0": (DPU_SERVICE_INTERFACE, "a-p0-port",
                               lambda ns, g: uplink(ns, "a-p0-port", g, "p0", {"uplink": "p0-again"}),
                               "OVS port p0 is already taken by ServiceInterface {ns}/p0-{node}"),
    "interface with p0's labels": (DPU_SERVICE_INTERFACE, "a-p0-twin",
                                   lambda ns, g: uplink(ns, "a-p0-twin", g, "p5", {"uplink": "p0"}),
                                   "keeps the elder ServiceInterface {ns}/p0-{node}"),
    "new chain on p1": (DPU_SERVICE_CHAIN, "a-chain", lambda ns, g: chain(ns, "a-chain", g, [{"uplink": "p1"}]),
                        "ServiceInterface {ns}/p1-{node} is already a port of ServiceChain "
                        "{ns}/hbn-to-fabric-{node}"),
}


@pytest.mark.parametrize("case", list(NEWCOMERS))
def test_a_newcomer_named_first_waits_and_the_running_chain_keeps_its_ports(
        kube: ControlPlane, namespace: str, tmp_path: Path, case: str) -> None:
    kind, name, make, holder = NEWCOMERS[case]

    async def scenario() -> None:
        async with Bed(kube, namespace, tmp_path) as bed:
            for netdev in ("p0", "p1"):
                await bed.rest.apply(DPU_SERVICE_INTERFACE, uplink(namespace, netdev, bed.group, netdev), "test")
            await bed.rest.apply(DPU_SERVICE_CHAIN, chain(namespace, "hbn-to-fabric", bed.group,
                                                          [{"uplink": "p0"}], [{"uplink": "p1"}]), "test")
            await eventually(lambda: is_ready(bed.rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric"),
                             "the running chain Ready")
            before = bed.chain_ports("hbn-to-fabric")
            assert before == [f"p0-{bed.node}", f"p1-{bed.node}"]
            # creationTimestamp has second precision: the newcomer must be younger by the clock, not by luck.
            await asyncio.sleep(1.1)

            await bed.rest.apply(kind, make(namespace, bed.group), "test")
            reason = holder.format(ns=namespace, node=bed.node)
            ready_type = "ServiceChainSetReady" if kind is DPU_SERVICE_CHAIN else "ServiceInterfaceSetReady"
            found = await eventually(lambda: says(bed.rest, kind, namespace, name, ready_type, reason),
                                     f"the newcomer {name} waiting, naming the holder")
            assert found["status"] == "False"
            assert await is_ready(bed.rest, DPU_SERVICE_CHAIN, namespace, "hbn-to-fabric"), "the chain stays Ready"
            assert bed.chain_ports("hbn-to-fabric") == before, "the chain kept its ports"
            assert bed.sent(name) not in bed.interfaces.desired
            assert bed.sent(name) not in bed.chains.desired
            assert {bed.sent("p0"), bed.sent("p1")} <= set(bed.interfaces.desired)

            # The holder lets go: the newcomer gets the port.
            if case == "new chain on p1":
                await bed.rest.delete(DPU_SERVICE_CHAIN, "hbn-to-fabric", namespace)
                await eventually(lambda: bed.chain_ports(name) == [f"p1-{bed.node}"], "the newcomer chain sent")
            else:
                await bed.rest.delete(DPU_SERVICE_INTERFACE, "p0", namespace)
                await eventually(lambda: bed.sent(name) in bed.interfaces.desired, "the newcomer sent")

    run(scenario())


async def _gone(rest: Rest, kind: Kind, namespace: str, name: str) -> bool:
    return await rest.get(kind, name, namespace) is None


async def _allocations(rest: Rest, namespace: str, name: str) -> list[dict] | None:
    obj = await rest.get(DPU_SERVICE_IPAM, name, namespace)
    return ((obj or {}).get("status") or {}).get("allocations") or None
