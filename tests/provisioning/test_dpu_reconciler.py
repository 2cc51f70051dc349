"""The DPU reconciler against the real apiserver and a real NodeState stream (mTLS, host certificate). The host
agent is played by the test (`HostAgentStandIn`): it subscribes to `dpf.v1.DPUProvisioning`, ACKs, and reports
`DPUProvisioningStatus` as `ObjectStatus.detail`, as the real host agent does. The DPU cluster is a static
DPUCluster whose kubeconfig points at the same apiserver; the test creates the DPU's Node there, as kubelet
would after the join.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from dpf.agent.runtime.settings import TLSFiles
from dpf.controller.cache.provisioning import TYPE_URL
from dpf.controller.kube.rest import EVENT, KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.provisioning import dpu_phases as ph
from dpf.controller.reconcilers.dpu import DPUReconciler
from dpf.controller.reconcilers.dpucluster import DPUClusterReconciler
from dpf.controller.reconcilers.kinds import BFB, DPU, DPU_CLUSTER, NODE
from dpf.controller.server.node_status import STATUS_GRACE
from dpf.controller.settings import ProvisioningSettings
from dpf.lab.bed.kube import ControlPlane
from dpf.proto import status as object_status
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import nodestate_pb2_grpc as pb_grpc
from dpf.proto.v1 import provisioning_pb2 as ppb
from tests.controlplane.harness import (
    controller_settings,
    dpu_cluster,
    eventually,
    host_rest,
    node_files,
    run,
    started,
)

SLOW = 45.0


@dataclass
class HostAgentStandIn:
    """A host agent's stream: what the controller wants (`resources`) and what the test reports."""

    port: int
    files: TLSFiles
    node: str
    resources: dict[str, tuple[str, ppb.DPUProvisioning]] = field(default_factory=dict)
    history: list[tuple[str, ppb.DPUProvisioning | None]] = field(default_factory=list)
    """Every change received, in order: (name, the new resource or None when removed)."""

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[HostAgentStandIn]:
        credentials = grpc.ssl_channel_credentials(self.files.ca.read_bytes(), self.files.key.read_bytes(),
                                                   self.files.cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{self.port}", credentials) as channel:
            self.call = pb_grpc.NodeStateStub(channel).Stream()
            await self.call.write(pb.StreamRequest(hello=pb.Hello(node=self.node, role=pb.ROLE_HOST)))
            welcome = await self.call.read()
            assert welcome.HasField("welcome"), welcome
            known = {name: version for name, (version, _) in self.resources.items()}
            await self.call.write(pb.StreamRequest(request=pb.DiscoveryRequest(
                type_url=TYPE_URL, version_info=versioning.set_version(known) if known else "",
                resource_versions=known)))
            reader = asyncio.create_task(self._read())
            try:
                yield self
            finally:
                reader.cancel()
                self.call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self) -> None:
        while True:
            message = await self.call.read()
            if message is grpc.aio.EOF:
                return
            response = message.response
            if response.full_state:
                self.resources.clear()
            for name in response.removed_resources:
                self.resources.pop(name, None)
                self.history.append((name, None))
            for resource in response.resources:
                desired = ppb.DPUProvisioning()
                assert resource.body.Unpack(desired)
                self.resources[resource.name] = (resource.version, desired)
                self.history.append((resource.name, desired))
            await self.call.write(pb.StreamRequest(request=pb.DiscoveryRequest(
                type_url=TYPE_URL, version_info=response.version_info, response_nonce=response.nonce)))

    def desired(self, name: str) -> ppb.DPUProvisioning | None:
        found = self.resources.get(name)
        return found[1] if found else None

    async def report(self, name: str, status: ppb.DPUProvisioningStatus, verdict: int = pb.VERDICT_PENDING) -> None:
        version = self.resources[name][0] if name in self.resources else ""
        obj = object_status.object_status(name, version, verdict)  # type: ignore[arg-type]
        obj.detail.Pack(status)
        await self.call.write(pb.StreamRequest(status=pb.StatusReport(type_url=TYPE_URL, objects=[obj])))


async def _phase(rest: Rest, namespace: str, name: str, phase: str) -> Obj | None:
    dpu = await rest.get(DPU, name, namespace)
    return dpu if dpu is not None and (dpu.get("status") or {}).get("phase") == phase else None


def _condition(dpu: Obj, type_: str) -> Obj:
    return next((c for c in (dpu.get("status") or {}).get("conditions") or () if c["type"] == type_), {})


