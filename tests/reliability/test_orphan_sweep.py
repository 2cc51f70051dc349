"""The orphan sweep, the safety net behind ordered deletion: a set in the DPU cluster that claims a host owner
which does not exist is deleted within the sweep period and counted in `dpf_controller_orphans_deleted_total`;
its per-node objects go with it. A per-node object whose set is another object now is deleted too.
Live chains, and objects that claim no owner, are left alone.

The controller runs in this process against the bed's apiserver (it is also the DPU cluster).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence

from dpf.controller.kube.rest import Kind, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.base import Reconciler, default_reconcilers
from dpf.controller.reconcilers.kinds import DPU_SERVICE_CHAIN, NODE, SERVICE_CHAIN, SERVICE_CHAIN_SET
from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, run, started
from tests.reliability.test_churn import uplink_chain

SWEEP_PERIOD = 0.5
OWNER_LABEL = "svc.dpu.nvidia.com/dpuservicechain-uid"


def hand_made_set(namespace: str, group: str, name: str, owner_uid: str | None) -> dict:
    """A ServiceChainSet written straight into the DPU cluster, claiming `owner_uid` as its DPUServiceChain."""
    chain = uplink_chain(namespace, group, name)
    labels = {OWNER_LABEL: owner_uid} if owner_uid else {}
    return {"apiVersion": SERVICE_CHAIN_SET.api_version, "kind": "ServiceChainSet",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": chain["spec"]["template"]["spec"]}


def test_the_sweep_deletes_what_claims_a_missing_owner_and_counts_it(kube: ControlPlane, namespace: str) -> None:
    group = uuid.uuid4().hex[:6]
    node = f"dpu-a-{group}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        settings = dataclasses.replace(controller_settings(kube.kubeconfig, namespace),
                                       orphan_sweep_period=SWEEP_PERIOD)
        controller = await started(Controller(settings))

        def swept(kind: str) -> float:
            return controller.metrics.registry.get_sample_value(
                "dpf_controller_orphans_deleted_total", {"kind": kind}) or 0.0

        def sweeps_done() -> float:
            return controller.metrics.registry.get_sample_value(
                "dpf_controller_reconcile_duration_seconds_count", {"reconciler": "orphans"}) or 0.0

        try:
            await rest.create(NODE, chains.dpu_node(node, group, hbn=False))
            live = await rest.create(DPU_SERVICE_CHAIN, uplink_chain(namespace, group, "live"), namespace)
            await eventually(lambda: rest.get(SERVICE_CHAIN, f"live-{node}", namespace), "the live chain's child")
            live_set = await rest.get(SERVICE_CHAIN_SET, "live", namespace)
            assert live_set["metadata"]["labels"][OWNER_LABEL] == live["metadata"]["uid"]
            unclaimed = await rest.create(SERVICE_CHAIN_SET, hand_made_set(namespace, group, "by-hand", None),
                                          namespace)

            # A set claiming a DPUServiceChain that does not exist: its children are made (it is a set like any
            # other), then the sweep deletes it and the set's own deletion takes its children.
            created = time.monotonic()
            await rest.create(SERVICE_CHAIN_SET, hand_made_set(namespace, group, "orphan", str(uuid.uuid4())),
                              namespace)
            await eventually(lambda: _gone(rest, [(SERVICE_CHAIN_SET, "orphan"), (SERVICE_CHAIN, f"orphan-{node}")],
                                           namespace), "the orphaned set and its child deleted", timeout=10)
            took = time.monotonic() - created
            assert swept("ServiceChainSet") == 1

            # A per-node chain whose controlling set is another object of that name now (uid differs). The bed's
            # garbage collector races the sweep for this one, so either may delete it.
            stale = {"apiVersion": SERVICE_CHAIN.api_version, "kind": "ServiceChain",
                     "metadata": {"name": f"stale-{node}", "namespace": namespace,
                                  "ownerReferences": [{"apiVersion": SERVICE_CHAIN_SET.api_version,
                                                       "kind": "ServiceChainSet", "name": "live",
                                                       "uid": str(uuid.uuid4()), "controller": True}]},
                     "spec": {"node": node, **hand_made_set(namespace, group, "x", None)["spec"]["template"]["spec"]}}
            await rest.create(SERVICE_CHAIN, stale, namespace)
            await eventually(lambda: _gone(rest, [(SERVICE_CHAIN, f"stale-{node}")], namespace),
                             "the stale per-node chain deleted", timeout=10)

            # Many sweeps later, the live chain and the set claiming no owner are untouched.
            sweeps = sweeps_done()
            await eventually(lambda: sweeps_done() >= sweeps + 5, "five more sweeps")
            assert (await rest.get(SERVICE_CHAIN_SET, "live", namespace))["metadata"]["uid"] == \
                live_set["metadata"]["uid"]
            assert await rest.get(SERVICE_CHAIN, f"live-{node}", namespace) is not None
            assert (await rest.get(SERVICE_CHAIN_SET, "by-hand", namespace))["metadata"]["uid"] == \
                unclaimed["metadata"]["uid"]
            assert swept("ServiceChainSet") == 1
            assert swept("ServiceChain") <= 1
            print(f"\norphaned set and its child gone {took:.2f}s after it was made (sweep period {SWEEP_PERIOD}s)")

            # Cleanup while the controller runs: its finalizers are on these.
            await rest.delete(DPU_SERVICE_CHAIN, "live", namespace)
            await rest.delete(SERVICE_CHAIN_SET, "by-hand", namespace)
            await eventually(lambda: _gone(rest, [(DPU_SERVICE_CHAIN, "live"), (SERVICE_CHAIN_SET, "live"),
                                                  (SERVICE_CHAIN_SET, "by-hand")], namespace), "cleanup")
        finally:
            await rest.delete(NODE, node)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_an_orphan_is_swept_on_sight_not_a_period_later(kube: ControlPlane, namespace: str) -> None:
    """The period is an hour here: the orphan's own watch event brings the sweep forward (a set applied by a
    deposed leader's last request lands after its owner has gone, and must not live until the next period)."""
    run(live_chain_and_swept_orphan(kube, namespace))


