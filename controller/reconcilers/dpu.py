"""DPU → provisioned DPU: upstream DPF v24.10's DPU controller, with the host agent in place of the DMS and
host-network pods (`controller/provisioning/dpu_phases.py` is the machine; this module gathers its inputs,
carries out its outputs).

Each reconcile reads the watch caches (the DPU, its host Node, BFB, DPUFlavor, DPUClusters, the
DPFOperatorConfig for highSpeedMTU, the DPU's Node in its DPU cluster) and the node registry (the host
agent's `DPUProvisioningStatus` for this DPU), calls `dpu_phases.step`, then in this order: adds the
finalizer, stores the machine's record annotation (before anything the agent sees refers to it: an install
id is persisted before it is published), performs the effects (node effect, allocation, bf.cfg, DPU Node
labels and deletion), writes status by server-side apply, publishes the DPU's `DPUProvisioning` into its
host's snapshot (`controller/cache/provisioning.py`), records Events and the per-phase histogram, and on
deletion removes the finalizer last, after the resource left the snapshot.

Allocation of `spec.cluster` is serialized in this process (one lock, plus the choices written but not yet
in the cache), so DPUs allocating at once never exceed a cluster's maxNodes. A reconcile never waits for the
host agent: stream reports enqueue the DPUs of the reporting node.

Restarts and new leaders: for a host agent not heard from in this term (and a DPU cluster not yet synced)
during the registry's grace period, the stored record's desired state is published and status is left as
it was, so a reconnecting agent keeps its flash and no condition flaps to "not connected".

Key: ObjectKey(name, namespace, dpu name).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dpf.controller.api.provisioning import DPUFlavorSpec
from dpf.controller.cache.provisioning import TYPE_URL, HostProvisioning
from dpf.controller.clusters import Cluster
from dpf.controller.errors import TemporaryError
from dpf.controller.kube import clients
from dpf.controller.kube.informer import Informer, key_of
from dpf.controller.kube.rest import SECRET, KubeError, Obj, Rest
from dpf.controller.provisioning import bfcfg
from dpf.controller.provisioning import dpu_phases as phases
from dpf.controller.provisioning.allocator import Allocation, allocate_counted, assigned_cluster
from dpf.controller.provisioning.join import join_command
from dpf.controller.provisioning.node_effect import EffectState, apply_node_effect, undo_node_effect
from dpf.controller.reconcilers import objects
from dpf.controller.reconcilers.base import Reconciler
from dpf.controller.reconcilers.keys import ObjectKey
from dpf.controller.reconcilers.kinds import BFB, DPF_OPERATOR_CONFIG, DPU, DPU_CLUSTER, DPU_FLAVOR, NODE
from dpf.proto.status import verdict_of
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import provisioning_pb2 as ppb

log = logging.getLogger(__name__)

NODE_INDEX = "dpu.node"  # DPU informer: spec.nodeName
BFB_INDEX = "dpu.bfb"  # DPU informer: "<namespace>/<spec.bfb>"
NAME_INDEX = "dpu.name"  # DPU informer: metadata.name (the DPU-cluster Node's name)
CLUSTER_INDEX = "dpu.cluster"  # DPU informer: "<namespace>/<name>" of its assigned cluster, unless being deleted
UID_INDEX = "dpu.uid"  # DPU informer: metadata.uid
EFFECT_RETRY = 2.0  # seconds between node-effect calls that are not done yet
CACHE_RETRY = 0.5
AGAIN = 0.02  # seconds: the smallest requeue ("look again now": an effect's outcome changed, bf.cfg rendered); a floor
# so a step that keeps asking for it cannot spin the worker
AGENT_PHASES = frozenset({phases.DMS_DEPLOYMENT, phases.OS_INSTALLING, phases.REBOOTING, phases.HOST_NETWORK})
CLUSTER_PHASES = frozenset({phases.CLUSTER_CONFIG, phases.READY})
INSTALL_PHASES = frozenset({phases.OS_INSTALLING, phases.REBOOTING})  # the phases that publish the install

class _RenderError(Exception):
    """bf.cfg cannot be made for this install (the message says why)."""


async def _node_effect(rest: Rest, node_name: str, dpu: Obj, undo: bool) -> EffectState:
    return await (undo_node_effect if undo else apply_node_effect)(rest, node_name, dpu)


def _counted_cluster(dpu: Obj) -> list[str]:
    """CLUSTER_INDEX: the cluster whose slot the DPU takes (a DPU being deleted takes none, as `allocate` counts)."""
    key = assigned_cluster(dpu)
    return ["/".join(key)] if key is not None and not dpu["metadata"].get("deletionTimestamp") else []


def _allocate(clusters: Sequence[Obj], counts: Mapping[tuple[str, str], int]) -> tuple[tuple[str, str] | None, str]:
    result = allocate_counted(clusters, counts)
    if isinstance(result, Allocation):
        return (result.namespace, result.name), ""
    return None, result.message


def _either(old: Obj | None, new: Obj | None) -> Obj:
    """The object an informer event is about (the new one, or the old one of a deletion)."""
    found = new if new is not None else old
    assert found is not None
    return found


async def _join(rest: Rest, server: str, ca_pem: bytes, ttl: int) -> str:
    return await join_command(rest, server, ca_pem, ttl)


class DPUReconciler(Reconciler):
    name = "dpu"
    kind = "DPU"
    type_urls = (TYPE_URL,)

    def setup(self) -> None:
        host = self.ctx.clusters.host
        self.dpus: Informer = host.informer(DPU)
        self.nodes: Informer = host.informer(NODE)
        self.bfbs: Informer = host.informer(BFB)
        self.flavors: Informer = host.informer(DPU_FLAVOR)
        self.clusters: Informer = host.informer(DPU_CLUSTER)
        self.configs: Informer = host.informer(DPF_OPERATOR_CONFIG)
        self.dpus.add_index(NODE_INDEX, lambda o: [n] if (n := (o.get("spec") or {}).get("nodeName")) else [])
        self.dpus.add_index(BFB_INDEX, lambda o: [f"{key_of(o)[0]}/{(o.get('spec') or {}).get('bfb', '')}"])
        self.dpus.add_index(NAME_INDEX, lambda o: [o["metadata"]["name"]])
        self.dpus.add_index(CLUSTER_INDEX, _counted_cluster)
        self.dpus.add_index(UID_INDEX, lambda o: [o["metadata"]["uid"]])
        self.dpus.add_handler(self._on_dpu)
        self.nodes.add_handler(lambda _t, old, new: self._enqueue_node(_either(old, new)["metadata"]["name"]))
        self.bfbs.add_handler(lambda _t, old, new: self._enqueue_all(
            self.dpus.by_index(BFB_INDEX, "/".join(key_of(_either(old, new))))))
        # A cluster turning Ready may take DPUs waiting for one; highSpeedMTU concerns every DPU.
        self.clusters.add_handler(lambda _t, _old, _new: self._enqueue_all(self.dpus.list()))
        self.configs.add_handler(lambda _t, _old, _new: self._enqueue_all(self.dpus.list()))
        self.need_dpu_kind(NODE)
        self.ctx.clusters.on_dpu_added(self._attach)
        self.provisioning = HostProvisioning(self.ctx.cache)
        self._allocation = asyncio.Lock()
        self._allocating: dict[str, tuple[str, str]] = {}  # uid -> cluster written, until the cache shows it
        self._effects: dict[str, phases.EffectResult] = {}  # uid -> the last node-effect call's outcome
        self._bfcfg: dict[str, bytes] = {}  # install id -> rendered bf.cfg
        self._bfcfg_errors: dict[str, str] = {}
        self._status_written: dict[str, float] = {}  # uid -> monotonic time of our last status write

    def _attach(self, cluster: Cluster) -> None:
        cluster.informer(NODE).add_handler(
            lambda _t, old, new: self._enqueue_all(
                self.dpus.by_index(NAME_INDEX, _either(old, new)["metadata"]["name"])))

    def _on_dpu(self, _type: str, old: Obj | None, new: Obj | None) -> None:
        self._enqueue(new or old)
        if _phase(old) != _phase(new) and (node := ((new or old or {}).get("spec") or {}).get("nodeName")):
            self._enqueue_node(node)  # a DPU beside it may wait for this one to leave OS Installing
        if new is None and old is not None and ((old.get("spec") or {}).get("cluster") or {}).get("name"):
            # Its allocator slot is free: DPUs still waiting for a cluster may take it.
            self._enqueue_all(d for d in self.dpus.list()
                              if not ((d.get("spec") or {}).get("cluster") or {}).get("name"))

    def _enqueue(self, dpu: Obj | None) -> None:
        if dpu is not None:
            self.ctx.queue.add(ObjectKey(self.name, *key_of(dpu)))

    def _enqueue_all(self, dpus: Iterable[Obj]) -> None:
        for dpu in dpus:
            self._enqueue(dpu)

    def _enqueue_node(self, node: str) -> None:
        self._enqueue_all(self.dpus.by_index(NODE_INDEX, node))

    def all_keys(self) -> Iterable[Hashable]:
        return [ObjectKey(self.name, *key_of(o)) for o in self.dpus.list()]

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.dpus, self.nodes, self.bfbs, self.flavors, self.clusters,
                                               self.configs))

    async def close(self) -> None:
        """Leadership ended: forget the in-memory state; the next term rebuilds it from the DPU objects."""
        self.provisioning.clear()
        self._allocating.clear()
        self._effects.clear()
        self._bfcfg.clear()
        self._bfcfg_errors.clear()
        self._status_written.clear()

    # ---- stream callbacks ----------------------------------------------------------------------------
    def on_connect(self, node: str, role: str) -> None:
        if role == "host" and not self.dpus.by_index(NODE_INDEX, node):
            self.provisioning.ensure_node(node)  # its DPUs' reconciles publish the others
        self._enqueue_node(node)

    def on_disconnect(self, node: str) -> None:
        self._enqueue_node(node)

    def on_status(self, node: str, type_url: str, report: pb.StatusReport) -> None:
        # Only the DPUs reported on (a host agent reports progress about twice a second per flashing DPU).
        for obj in report.objects:
            namespace, _, name = obj.name.partition("/")
            if name:
                self.ctx.queue.add(ObjectKey(self.name, namespace, name))

    # ---- reconcile -----------------------------------------------------------------------------------
    async def reconcile(self, key: ObjectKey) -> float | None:
        if not self.synced():
            raise TemporaryError("DPU reconciler caches not synced yet", delay=CACHE_RETRY)
        dpu = self.dpus.get(key.namespace, key.name)
        name = f"{key.namespace}/{key.name}"
        if dpu is None:
            node = self.provisioning.names().get(name)
            if node is not None:
                self.provisioning.set(node, name, None)
            self._forget_gone()
            return None
        obs = await self._observe(dpu)
        stored = phases.record_of(dpu, obs.now)
        held = self._hold(dpu, stored)
        if held is not None:
            self.provisioning.set(obs.dpu["spec"]["nodeName"], name, phases.desired_provisioning(obs, stored))
            return held
        out = phases.step(obs)
        current = out.record or stored
        self._drop_bfcfgs(dpu["metadata"]["uid"], current.install if current.phase in INSTALL_PHASES else "")
        return await self._carry_out(dpu, obs, out)

    def _drop_bfcfgs(self, uid: str, keep: str) -> None:
        """bf.cfg is sent in OS Installing and Rebooting only: keep the current attempt's, forget the others."""
        for table in (self._bfcfg, self._bfcfg_errors):
            for install in [i for i in table if i.split("/", 1)[0] == uid and i != keep]:
                del table[install]

    def _hold(self, dpu: Obj, stored: phases.Record) -> float | None:
        """Seconds to hold status (publishing the stored desired state) while, early in a leadership term, the
        host agent has not spoken yet or the DPU cluster is not synced yet; None: go ahead."""
        if dpu["metadata"].get("deletionTimestamp"):
            return None
        grace = self.ctx.nodes.grace_left()
        if grace <= 0:
            return None
        node = dpu["spec"]["nodeName"]
        if stored.phase in AGENT_PHASES and not self.ctx.nodes.heard(node, TYPE_URL):
            return min(grace, 1.0)
        if stored.phase in CLUSTER_PHASES and not self._cluster_view(dpu).connected \
                and self._cluster_name(dpu) in self._configured_clusters():
            return min(grace, 1.0)
        return None

    async def _observe(self, dpu: Obj) -> phases.Observed:
        spec = dpu.get("spec") or {}
        namespace = key_of(dpu)[0]
        uid = dpu["metadata"]["uid"]
        now = objects.now()
        host_node = self.nodes.get("", spec.get("nodeName", ""))
        bfb = self.bfbs.get(namespace, spec.get("bfb", ""))
        flavor = self.flavors.get(namespace, spec["dpuFlavor"]) if spec.get("dpuFlavor") else None
        allocated, allocation_error = None, ""
        if not (spec.get("cluster") or {}).get("name"):
            allocated, allocation_error = _allocate(self.clusters.list(), self._allocation_counts())
        record = phases.record_of(dpu, now)
        if record.phase in INSTALL_PHASES and record.install and record.since <= now \
                and not dpu["metadata"].get("deletionTimestamp") \
                and record.install not in self._bfcfg and record.install not in self._bfcfg_errors:
            # A new term (restart, failover) mid-install or mid-reboot: render before anything is published, so
            # that the agent never sees this install withdrawn (it keeps flashing, or reporting host_rebooted;
            # the id is the same attempt, which it never flashes twice).
            await self._render(dpu, host_node, flavor, record.install)
        return phases.Observed(
            dpu=dpu, now=now, settings=self.ctx.settings.provisioning, host_node=host_node, bfb=bfb,
            flavor=flavor, allocated=allocated, allocation_error=allocation_error, agent=self._agent_view(dpu),
            cluster=self._cluster_view(dpu), effect=self._effects.get(uid),
            bf_cfg=self._bfcfg.get(record.install), bf_cfg_error=self._bfcfg_errors.get(record.install, ""),
            high_speed_mtu=self._high_speed_mtu(), installing_beside=self._installing_beside(dpu))

    def _installing_beside(self, dpu: Obj) -> tuple[str, ...]:
        """The other DPUs of this DPU's host that are in OS Installing (not being deleted)."""
        uid = dpu["metadata"]["uid"]
        return tuple(sorted(d["metadata"]["name"] for d in self.dpus.by_index(NODE_INDEX, dpu["spec"]["nodeName"])
                            if d["metadata"]["uid"] != uid and not d["metadata"].get("deletionTimestamp")
                            and (d.get("status") or {}).get("phase") == phases.OS_INSTALLING))

    def _agent_view(self, dpu: Obj) -> phases.AgentView:
        status = self.ctx.nodes.get(dpu["spec"]["nodeName"])
        if status is None:
            return phases.AgentView()
        observed = status.of(TYPE_URL).observed.get(phases.resource_name(dpu))
        detail = None
        if observed is not None and observed.HasField("detail"):
            message = ppb.DPUProvisioningStatus()
            if observed.detail.Unpack(message):
                detail = message
        refused = ""
        if observed is not None and verdict_of(observed) in (pb.VERDICT_FAILED, pb.VERDICT_REJECTED):
            refused = observed.message or "failed"
        return phases.AgentView(connected=status.connected, status=detail, refused=refused)

    def _cluster_name(self, dpu: Obj) -> str:
        cluster = (dpu.get("spec") or {}).get("cluster") or {}
        if not cluster.get("name"):
            return ""
        return f"{cluster.get('namespace') or key_of(dpu)[0]}/{cluster['name']}"

    def _configured_clusters(self) -> set[str]:
        return {"/".join(key_of(c)) for c in self.clusters.list() if (c.get("spec") or {}).get("kubeconfig")}

    def _cluster_view(self, dpu: Obj) -> phases.ClusterView:
        name = self._cluster_name(dpu)
        cluster = self.ctx.clusters.dpu.get(name) if name else None
        if cluster is None or not cluster.has(NODE) or not cluster.informer(NODE).synced.is_set():
            return phases.ClusterView(name=name)
        node = cluster.informer(NODE).get("", dpu["metadata"]["name"])
        return phases.ClusterView(name=name, connected=True, node=node)

    def _high_speed_mtu(self) -> int:
        for config in self.configs.list():
            mtu = ((config.get("spec") or {}).get("networking") or {}).get("highSpeedMTU")
            if mtu:
                return int(mtu)
        return 1500

    def _allocation_counts(self) -> Counter[tuple[str, str]]:
        """DPUs per cluster as `allocate` counts them: the cached DPUs (from CLUSTER_INDEX, not a pass over every
        DPU: at N=1000 that pass, once per reconcile of each unallocated DPU, was O(N²) in Initializing), plus the
        clusters this process wrote that the cache does not show yet."""
        counts: Counter[tuple[str, str]] = Counter()
        for cluster in self.clusters.list():
            key = key_of(cluster)
            counts[key] = self.dpus.index_size(CLUSTER_INDEX, "/".join(key))
        for uid, written in list(self._allocating.items()):
            cached = self.dpus.by_index(UID_INDEX, uid)
            if not cached:
                continue  # gone: it takes no slot (`_forget_gone` drops the entry)
            if assigned_cluster(cached[0]) is not None:
                del self._allocating[uid]  # the cache shows it: counted above
            elif not cached[0]["metadata"].get("deletionTimestamp"):
                counts[written] += 1
        return counts

    def _forget_gone(self) -> None:
        live = {d["metadata"]["uid"] for d in self.dpus.list()}
        for table in (self._allocating, self._effects, self._status_written):
            for uid in [u for u in table if u not in live]:
                del table[uid]
        for install in [i for i in (*self._bfcfg, *self._bfcfg_errors) if i.split("/", 1)[0] not in live]:
            self._bfcfg.pop(install, None)
            self._bfcfg_errors.pop(install, None)

    # ---- carrying out a step -------------------------------------------------------------------------
    async def _carry_out(self, dpu: Obj, obs: phases.Observed, out: phases.Step) -> float | None:
        rest = self.ctx.clusters.host.rest
        node = dpu["spec"]["nodeName"]
        resource = phases.resource_name(dpu)
        requeues = [out.requeue]
        deleting = bool(dpu["metadata"].get("deletionTimestamp"))
        if deleting:  # the agent lets the DPU go first; the finalizer goes last
            self.provisioning.set(node, resource, None)
        for effect in out.effects:
            if isinstance(effect, phases.AddFinalizer):
                dpu = await objects.add_finalizer(rest, DPU, dpu, phases.FINALIZER)
        if out.record is not None:
            dpu = await self._store_record(dpu, out.record)
        for effect in out.effects:
            if not isinstance(effect, phases.AddFinalizer | phases.RemoveFinalizer):
                requeues.append(await self._perform(dpu, obs, effect))
        requeues.append(await self._write_status(dpu, out))
        if not deleting:
            self.provisioning.set(node, resource, out.desired)
        for phase, seconds in out.left:
            self.ctx.metrics.dpu_phase_seconds.labels(phase).observe(seconds)
        for phase, reason in out.failures:
            self.ctx.metrics.dpu_provisioning_retries.labels(phase, reason).inc()
        for event in out.events:
            log.info("DPU %s: %s: %s", resource, event.reason, event.note)
            await self.ctx.events.emit(rest, dpu, "DPU", event.type, event.reason, event.note)
        if any(isinstance(e, phases.RemoveFinalizer) for e in out.effects):
            await objects.remove_finalizer(rest, DPU, dpu, phases.FINALIZER)
            self._effects.pop(dpu["metadata"]["uid"], None)
            return None
        due = [r for r in requeues if r is not None]
        return max(AGAIN, min(due)) if due else None

    async def _store_record(self, dpu: Obj, record: phases.Record) -> Obj:
        meta = dpu["metadata"]
        patch = {"metadata": {"annotations": {phases.RECORD_ANNOTATION: record.to_json()},
                              "resourceVersion": meta["resourceVersion"]}}
        try:
            return await self.ctx.clusters.host.rest.merge_patch(DPU, meta["name"], patch, meta["namespace"])
        except KubeError as exc:
            if exc.conflict:
                raise TemporaryError(f"DPU {objects.name_of(dpu)} changed meanwhile; retrying",
                                     objects.CACHE_LAG_RETRY) from None
            raise

    async def _write_status(self, dpu: Obj, out: phases.Step) -> float | None:
        """Server-side apply the status; a change of condition messages alone (flash progress) is written at
        most every `progress_interval` (returns when to write it then)."""
        status = out.status()
        uid = dpu["metadata"]["uid"]
        if _only_messages_differ(dpu.get("status") or {}, status):
            wait = self._status_written.get(uid, -1e9) + self.ctx.settings.provisioning.progress_interval \
                - time.monotonic()
            if wait > 0:
                return wait
        try:
            written = await objects.write_status(self.ctx.clusters.host.rest, DPU, dpu, status,
                                                 self.ctx.settings.kube.field_manager)
        except KubeError as exc:
            if not exc.not_found:
                raise
            return None
        if written:
            self._status_written[uid] = time.monotonic()
        return None

    async def _perform(self, dpu: Obj, obs: phases.Observed, effect: phases.Effect) -> float | None:
        """Carry out one effect; returns when to look again (None: an event will tell)."""
        rest = self.ctx.clusters.host.rest
        uid = dpu["metadata"]["uid"]
        if isinstance(effect, phases.ApplyNodeEffect | phases.UndoNodeEffect):
            undo = isinstance(effect, phases.UndoNodeEffect)
            state = await _node_effect(rest, dpu["spec"]["nodeName"], dpu, undo)
            result = phases.EffectResult("undo" if undo else "apply", bool(state.done), state.message or "",
                                         bool(getattr(state, "failed", False)))
            changed = self._effects.get(uid) != result
            self._effects[uid] = result
            if changed:
                return 0.0
            return None if result.done else EFFECT_RETRY
        if isinstance(effect, phases.SetCluster):
            return await self._set_cluster(dpu)
        if isinstance(effect, phases.RenderBfCfg):
            await self._render(dpu, obs.host_node, obs.flavor, effect.install_id)
            return 0.0
        if isinstance(effect, phases.MergeDPUNodeLabels):
            cluster = self.ctx.clusters.dpu.get(obs.cluster.name)
            if cluster is not None:
                await cluster.rest.merge_patch(NODE, dpu["metadata"]["name"],
                                               {"metadata": {"labels": dict(effect.labels)}})
            return None
        if isinstance(effect, phases.DeleteDPUNode):
            cluster = self.ctx.clusters.dpu.get(obs.cluster.name)
            if cluster is not None:
                try:
                    await cluster.rest.delete(NODE, dpu["metadata"]["name"])
                except KubeError as exc:
                    if not exc.not_found:
                        raise
            return CACHE_RETRY  # the Node's DELETED event also enqueues
        raise AssertionError(f"unknown effect {effect!r}")

    async def _set_cluster(self, dpu: Obj) -> float | None:
        """Allocate under the lock, against the cache plus the allocations not cached yet, and write it."""
        async with self._allocation:
            cached = self.dpus.get(*key_of(dpu)) or dpu
            if ((cached.get("spec") or {}).get("cluster") or {}).get("name") \
                    or dpu["metadata"]["uid"] in self._allocating:
                return CACHE_RETRY
            chosen, why = _allocate(self.clusters.list(), self._allocation_counts())  # this DPU counts in none
            if chosen is None:
                log.info("DPU %s: no DPU cluster: %s", objects.name_of(dpu), why)
                return None
            meta = dpu["metadata"]
            # Reserved before the write and the lock released for it: the next DPU's allocation counts this one,
            # and allocations do not queue behind each other's apiserver round trips (bench/provision, N=1000:
            # one write at a time kept most DPUs in Initializing for minutes).
            self._allocating[meta["uid"]] = chosen
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]},
                 "spec": {"cluster": {"namespace": chosen[0], "name": chosen[1]}}}
        try:
            await self.ctx.clusters.host.rest.merge_patch(DPU, meta["name"], patch, meta["namespace"])
        except BaseException as exc:
            self._allocating.pop(meta["uid"], None)  # the slot is free again
            if isinstance(exc, KubeError) and exc.conflict:
                raise TemporaryError(f"DPU {objects.name_of(dpu)} changed meanwhile; retrying",
                                     objects.CACHE_LAG_RETRY) from None
            raise
        log.info("DPU %s: assigned to DPU cluster %s/%s", objects.name_of(dpu), *chosen)
        return None

    async def _render(self, dpu: Obj, host_node: Mapping[str, Any] | None, flavor_obj: Mapping[str, Any] | None,
                      install_id: str) -> None:
        """bf.cfg for one install: the flavor's configuration plus a join command for the DPU's cluster. A
        failure is recorded for the machine, which fails the attempt with its cause (and retries)."""
        flavor_name = (dpu.get("spec") or {}).get("dpuFlavor")
        try:
            if flavor_name and flavor_obj is None:
                raise _RenderError(f"DPUFlavor {key_of(dpu)[0]}/{flavor_name} does not exist")
            try:
                flavor = DPUFlavorSpec.model_validate(flavor_obj["spec"]) if flavor_obj is not None else None
            except ValidationError as exc:
                raise _RenderError(f"DPUFlavor {flavor_name} is invalid: {exc.errors()[0].get('msg')}") from None
            try:
                command = await self._join_command(dpu)
            except (KubeError, clients.KubeconfigError, ValueError, OSError) as exc:
                raise _RenderError(f"cannot make a join command for DPU cluster {self._cluster_name(dpu)}: {exc}") \
                    from None
            skip = phases.reboot_command(dpu, host_node)[1] == "skip"
            try:
                text = bfcfg.render_bfcfg(flavor, dpu["metadata"]["name"], command, reboot_skip=skip)
            except bfcfg.BfCfgTooLarge as exc:
                raise _RenderError(str(exc)) from None
        except _RenderError as exc:
            log.warning("DPU %s: bf.cfg for install %s: %s", objects.name_of(dpu), install_id, exc)
            self._bfcfg_errors[install_id] = str(exc)
            return
        self._bfcfg[install_id] = text.encode()

    async def _join_command(self, dpu: Obj) -> str:
        """A join command for the DPU's cluster: its API server and CA from the DPUCluster's kubeconfig Secret,
        the bootstrap token created there. Early in a term the cluster's client may not be connected yet; a
        short-lived one from the same Secret is used then (a restart mid-install must not wait for it)."""
        name = self._cluster_name(dpu)
        obj = self.clusters.get(*name.split("/", 1)) if name else None
        secret_name = ((obj or {}).get("spec") or {}).get("kubeconfig")
        if obj is None or not secret_name:
            raise _RenderError(f"DPU cluster {name or '(none)'} does not exist or has no kubeconfig")
        secret = await self.ctx.clusters.host.rest.get(SECRET, secret_name, key_of(obj)[0])
        if secret is None:
            raise _RenderError(f"Secret {key_of(obj)[0]}/{secret_name} of DPU cluster {name} does not exist")
        document = clients.parse_admin_conf(secret)
        entry = document["clusters"][0]["cluster"]
        if entry.get("certificate-authority-data"):
            ca = base64.b64decode(entry["certificate-authority-data"])
        elif entry.get("certificate-authority"):  # a file path: kubeconfigs written for one machine (the lab)
            ca = await asyncio.to_thread(Path(entry["certificate-authority"]).read_bytes)
        else:
            raise _RenderError(f"the kubeconfig of DPU cluster {name} has no CA certificate (the DPU could not "
                               f"check the cluster it joins)")
        ttl = self.ctx.settings.provisioning.join_token_ttl
        connected = self.ctx.clusters.dpu.get(name)
        if connected is not None:
            return await _join(connected.rest, entry["server"], ca, ttl)
        rest = await clients.from_kubeconfig_dict(document, f"dpu/{name}/join", self.ctx.settings.kube.request_timeout)
        try:
            return await _join(rest, entry["server"], ca, ttl)
        finally:
            await rest.close()


def _phase(dpu: Obj | None) -> str | None:
    return ((dpu or {}).get("status") or {}).get("phase")


def _only_messages_differ(current: Obj, desired: Obj) -> bool:
    """Same phase and fields, same condition statuses and reasons: only messages changed (progress)."""
    def shape(status: Obj) -> tuple:
        conditions = tuple((c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or ())
        return status.get("phase"), status.get("bfbVersion"), conditions
    return shape(current) == shape(desired) and current.get("conditions") != desired.get("conditions")
