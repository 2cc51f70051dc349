"""Deletion is exact under any timing. A DPUServiceChain or DPUServiceInterface created and deleted again at
once, or after a short random wait, 50+ times under the same name (each new one created the moment the name
is free, so a re-created object meets the leftovers of its predecessor if there are any), leaves nothing:
no host object or finalizer, no set, no per-node object in the DPU cluster, nothing on the DPUs' agents.

The controller runs in this process against the bed's apiserver (it is also the DPU cluster), with a real
agent runtime per DPU recording what it is sent. The orphan sweep is off (a period of an hour), so what is
checked is the deletion path itself; `test_orphan_sweep.py` checks the sweep. The same churn against real
agents and Open vSwitch, counting flows and bridge records: `test_churn_dataplane.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from pathlib import Path

import pytest

from dpf.agent.runtime.handlers import RecordingHandler
from dpf.controller.kube.rest import Kind, KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import (
    DPU_SERVICE_CHAIN,
    DPU_SERVICE_INTERFACE,
    NODE,
    SERVICE_CHAIN,
    SERVICE_CHAIN_SET,
    SERVICE_INTERFACE,
    SERVICE_INTERFACE_SET,
)
from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
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

CYCLES_AT_ONCE = 50  # create, delete at once
CYCLES_RANDOM_WAIT = 12  # create, wait 0-1.5 s, delete
MAX_WAIT = 1.5
SETTLE_TIMEOUT = 30.0
SEED = 12


@dataclasses.dataclass(frozen=True)
class Churned:
    """A host kind, its DPU-cluster set and per-node kinds, and the object churned."""

    parent: Kind
    set_kind: Kind
    child_kind: Kind
    set_label: str  # per-node objects carry <set_label>-name = the set's name
    body: Obj

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]


def uplink_chain(namespace: str, group: str, name: str) -> Obj:
    """A chain joining uplinks p0 and p1 on every DPU of `group` (both resolve without a service pod)."""
    ports = [{"serviceInterface": {"matchLabels": {"uplink": uplink}}} for uplink in ("p0", "p1")]
    return {"apiVersion": DPU_SERVICE_CHAIN.api_version, "kind": "DPUServiceChain",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {"nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                                           "template": {"spec": {"switches": [{"ports": ports}]}}}}}}


def uplink_interface(namespace: str, group: str, name: str, netdev: str) -> Obj:
    """A physical interface `netdev` on every DPU of `group`, labelled uplink=`netdev`."""
    return {"apiVersion": DPU_SERVICE_INTERFACE.api_version, "kind": "DPUServiceInterface",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {
                "nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                "template": {"metadata": {"labels": {"uplink": netdev}},
                             "spec": {"interfaceType": "physical", "physical": {"interfaceName": netdev}}}}}}}


def chain_churn(namespace: str, group: str) -> Churned:
    return Churned(DPU_SERVICE_CHAIN, SERVICE_CHAIN_SET, SERVICE_CHAIN, "svc.dpu.nvidia.com/servicechainset",
                   uplink_chain(namespace, group, "churn"))


def interface_churn(namespace: str, group: str) -> Churned:
    return Churned(DPU_SERVICE_INTERFACE, SERVICE_INTERFACE_SET, SERVICE_INTERFACE,
                   "svc.dpu.nvidia.com/serviceinterfaceset", uplink_interface(namespace, group, "churn", "p2"))


async def create_when_free(rest: Rest, kind: Kind, body: Obj) -> Obj:
    """Create `body`, retrying while its name is still held by the previous incarnation (terminating): the new
    object then lands the moment the old one is gone."""
    while True:
        try:
            return await rest.create(kind, body, body["metadata"]["namespace"])
        except KubeError as exc:
            if not exc.conflict:
                raise
        await asyncio.sleep(0.01)


async def churn(rest: Rest, churned: Churned, cycles: int, waits: random.Random | None) -> None:
    namespace = churned.body["metadata"]["namespace"]
    for _ in range(cycles):
        await create_when_free(rest, churned.parent, churned.body)
        if waits is not None:
            await asyncio.sleep(waits.uniform(0, MAX_WAIT))
        await rest.delete(churned.parent, churned.name, namespace)


async def leftovers(rest: Rest, churned: Churned, namespace: str) -> list[str]:
    """What of the churned object still exists, host and DPU cluster (here the same apiserver)."""
    found = []
    parent = await rest.get(churned.parent, churned.name, namespace)
    if parent is not None:
        found.append(f"{churned.parent.kind} (finalizers {parent['metadata'].get('finalizers')})")
    set_obj = await rest.get(churned.set_kind, churned.name, namespace)
    if set_obj is not None:
        found.append(f"{churned.set_kind.kind} (finalizers {set_obj['metadata'].get('finalizers')}, "
                     f"deleting: {bool(set_obj['metadata'].get('deletionTimestamp'))})")
    children = await rest.list(churned.child_kind, namespace, label_selector=f"{churned.set_label}-name={churned.name}")
    found += [f"{churned.child_kind.kind} {c['metadata']['name']}" for c in children["items"]]
    return found


class SeenHandler(RecordingHandler):
    """A recording handler that also remembers every name it was ever sent."""

    def __init__(self, message_class: type) -> None:
        super().__init__(message_class)
        self.seen: set[str] = set()

    async def apply(self, desired, changed, removed, reporter) -> None:  # type: ignore[no-untyped-def]
        self.seen.update(desired)
        await super().apply(desired, changed, removed, reporter)


@pytest.mark.parametrize("make", [chain_churn, interface_churn], ids=["DPUServiceChain", "DPUServiceInterface"])
def test_create_delete_churn_leaves_nothing(kube: ControlPlane, namespace: str, tmp_path: Path, make) -> None:
    group = uuid.uuid4().hex[:6]
    nodes = [f"dpu-a-{group}", f"dpu-b-{group}"]
    churned = make(namespace, group)

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        settings = dataclasses.replace(controller_settings(kube.kubeconfig, namespace), orphan_sweep_period=3600.0)
        controller = await started(Controller(settings))
        handlers, tasks = {}, []
        try:
            for node in nodes:
                await rest.create(NODE, chains.dpu_node(node, group, hbn=False))
                handlers[node] = {t: SeenHandler(t) for t in (sfc_pb2.ServiceInterface, sfc_pb2.ServiceChain)}
                runtime = agent(node, [controller.grpc_port], tmp_path / node / "state",
                                await node_files(rest, namespace, node, "dpu", tmp_path / node / "certs"),
                                handlers[node][sfc_pb2.ServiceInterface])
                runtime.add_handler(handlers[node][sfc_pb2.ServiceChain])
                tasks.append(asyncio.create_task(runtime.run()))
            for netdev in ("p0", "p1"):  # the chain's ports resolve, so the chain reaches the agents
                await rest.create(DPU_SERVICE_INTERFACE, uplink_interface(namespace, group, netdev, netdev), namespace)
            message = sfc_pb2.ServiceChain if churned.parent == DPU_SERVICE_CHAIN else sfc_pb2.ServiceInterface
            on_agent = [f"{namespace}/{churned.name}-{node}" for node in nodes]

            started_at = time.monotonic()
            await churn(rest, churned, CYCLES_AT_ONCE, None)
            await churn(rest, churned, CYCLES_RANDOM_WAIT, random.Random(SEED))
            churned_for = time.monotonic() - started_at
            try:
                await eventually(lambda: _empty(leftovers(rest, churned, namespace)),
                                 f"nothing of {churned.parent.kind} {churned.name} to be left", timeout=SETTLE_TIMEOUT)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; left: {await leftovers(rest, churned, namespace)}") from None
            await eventually(lambda: not any(n in handlers[node][message].desired for node in nodes for n in on_agent),
                             "the agents to hold nothing of it", timeout=SETTLE_TIMEOUT)
            settled_for = time.monotonic() - started_at - churned_for
            sent = sum(n in handlers[node][message].seen for node in nodes for n in on_agent)
            assert sent == len(nodes), "the churned object reached both agents at least once (the path was exercised)"
            print(f"\n{churned.parent.kind}: {CYCLES_AT_ONCE} create+delete at once and {CYCLES_RANDOM_WAIT} with "
                  f"0-{MAX_WAIT}s waits in {churned_for:.1f}s; nothing left {settled_for:.1f}s after the last delete")
            assert controller.metrics.registry.get_sample_value(
                "dpf_controller_orphans_deleted_total", {"kind": churned.set_kind.kind}) is None, \
                "the deletion path left nothing for the sweep"
        finally:
            for task in tasks:
                await stop_task(task)
            for node in nodes:
                await rest.delete(NODE, node)
            await controller.stop()
            await rest.close()

    run(scenario(), timeout=150)


async def _empty(value) -> bool:  # type: ignore[no-untyped-def]
    found = await value
    return not found