async def live_chain_and_swept_orphan(kube: ControlPlane, namespace: str,
                                      extra: Sequence[type[Reconciler]] = ()) -> Controller:
    """With a sweep period of an hour (and `extra` reconcilers beside the default ones): a live chain gets its
    per-node child, and a set claiming a missing owner is swept within seconds of appearing."""
    group = uuid.uuid4().hex[:6]
    node = f"dpu-s-{group}"
    rest = await host_rest(kube.kubeconfig)
    await dpu_cluster(rest, namespace, kube.kubeconfig)
    settings = dataclasses.replace(controller_settings(kube.kubeconfig, namespace), orphan_sweep_period=3600.0)
    controller = await started(Controller(settings, [*default_reconcilers(settings), *extra]))
    try:
        await rest.create(NODE, chains.dpu_node(node, group, hbn=False))
        await rest.create(DPU_SERVICE_CHAIN, uplink_chain(namespace, group, "live"), namespace)
        await eventually(lambda: rest.get(SERVICE_CHAIN, f"live-{node}", namespace), "the live chain's child")
        await rest.create(SERVICE_CHAIN_SET, hand_made_set(namespace, group, "orphan", str(uuid.uuid4())), namespace)
        await eventually(lambda: _gone(rest, [(SERVICE_CHAIN_SET, "orphan"), (SERVICE_CHAIN, f"orphan-{node}")],
                                       namespace), "the orphaned set and its child deleted", timeout=15)
        assert controller.metrics.registry.get_sample_value(
            "dpf_controller_orphans_deleted_total", {"kind": "ServiceChainSet"}) == 1
        assert await rest.get(SERVICE_CHAIN, f"live-{node}", namespace) is not None
        await rest.delete(DPU_SERVICE_CHAIN, "live", namespace)
        await eventually(lambda: _gone(rest, [(DPU_SERVICE_CHAIN, "live"), (SERVICE_CHAIN_SET, "live")], namespace),
                         "cleanup")
        return controller
    finally:
        await rest.delete(NODE, node)
        await controller.stop()
        await rest.close()


async def _gone(rest: Rest, objects: list[tuple[Kind, str]], namespace: str) -> bool:
    return all([await rest.get(kind, name, namespace) is None for kind, name in objects])