async def _bed(rest: Rest, kube: ControlPlane, namespace: str, host: str) -> None:
    """Host Node with its OOB bridge label, a Ready static DPUCluster on this apiserver, a Ready BFB."""
    await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": host, "labels": {ph.OOB_BRIDGE_LABEL: "true"}}})
    await dpu_cluster(rest, namespace, kube.kubeconfig)
    await rest.merge_patch(DPU_CLUSTER, "dpu", {"status": {"phase": "Ready", "conditions": [
        {"type": "Ready", "status": "True", "reason": "HealthCheckPassed", "message": "",
         "lastTransitionTime": "2026-12-04T20:00:00Z"}]}}, namespace, subresource="status")
    await rest.create(BFB, {"apiVersion": BFB.api_version, "kind": "BFB",
                            "metadata": {"name": "bf-bundle", "namespace": namespace},
                            "spec": {"url": "https://example.com/bf-bundle-2.9.1-30_24.11_prod.bfb",
                                     "fileName": "bf-bundle.bfb"}}, namespace)
    await rest.merge_patch(BFB, "bf-bundle", {"status": {"phase": "Ready"}}, namespace, subresource="status")


def _dpu(namespace: str, name: str, host: str, **spec: Any) -> Obj:
    return {"apiVersion": DPU.api_version, "kind": "DPU", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": host, "bfb": "bf-bundle", "pciAddress": "0000-08-00",
                     "nodeEffect": {"noEffect": True}, **spec}}


async def _cleanup(rest: Rest, *nodes: str) -> None:
    for node in nodes:
        with contextlib.suppress(KubeError):
            await rest.delete(NODE, node)


def test_a_dpu_walks_every_phase_to_ready(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    host, name = f"{namespace}-host", f"{namespace}-0000-08-00"
    resource = f"{namespace}/{name}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = None
        try:
            await _bed(rest, kube, namespace, host)
            controller = await started(Controller(controller_settings(kube.kubeconfig, namespace),
                                                  reconcilers=[DPUClusterReconciler, DPUReconciler]))
            files = await node_files(rest, namespace, host, "host", tmp_path / "host")
            await rest.create(DPU, _dpu(namespace, name, host), namespace)
            dpu = await eventually(lambda: _phase(rest, namespace, name, ph.DMS_DEPLOYMENT), "DMS Deployment", SLOW)
            assert dpu["spec"]["cluster"] == {"name": "dpu", "namespace": namespace}  # the allocator's choice
            assert ph.FINALIZER in dpu["metadata"]["finalizers"]
            assert _condition(dpu, "DMSRunning")["reason"] == "HostAgentNotConnected"
            agent = HostAgentStandIn(controller.grpc_port, files, host)
            async with agent.connected():
                await eventually(lambda: agent.desired(resource), "the DPU's resource on the host agent")
                assert agent.desired(resource).bfb.file_name == "bf-bundle.bfb"  # type: ignore[union-attr]
                await agent.report(resource, ppb.DPUProvisioningStatus(rshim_holder="pid 77 (rshim)"))
                dpu = await eventually(lambda: _reason(rest, namespace, name, "DMSRunning",
                                                       "ExistingRshimInstallDetected"), "the rshim holder named")
                assert "held by pid 77 (rshim)" in _condition(dpu, "DMSRunning")["message"]

                await agent.report(resource, ppb.DPUProvisioningStatus(bfb_ready=True))
                desired = await eventually(lambda: _with_install(agent, resource), "an install", SLOW)
                install_id = desired.install.id
                assert install_id.endswith("/1")
                assert f"local-hostname\": \"{name}\"" in desired.install.bf_cfg.decode()
                await agent.report(resource, ppb.DPUProvisioningStatus(bfb_ready=True, install=ppb.InstallStatus(
                    id=install_id, state=ppb.INSTALL_STATE_FLASHING, bytes_sent=412 << 20, bytes_total=1 << 30,
                    rate=180 << 20, eta_seconds=3, log=["INFO[BL31]: start"])))
                dpu = await eventually(lambda: _message(rest, namespace, name, "OSInstalled", "flashing 412"),
                                       "progress")
                assert _condition(dpu, "OSInstalled")["message"] == \
                    "flashing 412 MiB of 1.0 GiB at 180 MiB/s, ETA 3 s; boot log: INFO[BL31]: start"

                done = ppb.InstallStatus(id=install_id, state=ppb.INSTALL_STATE_DONE, log=["DPU is ready"])
                await agent.report(resource, ppb.DPUProvisioningStatus(bfb_ready=True, install=done))
                desired = await eventually(lambda: _with(agent, resource, "reboot"), "a reboot request")
                assert desired.reboot.method == ppb.REBOOT_METHOD_POWER_RESET
                assert desired.install.id == install_id  # kept: its status says when the host booted again
                dpu = await rest.get(DPU, name, namespace)
                assert _condition(dpu, "OSInstalled")["status"] == "True"  # type: ignore[arg-type]

                done.host_rebooted = True
                await agent.report(resource, ppb.DPUProvisioningStatus(
                    bfb_ready=True, install=done, reboot=ppb.RebootStatus(id=desired.reboot.id)))
                desired = await eventually(lambda: _with(agent, resource, "host_network"), "the host network")
                assert desired.host_network == ppb.HostNetwork(num_vfs=16, vf_mtu=1500, bridge="br-dpu")
                assert not desired.HasField("install")
                assert not desired.HasField("reboot")
                await agent.report(resource, ppb.DPUProvisioningStatus(
                    bfb_ready=True, install=done, host_network=ppb.HostNetworkStatus(ready=True, num_vfs=16)),
                    pb.VERDICT_PROGRAMMED)
                dpu = await eventually(lambda: _phase(rest, namespace, name, ph.CLUSTER_CONFIG), "Cluster Config")
                assert f"waiting for Node {name} to join" in _condition(dpu, "Ready")["message"]

                # What kubelet does after the join: the DPU's Node, Ready.
                await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
                await rest.merge_patch(NODE, name, {"status": {"conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                     "lastHeartbeatTime": "2026-12-04T20:00:00Z", "lastTransitionTime": "2026-12-04T20:00:00Z"}]}},
                                       subresource="status")
                dpu = await eventually(lambda: _phase(rest, namespace, name, ph.READY), "Ready", SLOW)
                assert all(c["status"] == "True" for c in dpu["status"]["conditions"]), dpu["status"]
                assert dpu["status"]["bfbVersion"] == "bf-bundle-2.9.1-30_24.11_prod"
                node = await rest.get(NODE, name)
                assert node["metadata"]["labels"][ph.HOST_LABEL] == host  # type: ignore[index]
                assert node["metadata"]["labels"][ph.BFB_VERSION_LABEL] == "bf-bundle-2.9.1-30_24.11_prod"  # type: ignore[index]
                notes = await eventually(lambda: _phase_events(rest, namespace, name, 8), "8 phase Events")
                assert notes[-1].startswith("DPU Cluster Config → Ready")
                histogram = controller.metrics.registry.get_sample_value(
                    "dpf_controller_dpu_phase_seconds_count", {"phase": ph.OS_INSTALLING})
                assert histogram == 1
        finally:
            if controller is not None:
                await controller.stop()
            await _cleanup(rest, host, name)
            await rest.close()

    run(scenario(), timeout=180)


def test_restart_mid_install_keeps_the_install_and_deletion_releases_the_dpu(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    host, name = f"{namespace}-host", f"{namespace}-0000-08-00"
    resource = f"{namespace}/{name}"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = None
        settings = controller_settings(kube.kubeconfig, namespace)
        try:
            await _bed(rest, kube, namespace, host)
            controller = await started(Controller(settings, reconcilers=[DPUClusterReconciler, DPUReconciler]))
            files = await node_files(rest, namespace, host, "host", tmp_path / "host")
            await rest.create(DPU, _dpu(namespace, name, host), namespace)
            agent = HostAgentStandIn(controller.grpc_port, files, host)
            async with agent.connected():
                await eventually(lambda: agent.desired(resource), "the DPU's resource", SLOW)
                await agent.report(resource, ppb.DPUProvisioningStatus(bfb_ready=True))
                first = (await eventually(lambda: _with_install(agent, resource), "an install", SLOW)).install
                await agent.report(resource, ppb.DPUProvisioningStatus(bfb_ready=True, install=ppb.InstallStatus(
                    id=first.id, state=ppb.INSTALL_STATE_FLASHING, bytes_sent=1 << 20, bytes_total=1 << 30)))
            await controller.stop()
            controller = await started(Controller(settings, reconcilers=[DPUClusterReconciler, DPUReconciler]))
            agent.port = controller.grpc_port
            seen = len(agent.history)
            async with agent.connected():
                await agent.report(resource, ppb.DPUProvisioningStatus(bfb_ready=True, install=ppb.InstallStatus(
                    id=first.id, state=ppb.INSTALL_STATE_FLASHING, bytes_sent=2 << 20, bytes_total=1 << 30)))
                await eventually(lambda: _message(rest, namespace, name, "OSInstalled", "flashing 2.0 MiB"),
                                 "progress through the new controller", SLOW)
                # The new leader never withdrew the install, and keeps the same attempt (no second flash).
                installs = [(d.install.id if d else None) for _, d in agent.history[seen:]]
                assert installs == [first.id] * len(installs), agent.history[seen:]
                again = agent.desired(resource)
                assert again is not None
                assert again.install.id == first.id
                dpu = await rest.get(DPU, name, namespace)
                assert dpu["status"]["phase"] == ph.OS_INSTALLING  # type: ignore[index]

                await rest.delete(DPU, name, namespace)
                await eventually(lambda: resource not in agent.resources, "the resource removed from the host")
                await eventually(lambda: _gone(rest, namespace, name), "the DPU gone (finalizer removed)", SLOW)
                assert "OS Installing → Deleting: the DPU is being deleted" in \
                    await _notes(rest, namespace, name, "PhaseChanged")
        finally:
            if controller is not None:
                await controller.stop()
            await _cleanup(rest, host)
            await rest.close()

    run(scenario(), timeout=180)


def test_allocation_never_exceeds_max_nodes_and_a_deleted_dpu_frees_its_slot(
        kube: ControlPlane, namespace: str) -> None:
    hosts = [f"{namespace}-h{i}" for i in range(8)]
    names = [f"{host}-0000-08-00" for host in hosts]

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = None
        try:
            await _bed(rest, kube, namespace, hosts[0])
            for host in hosts[1:]:
                await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {
                    "name": host, "labels": {ph.OOB_BRIDGE_LABEL: "true"}}})
            await rest.merge_patch(DPU_CLUSTER, "dpu", {"spec": {"maxNodes": 3}}, namespace)
            controller = await started(Controller(controller_settings(kube.kubeconfig, namespace),
                                                  reconcilers=[DPUClusterReconciler, DPUReconciler]))
            await asyncio.gather(*(rest.create(DPU, _dpu(namespace, name, host), namespace)
                                   for name, host in zip(names, hosts, strict=True)))

            async def settled() -> tuple[list[str], list[Obj]] | None:
                dpus = [await rest.get(DPU, name, namespace) for name in names]
                placed = [d["metadata"]["name"] for d in dpus if d and (d["spec"].get("cluster") or {}).get("name")]
                waiting = [d for d in dpus if d and _condition(d, "Initialized").get("reason") == "DPUClusterNotReady"
                           and "dpu" in _condition(d, "Initialized").get("message", "")
                           and not (d["spec"].get("cluster") or {}).get("name")]
                assert len(placed) <= 3, placed
                return (placed, waiting) if len(placed) == 3 and len(waiting) == 5 else None

            placed, waiting_dpus = await eventually(settled, "3 DPUs placed, 5 refused", SLOW)
            await asyncio.sleep(1.0)  # nothing more is placed later either
            assert [await _placed(rest, namespace, name) for name in names].count(True) == 3
            assert {d["metadata"]["name"] for d in waiting_dpus} == set(names) - set(placed)
            await rest.delete(DPU, placed[0], namespace)
            remaining = [n for n in names if n != placed[0]]
            await eventually(lambda: _placed_count(rest, namespace, remaining, 3), "a waiting DPU in the freed slot",
                             SLOW)
            await asyncio.sleep(1.0)
            assert await _placed_count(rest, namespace, remaining, 3)
        finally:
            if controller is not None:
                await controller.stop()
            await _cleanup(rest, *hosts)
            await rest.close()

    run(scenario(), timeout=180)


def test_timeouts_retry_then_error_names_phase_and_cause_and_the_retry_annotation_restarts(
        kube: ControlPlane, namespace: str) -> None:
    host, name = f"{namespace}-host", f"{namespace}-0000-08-00"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = None
        base = controller_settings(kube.kubeconfig, namespace)
        settings = dataclasses.replace(base, provisioning=ProvisioningSettings(
            dms_timeout=1.0, max_attempts=2, retry_base=0.5, retry_max=0.5))
        try:
            await _bed(rest, kube, namespace, host)
            controller = await started(Controller(settings, reconcilers=[DPUClusterReconciler, DPUReconciler]))
            await rest.create(DPU, _dpu(namespace, name, host), namespace)  # no host agent ever connects
            dpu = await eventually(lambda: _phase(rest, namespace, name, ph.ERROR), "phase Error",
                                   SLOW + STATUS_GRACE)
            reason = _condition(dpu, "DMSRunning")["reason"]
            message = _condition(dpu, "Ready")["message"]
            assert reason == _condition(dpu, "Ready")["reason"] == "DMSDeploymentTimeout"
            assert message.startswith("DMS Deployment failed after 2 attempts: DMS Deployment did not finish within "
                                      "1 s: waiting for the host agent of node")
            assert ph.RETRY_ANNOTATION in message
            await eventually(lambda: _notes(rest, namespace, name, "ProvisioningFailed"), "ProvisioningFailed")
            retries = await _notes(rest, namespace, name, "Retrying")
            assert retries == ["DMS Deployment attempt 1 of 2 failed (DMSDeploymentTimeout): DMS Deployment did not "
                               f"finish within 1 s: waiting for the host agent of node {host} to connect; attempt 2 "
                               "in 0.5 s"]
            assert len(await _notes(rest, namespace, name, "ProvisioningFailed")) == 1
            assert controller.metrics.registry.get_sample_value("dpf_controller_dpu_provisioning_retries_total", {
                "phase": ph.DMS_DEPLOYMENT, "reason": "DMSDeploymentTimeout"}) == 2

            await rest.merge_patch(DPU, name, {"metadata": {"annotations": {ph.RETRY_ANNOTATION: "1"}}}, namespace)
            await eventually(lambda: _phase(rest, namespace, name, ph.DMS_DEPLOYMENT), "DMS Deployment again")
            requested = await eventually(lambda: _notes(rest, namespace, name, "RetryRequested"), "RetryRequested")
            assert requested == [f"{ph.RETRY_ANNOTATION}=1: starting phase DMS Deployment again (attempt 1 of 2)"]
            await eventually(lambda: _phase(rest, namespace, name, ph.ERROR), "phase Error again", SLOW)
        finally:
            if controller is not None:
                await controller.stop()
            await _cleanup(rest, host)
            await rest.close()

    run(scenario(), timeout=180)


async def _placed_count(rest: Rest, namespace: str, names: list[str], count: int) -> bool:
    placed = [n for n in names if await _placed(rest, namespace, n)]
    assert len(placed) <= count, placed
    return len(placed) == count


async def _placed(rest: Rest, namespace: str, name: str) -> bool:
    dpu = await rest.get(DPU, name, namespace)
    return bool(dpu and (dpu["spec"].get("cluster") or {}).get("name"))


async def _reason(rest: Rest, namespace: str, name: str, type_: str, reason: str) -> Obj | None:
    dpu = await rest.get(DPU, name, namespace)
    return dpu if dpu is not None and _condition(dpu, type_).get("reason") == reason else None


async def _message(rest: Rest, namespace: str, name: str, type_: str, words: str) -> Obj | None:
    dpu = await rest.get(DPU, name, namespace)
    return dpu if dpu is not None and words in _condition(dpu, type_).get("message", "") else None


def _with_install(agent: HostAgentStandIn, resource: str) -> ppb.DPUProvisioning | None:
    return _with(agent, resource, "install")


def _with(agent: HostAgentStandIn, resource: str, field_name: str) -> ppb.DPUProvisioning | None:
    desired = agent.desired(resource)
    return desired if desired is not None and desired.HasField(field_name) else None


async def _gone(rest: Rest, namespace: str, name: str) -> bool:
    return await rest.get(DPU, name, namespace) is None


async def _notes(rest: Rest, namespace: str, name: str, reason: str) -> list[str]:
    events = (await rest.list(EVENT, namespace))["items"]
    found = [e for e in events if e.get("reason") == reason and e["regarding"].get("name") == name]
    return [e.get("note", "") for e in sorted(found, key=lambda e: e.get("eventTime") or "")]


async def _phase_events(rest: Rest, namespace: str, name: str, count: int) -> list[str] | None:
    notes = await _notes(rest, namespace, name, "PhaseChanged")
    return notes if len(notes) >= count else None
